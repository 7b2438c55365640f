"""The packed forward pass: several trials' rows through one pass of the shared frozen LM, each row behind its own
prefix. Input prefixes (soft prompt, injection) of different lengths are left-padded, key/value prefixes (deep prefix)
are padded in the cache, and a 4-D attention mask lets no row attend to padding, so every row attends to exactly the
keys it would see alone, at the positions it would have alone. `embinject.train.packing` runs its steps and
evaluations through it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..methods import AdapterMethod
from ..methods.base import cache_kwargs, window_sums


def _attention_mask(valid: torch.Tensor, n_cache: int, dtype: torch.dtype, additive: bool) -> torch.Tensor:
    """[B, 1, S, n_cache + S] mask from key validity [B, n_cache + S]: causal over the concatenated layout, no
    padded key; a padded query attends to itself only (its output is never used, and a row with no key at all
    would turn into NaN, which reaches the gradients even though multiplied by zero)."""
    B, total = valid.shape
    S = total - n_cache
    q = torch.arange(S, device=valid.device).view(S, 1) + n_cache
    k = torch.arange(total, device=valid.device).view(1, total)
    allowed = (k <= q).unsqueeze(0) & valid.unsqueeze(1)  # [B, S, total]
    pad_query = ~valid[:, n_cache:]
    allowed = allowed | (pad_query.unsqueeze(2) & (k == q).unsqueeze(0))
    allowed = allowed.unsqueeze(1)
    if not additive:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=valid.device).masked_fill(~allowed, torch.finfo(dtype).min)


def packed_nll(
    members: list[tuple[AdapterMethod, dict]], per_window: bool = False
) -> list[tuple[torch.Tensor, int | torch.Tensor]]:
    """Each member's (summed NLL, scored tokens) on its batch, from one pass of all members' rows; with `per_window`,
    both per row of its batch (as `AdapterMethod.nll(per_window=True)` gives them alone)."""
    from transformers import DynamicCache  # lazy: transformers is imported where a model is loaded, not before

    lm = members[0][0].lm
    embedding = lm.get_input_embeddings()
    device, dtype = embedding.weight.device, embedding.weight.dtype
    impl = getattr(lm.config, "_attn_implementation", "sdpa") or "sdpa"
    if "flash" in impl:
        raise ConfigError(f"tune.pack: packed steps need an attention with custom masks; this model uses {impl}")
    parts = []
    for method, batch in members:
        ids = batch["input_ids"]
        embeds = embedding(ids)
        prefix = method.prefix_embeds(batch)
        n_prefix = 0 if prefix is None else prefix.shape[1]
        if prefix is not None:
            embeds = torch.cat([prefix.to(embeds.dtype), embeds], dim=1)
        parts.append((embeds, n_prefix, method.prefix_kv_rows(batch), batch["labels"]))  # kv: [L, 2, b, H, P, hd]
    S = max(e.shape[1] for e, _, _, _ in parts)
    n_cache = max((kv.shape[4] for _, _, kv, _ in parts if kv is not None), default=0)
    B = sum(e.shape[0] for e, _, _, _ in parts)
    inputs = embeds.new_zeros(B, S, embeds.shape[2])
    positions = torch.zeros(B, S, dtype=torch.long, device=device)
    valid = torch.zeros(B, n_cache + S, dtype=torch.bool, device=device)
    kv_rows = None
    if n_cache:
        L, _, _, H, _, hd = next(kv.shape for _, _, kv, _ in parts if kv is not None)  # [L, 2, b, H, P, hd]
        kv_rows = []
    row = 0
    for embeds_i, _, kv, _ in parts:
        b, s = embeds_i.shape[:2]
        n_kv = 0 if kv is None else kv.shape[4]
        inputs[row : row + b, S - s :] = embeds_i  # left padding keeps every row's tokens at the end
        positions[row : row + b, S - s :] = torch.arange(n_kv, n_kv + s, device=device)
        valid[row : row + b, n_cache + S - s :] = True
        valid[row : row + b, n_cache - n_kv : n_cache] = True
        if kv_rows is not None:
            block = torch.zeros(L, 2, b, H, n_cache, hd, dtype=dtype, device=device)
            if kv is not None:
                block = torch.cat([block[..., : n_cache - n_kv, :], kv.to(dtype)], dim=4)
            kv_rows.append(block)
        row += b
    cache = None
    if kv_rows is not None:
        kv_all = torch.cat(kv_rows, dim=2)  # [L, 2, B, H, n_cache, hd]
        cache = DynamicCache([(kv_all[i, 0], kv_all[i, 1]) for i in range(L)], config=lm.config)
    mask = _attention_mask(valid, n_cache, torch.float32, additive=impl == "eager")  # sdpa and others: boolean
    decoder = lm.get_decoder()
    hidden = decoder(
        inputs_embeds=inputs,
        attention_mask=mask,
        position_ids=positions,
        use_cache=False,
        **cache_kwargs(decoder, cache),
    ).last_hidden_state
    if per_window:
        return _per_window(lm, hidden, parts, S)
    # every member's scored positions at once: each row's next-token target where its hidden state predicts it, then
    # one gather (one device sync in all, where per-member boolean indexing took two per member), in the order the
    # members' rows come, so that each member's tokens are one slice of the result
    aligned = torch.full((B, S), -100, dtype=torch.long, device=device)
    spans = list(_scored_spans(parts, S))
    for rows, cols, labels in spans:
        aligned[rows, cols] = labels[:, 1:]
    scored = aligned != -100
    per_row = scored.sum(dim=1)
    counts = torch.stack([per_row[rows].sum() for rows, _, _ in spans]).tolist()
    where = scored.view(-1).nonzero().squeeze(1)
    logits = lm.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1])[where])  # one LM-head call
    token_nll = F.cross_entropy(logits.float(), aligned.view(-1)[where], reduction="none")
    return [(part.sum(), n) for part, n in zip(torch.split(token_nll, counts), counts)]


def _scored_spans(parts: list, S: int):
    """Each member's (rows, columns) in the packed hidden states whose outputs predict its tokens 1.., and its labels:
    its rows follow the members before it, and its tokens start after its left padding and its input prefix."""
    row = 0
    for embeds_i, n_prefix, _, labels in parts:
        b, s = embeds_i.shape[:2]
        start = S - s + n_prefix
        yield slice(row, row + b), slice(start, start + labels.shape[1] - 1), labels
        row += b


def _per_window(lm, hidden: torch.Tensor, parts: list, S: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each member's per-window sums, one LM-head call per member: an evaluation's rows are many, and every member's
    logits at once would hold K times the memory of one evaluation batch's."""
    head = lm.get_output_embeddings()
    out = []
    for rows, cols, labels in _scored_spans(parts, S):
        t = labels[:, 1:]
        scored = t != -100
        out.append(window_sums(head(hidden[rows, cols][scored]), t[scored], scored))
    return out
