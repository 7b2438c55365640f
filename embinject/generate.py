"""Generation through a trained adapter: the method's input-level prefix and/or per-layer prefix
cache are set up exactly as in training, then tokens are decoded with the LM's KV cache.

Prompts of equal length are batched together, so no padding ever shifts a token's position
relative to what the adapter saw in training.
"""
from __future__ import annotations

import torch

from .methods import AdapterMethod
from .methods.base import cache_kwargs, output_cache


def _pick(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)


@torch.no_grad()
def _generate_batch(method: AdapterMethod, batch: dict[str, torch.Tensor], max_new_tokens: int, eos_id: int,
                    temperature: float, top_k: int, generator: torch.Generator | None) -> list[list[int]]:
    lm = method.lm
    ids = batch["input_ids"]
    embeds, _, past, mask = method.lm_inputs(batch)  # exactly as in training
    B = ids.shape[0]
    with method.activation_hooks():  # only this pass holds the prefix positions; later ones read them from the cache
        out = lm(inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=1, **cache_kwargs(lm, past))
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)
    steps = []
    for _ in range(max_new_tokens):
        nxt = _pick(out.logits[:, -1].float(), temperature, top_k, generator)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        steps.append(nxt)
        done |= nxt == eos_id
        if bool(done.all()):
            break
        if mask is not None:  # only a per-layer prefix cache needs one; nothing is ever padded
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        out = lm(input_ids=nxt.unsqueeze(1), attention_mask=mask, use_cache=True, logits_to_keep=1,
                 **cache_kwargs(lm, output_cache(out)))
    rows = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(B)]
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]


def generate(method: AdapterMethod, prompts: list[list[int]], max_new_tokens: int, *, eos_id: int,
             temperature: float = 0.0, top_k: int = 0, seed: int | None = None, batch_size: int = 32,
             device: str = "cpu", extra: dict[str, torch.Tensor] | None = None) -> list[list[int]]:
    """New token ids for each prompt (EOS and after removed). temperature 0 = greedy decoding;
    otherwise sampling, reproducible for a given seed. `extra` holds per-prompt inputs a method needs
    besides the tokens (an injection adapter's `sentence_embedding`, one row per prompt)."""
    if method.needs_encoder and not (extra and "sentence_embedding" in extra):
        raise ValueError(f"a {method.name} adapter needs the encoder's sentence_embedding for each prompt "
                         "(embinject.inference.LoadedAdapter.generate computes it from text)")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    was_training = method.training
    method.eval()
    results: list[list[int] | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    try:
        for length, index in sorted(by_length.items()):
            for start in range(0, len(index), batch_size):
                chunk = index[start : start + batch_size]
                batch = {"input_ids": torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device)}
                for k, v in (extra or {}).items():
                    batch[k] = v[chunk].to(device)
                for i, row in zip(chunk, _generate_batch(method, batch, max_new_tokens, eos_id, temperature, top_k, generator)):
                    results[i] = row
    finally:
        method.train(was_training)
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    """`embinject generate --adapter REF --prompt TEXT ...`: continuations, one per prompt."""
    import argparse
    import json

    from .cli import prog, run_command

    parser = argparse.ArgumentParser(prog=prog("generate"), description="Generate text through a trained adapter.")
    parser.add_argument("--adapter", required=True, help="adapter directory, runs:/RUN_ID/PATH or models:/NAME@ALIAS")
    parser.add_argument("--prompt", action="append", required=True, help="text to continue (repeatable)")
    parser.add_argument("--context", action="append", default=None,
                        help="injection adapters: the text the sentence encoder sees, one per --prompt (default: what "
                             "it saw in training for the prompt, per adapter.embed_source)")
    parser.add_argument("--mix", default=None, help="a second prompt or prefix adapter to blend with (prefix mixing)")
    parser.add_argument("--alpha", type=float, default=1.0, help="with --mix: alpha * adapter + (1 - alpha) * mix (1.0)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-k", type=int, default=0, help="sample only among the k most likely tokens (0 = all)")
    parser.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for runs:/ and models:/ (default: "
                        "MLFLOW_TRACKING_URI, else runs/tune/mlflow.db)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of {prompt, generated_text}")
    args = parser.parse_args(argv)

    def body() -> int:
        from .config import ConfigError
        from .inference import load_adapter

        if args.context is not None and len(args.context) != len(args.prompt):
            raise ConfigError(f"--context: give one per --prompt ({len(args.prompt)} prompts, {len(args.context)} contexts)")
        if args.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens: expected a positive number, got {args.max_new_tokens}")
        if args.temperature < 0 or args.top_k < 0:
            raise ConfigError("--temperature and --top-k: expected numbers >= 0")
        adapter = load_adapter(args.adapter, args.tracking_uri, args.device)
        mix = None
        if args.mix:
            from .inference import LoadedAdapter, resolve_adapter

            mix = LoadedAdapter(resolve_adapter(args.mix, args.tracking_uri, "--mix"), adapter.device, lm=adapter.lm)
        texts = adapter.generate(args.prompt, args.context, mix=mix, alpha=args.alpha, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, top_k=args.top_k, seed=args.seed)
        if args.json:
            print(json.dumps([{"prompt": p, "generated_text": t} for p, t in zip(args.prompt, texts)], indent=1))
        else:
            for p, t in zip(args.prompt, texts):
                print(f"{p}{t}" if len(args.prompt) == 1 else f"--- {p}\n{p}{t}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    import sys

    sys.exit(main())
