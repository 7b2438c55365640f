"""Generation through a trained adapter: the method's input-level prefix and/or per-layer prefix
cache are set up exactly as in training, then tokens are decoded with the LM's KV cache.

Prompts of equal length are batched together, so no padding ever shifts a token's position
relative to what the adapter saw in training.
"""

from __future__ import annotations

import torch

from ..methods import AdapterMethod
from ..methods.base import cache_kwargs, output_cache


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
def _generate_batch(
    method: AdapterMethod,
    batch: dict[str, torch.Tensor],
    max_new_tokens: int,
    eos_id: int,
    temperature: float,
    top_k: int,
    generator: torch.Generator | None,
) -> list[list[int]]:
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
        out = lm(
            input_ids=nxt.unsqueeze(1),
            attention_mask=mask,
            use_cache=True,
            logits_to_keep=1,
            **cache_kwargs(lm, output_cache(out)),
        )
    rows = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(B)]
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]


def generate(
    method: AdapterMethod,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    eos_id: int,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    extra: dict[str, torch.Tensor] | None = None,
) -> list[list[int]]:
    """New token ids for each prompt (EOS and after removed). temperature 0 = greedy decoding;
    otherwise sampling, reproducible for a given seed. `extra` holds per-prompt inputs a method needs
    besides the tokens (an injection adapter's `sentence_embedding`, one row per prompt)."""
    if method.needs_encoder and not (extra and "sentence_embedding" in extra):
        raise ValueError(
            f"a {method.name} adapter needs the encoder's sentence_embedding for each prompt "
            "(embinject.adapters.LoadedAdapter.generate computes it from text)"
        )
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
                for i, row in zip(
                    chunk, _generate_batch(method, batch, max_new_tokens, eos_id, temperature, top_k, generator)
                ):
                    results[i] = row
    finally:
        method.train(was_training)
    return results  # type: ignore[return-value]
