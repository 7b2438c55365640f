"""Shared fixtures: a tiny random Llama with its own small BPE tokenizer (fast unit tests), the
real shared data folder, and an isolated cache directory per test session."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Data/embedding caches per session; converted bundled models are reused from the user cache
    when present (conversion is deterministic and takes ~20 s)."""
    cache = tmp_path_factory.mktemp("cache")
    user_models = Path(os.environ.get("EMBINJECT_CACHE", Path.home() / ".cache" / "embinject")) / "models"
    user_models.mkdir(parents=True, exist_ok=True)
    (cache / "models").symlink_to(user_models, target_is_directory=True)
    old = os.environ.get("EMBINJECT_CACHE")
    os.environ["EMBINJECT_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("EMBINJECT_CACHE", None)
    else:
        os.environ["EMBINJECT_CACHE"] = old


def make_tiny_model(directory: Path, hidden: int = 64, layers: int = 2, vocab: int = 512, seed: int = 0) -> Path:
    """A random Llama-architecture LM with a BPE tokenizer trained on the Python docs."""
    import torch
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(topics.values()), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def tiny_overrides(tiny_model):
    """Overrides for a fast run on the tiny model and the builtin Python docs."""
    return [f"model={tiny_model}", "data.seq_len=32", "data.train_samples=64", "data.val_samples=32",
            "train.batch_size=8", "train.eval_batch_size=32", "train.max_steps=6", "train.eval_every=3",
            "train.progress=false", "adapter.prefix_len=4", "adapter.mlp_width=32", "adapter.embedding_model=fourier",
            "adapter.fourier_features=16", "adapter.context_tokens=8"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
