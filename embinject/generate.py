"""Generation through a trained adapter: the method's input-level prefix and/or per-layer prefix
cache are set up exactly as in training, then tokens are decoded with the LM's KV cache.

Prompts of equal length are batched together, so no padding ever shifts a token's position
relative to what the adapter saw in training.
"""
from __future__ import annotations

import torch

from .methods import AdapterMethod


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
def _generate_batch(method: AdapterMethod, ids: torch.Tensor, max_new_tokens: int, eos_id: int,
                    temperature: float, top_k: int, generator: torch.Generator | None) -> list[list[int]]:
    lm = method.lm
    embeds, _, past, mask = method.lm_inputs({"input_ids": ids})  # exactly as in training
    B = ids.shape[0]
    with method.activation_hooks():  # only this pass holds the prefix positions; later ones read them from the cache
        out = lm(inputs_embeds=embeds, past_key_values=past, attention_mask=mask, use_cache=True, logits_to_keep=1)
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
        out = lm(input_ids=nxt.unsqueeze(1), past_key_values=out.past_key_values, attention_mask=mask,
                 use_cache=True, logits_to_keep=1)
    rows = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(B)]
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]


def generate(method: AdapterMethod, prompts: list[list[int]], max_new_tokens: int, *, eos_id: int,
             temperature: float = 0.0, top_k: int = 0, seed: int | None = None, batch_size: int = 32,
             device: str = "cpu") -> list[list[int]]:
    """New token ids for each prompt (EOS and after removed). temperature 0 = greedy decoding;
    otherwise sampling, reproducible for a given seed."""
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
                ids = torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device)
                for i, row in zip(chunk, _generate_batch(method, ids, max_new_tokens, eos_id, temperature, top_k, generator)):
                    results[i] = row
    finally:
        method.train(was_training)
    return results  # type: ignore[return-value]
