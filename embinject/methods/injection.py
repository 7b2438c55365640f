"""Embedding injection: a frozen sentence encoder's vector, mapped by a 2-layer MLP to
`inject_tokens` input vectors, prepended together with `prefix_len` learnable vectors. With
`adapter.pooling: chunks` the encoder gives `inject_tokens` vectors (its token states mean-pooled over
contiguous chunks of the text), with `resampler` `inject_tokens` learned queries read its token states;
either way the MLP maps each of those vectors to one input vector.

Layout of the prefix: [learnable prefix_len vectors][inject_tokens MLP outputs][window tokens].
"""
from __future__ import annotations

import torch
from torch import nn

from .base import AdapterMethod


class Injection(AdapterMethod):
    name = "injection"
    needs_encoder = True

    def __init__(self, cfg, lm, encoder_dim=None, tokenizer=None):
        super().__init__(cfg, lm, encoder_dim, tokenizer)
        a = cfg.adapter
        if encoder_dim is None:
            raise ValueError("injection needs the encoder's output dimension")
        self.prefix = self.init_prefix(a.prefix_len) if a.prefix_len > 0 else None
        self.inject_tokens = a.inject_tokens
        d = self.model_dim
        with torch.random.fork_rng(devices=[]):  # MLP init follows the seed, not global RNG state
            torch.manual_seed(cfg.train.seed)
            self.resampler = Resampler(encoder_dim - 1, a.inject_tokens) if a.pooling == "resampler" else None
            width = encoder_dim - 1 if self.resampler is not None else encoder_dim  # the presence channel stays out
            out = a.inject_tokens * d if a.pooling == "mean" else d  # chunks, resampler: one vector out per vector in
            self.mlp = nn.Sequential(nn.Linear(width, a.mlp_width), nn.GELU(), nn.Linear(a.mlp_width, out))
        self.to(lm.get_input_embeddings().weight.device)  # the MLP (and resampler) beside the frozen LM

    def prefix_embeds(self, batch: dict) -> torch.Tensor:
        emb = batch["sentence_embedding"]
        B = emb.shape[0]
        if self.resampler is not None:
            emb = self.resampler(emb.to(self.mlp[0].weight.dtype))
        injected = self.mlp(emb.to(self.mlp[0].weight.dtype)).reshape(B, self.inject_tokens, -1)  # [B, (k,) D] -> [B, k, d]
        if self.prefix is None:
            return injected
        return torch.cat([self.prefix.unsqueeze(0).expand(B, -1, -1), injected], dim=1)


class Resampler(nn.Module):
    """k learned queries attending over an encoder's token states ([B, T, D + 1], the last channel 1 where a token
    is): a small Perceiver-style resampler, [B, k, D] out."""

    def __init__(self, dim: int, k: int):
        super().__init__()
        heads = next(h for h in (8, 6, 4, 3, 2, 1) if dim % h == 0)
        self.queries = nn.Parameter(torch.randn(k, dim) * dim ** -0.5)
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        tokens, present = self.norm(states[..., :-1]), states[..., -1] > 0.5
        queries = self.queries.unsqueeze(0).expand(states.shape[0], -1, -1)
        return queries + self.attention(queries, tokens, tokens, key_padding_mask=~present, need_weights=False)[0]
