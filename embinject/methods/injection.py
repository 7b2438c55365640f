"""Embedding injection: a frozen sentence encoder's vector, mapped by a 2-layer MLP to
`inject_tokens` input vectors, prepended together with `prefix_len` learnable vectors. With
`adapter.pooling: chunks` the encoder gives `inject_tokens` vectors (its token states mean-pooled over
contiguous chunks of the text), and the MLP maps each to one input vector.

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
            out = d if a.pooling == "chunks" else a.inject_tokens * d  # chunks: one vector out per chunk in
            self.mlp = nn.Sequential(nn.Linear(encoder_dim, a.mlp_width), nn.GELU(), nn.Linear(a.mlp_width, out))
        self.mlp.to(lm.get_input_embeddings().weight.device)

    def prefix_embeds(self, batch: dict) -> torch.Tensor:
        emb = batch["sentence_embedding"]
        B = emb.shape[0]
        injected = self.mlp(emb.to(self.mlp[0].weight.dtype)).reshape(B, self.inject_tokens, -1)  # [B, (k,) D] -> [B, k, d]
        if self.prefix is None:
            return injected
        return torch.cat([self.prefix.unsqueeze(0).expand(B, -1, -1), injected], dim=1)
