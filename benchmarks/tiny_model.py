"""A tiny random-weight Llama with its own small BPE tokenizer: the model of the tests and of the benchmarks that
measure the search machinery rather than training (hundreds of trials in minutes). Its perplexities mean nothing."""

from __future__ import annotations

from pathlib import Path


def make_tiny_model(directory: Path, hidden: int = 64, layers: int = 2, vocab: int = 512, seed: int = 0) -> Path:
    """A random Llama-architecture LM with a BPE tokenizer trained on the Python docs."""
    import torch
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(topics.values()), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def tiny_spec(spec: str) -> tuple[int, int] | None:
    """`tiny:WIDTHxLAYERS` as (width, layers); None for any other model name. A width must split into the model's 4
    attention heads."""
    if not spec.startswith("tiny:"):
        return None
    try:
        width, layers = (int(v) for v in spec.removeprefix("tiny:").lower().split("x"))
    except ValueError:
        raise SystemExit(f"--model {spec}: expected tiny:WIDTHxLAYERS, e.g. tiny:32x2") from None
    if width < 4 or width % 4 or layers < 1:
        raise SystemExit(
            f"--model {spec}: the width must be a multiple of 4 (4 attention heads) and the layers 1 or more"
        )
    return width, layers


def resolve_model(spec: str, directory: Path) -> str:
    """A benchmark's --model as the config's `model`: `tiny:WIDTHxLAYERS` becomes a tiny model made under `directory`
    (the tests' random Llama at that size), any other name stays as given."""
    size = tiny_spec(spec)
    if size is None:
        return spec
    width, layers = size
    return str(make_tiny_model(directory / f"tiny-{width}x{layers}", hidden=width, layers=layers))
