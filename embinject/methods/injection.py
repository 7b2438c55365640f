"""Embedding injection: a frozen sentence encoder's vector, mapped by a 2-layer MLP to
`inject_tokens` input vectors, prepended together with `prefix_len` learnable vectors. With
`adapter.pooling: chunks` or `recent` the encoder gives `inject_tokens` vectors (its token states mean-pooled
over contiguous chunks of the text, near-equal or growing with distance from its end); with `resampler`
`inject_tokens` learned queries read its token states. Either way vector i goes through the MLP's first layer
and position i's own rows of its last, as the pooled vector's k outputs are made.

Layout of the prefix: [learnable prefix_len vectors][inject_tokens MLP outputs][window tokens].

With `adapter.inject_into: kv` the MLP's vectors do not enter as inputs: a linear head turns each into every
layer's key and value at one prefix position (the deep-prefix path, made from the text). The keys and values
start as the frozen LM's own activations on `inject_tokens` prior vectors, and the head starts at zero, so
training starts from a static deep prefix and learns what the text adds to it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..encoders import lm_hidden_layer, pooling_of
from .base import AdapterMethod, activation_kv, kv_cache, kv_shape
from .encoder_lora import EncoderLoRA


class Injection(AdapterMethod):
    name = "injection"

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
            # mean: one vector in, k out. chunks, resampler: vector i through the MLP's first layer and position i's own
            # rows of the last, as the pooled vector's k outputs are made. One MLP shared by the k positions has one
            # bias for all: its k vectors cannot learn to differ where their inputs are alike (the resampler's start as
            # k copies of one vector), so it cannot even learn what a static prefix of k vectors learns
            self.mlp = nn.Sequential(
                nn.Linear(width, a.mlp_width), nn.GELU(), nn.Linear(a.mlp_width, a.inject_tokens * d)
            )
        # adapter.encoder_rank: the LM encodes the text itself, through LoRA trained with the MLP (batches carry the
        # text's ids, `encoder_ids`, instead of cached embeddings)
        self.text_encoder = None
        if a.encoder_rank:
            self.text_encoder = EncoderLoRA(
                lm,
                lm_hidden_layer(a.embedding_model),
                a.encoder_rank,
                a.lora_alpha,
                a.target_modules,
                pooling_of(a),
                cfg.train.seed,
            )
        self.kv_head = None
        if a.inject_into == "kv":
            L, H, hd = self.kv_shape = kv_shape(lm.config)
            self.kv_base = nn.Parameter(activation_kv(lm, self.init_prefix(a.inject_tokens).data))  # [L, 2, H, k, hd]
            self.kv_head = nn.Linear(d, L * 2 * H * hd)
            nn.init.zeros_(self.kv_head.weight)
            nn.init.zeros_(self.kv_head.bias)
        self.to(lm.get_input_embeddings().weight.device)  # the MLP (and resampler) beside the frozen LM

    def injected(self, batch: dict) -> torch.Tensor:
        """The MLP's k vectors for each window, [B, k, d]."""
        if "sentence_embedding" in batch:  # cached, or a control's, or computed for generation by `text_encoder.encode`
            emb = batch["sentence_embedding"].to(self.mlp[0].weight.dtype)
        else:
            emb = self.text_encoder(batch["encoder_ids"]).to(self.mlp[0].weight.dtype)
        if self.resampler is not None:
            emb = self.resampler(emb)
        if emb.dim() == 3:  # k vectors in (chunks, resampler)
            hidden = self.mlp[1](self.mlp[0](emb))  # [B, k, width]
            last = self.mlp[2]
            rows = last.weight.view(self.inject_tokens, -1, last.in_features)  # position i's rows: [k, d, width]
            return torch.einsum("bkw,kdw->bkd", hidden, rows) + last.bias.view(self.inject_tokens, -1)
        return self.mlp(emb).reshape(emb.shape[0], self.inject_tokens, -1)  # [B, (k,) D] -> [B, k, d]

    def prefix_embeds(self, batch: dict) -> torch.Tensor | None:
        B = batch["input_ids"].shape[0]
        static = None if self.prefix is None else self.prefix.unsqueeze(0).expand(B, -1, -1)
        if self.kv_head is not None:
            return static
        injected = self.injected(batch)
        return injected if static is None else torch.cat([static, injected], dim=1)

    def prefix_kv_rows(self, batch: dict) -> torch.Tensor | None:
        """Each window's keys and values, [L, 2, B, H, k, hd]: the base plus what the head makes of the window's
        text."""
        if self.kv_head is None:
            return None
        L, H, hd = self.kv_shape
        made = self.kv_head(self.injected(batch))  # [B, k, L*2*H*hd]
        return self.kv_base.unsqueeze(2) + made.view(*made.shape[:2], L, 2, H, hd).permute(2, 3, 0, 4, 1, 5)

    def past_key_values(self, batch: dict):
        kv = self.prefix_kv_rows(batch)
        return None if kv is None else kv_cache(kv, self.lm)


class Resampler(nn.Module):
    """k learned queries attending over an encoder's token states ([B, T, D + 1], the last channel 1 where a token
    is): a small Perceiver-style resampler, [B, k, D] out, each vector of unit norm as a pooled sentence embedding is.
    It starts as that pooled embedding: values pass the states through unchanged and the small queries attend almost
    uniformly, so each of the k vectors begins as the normalised mean of the token states (sentence-transformers'
    pooling), the input the MLP and its learning rate were made for, and learns where to look from there. (Started
    with random projections, its vectors were about 5 times the pooled vector's norm on MiniLM and the first
    evaluations were worse than the frozen LM.)"""

    def __init__(self, dim: int, k: int):
        super().__init__()
        heads = next(h for h in (8, 6, 4, 3, 2, 1) if dim % h == 0)
        self.queries = nn.Parameter(torch.randn(k, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)  # the keys: states of any scale give logits of one scale
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        with torch.no_grad():
            self.attention.in_proj_weight[2 * dim :].copy_(torch.eye(dim))  # values: the states themselves
            self.attention.out_proj.weight.copy_(torch.eye(dim))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        tokens, present = states[..., :-1], states[..., -1] > 0.5
        queries = self.queries.unsqueeze(0).expand(states.shape[0], -1, -1)
        read = self.attention(queries, self.norm(tokens), tokens, key_padding_mask=~present, need_weights=False)[0]
        return F.normalize(read, dim=-1)
