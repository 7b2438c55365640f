"""Deep prefix tuning (Prefix-Tuning, Li & Liang 2021): learned key/value vectors in every layer,
passed to the frozen LM as `past_key_values`.

Keys and values start as the LM's own activations on `prefix_len` prior vectors (real tokens by
default), which keeps the first steps close to the base model. With `mlp_width > 0` they are also
reparameterised through a Tanh MLP over input-sized vectors, as in the paper (more stable training).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .base import AdapterMethod, activation_kv, kv_cache, kv_shape


class Prefix(AdapterMethod):
    name = "prefix"

    def __init__(self, cfg, lm, encoder_dim=None, tokenizer=None, kv: torch.Tensor | None = None):
        super().__init__(cfg, lm, encoder_dim, tokenizer)
        a = cfg.adapter
        L, H, hd = kv_shape(lm.config)
        if a.layers is not None and a.layers != L:
            raise ConfigError(
                f"adapter.layers: deep prefixes cover all {L} layers of this model; set it to null or {L}"
            )
        self.shape = (L, H, hd)
        P = a.prefix_len
        self.kv = nn.Parameter(kv.clone() if kv is not None else self._activation_init(P))
        self.mlp = None
        if kv is None and a.mlp_width > 0:
            # Residual reparameterisation: kv + MLP(embedding), the MLP's last layer zero-initialised so
            # training starts from the LM's own activations rather than from random keys and values.
            self.embedding = self.init_prefix(P)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.train.seed)
                self.mlp = nn.Sequential(
                    nn.Linear(self.model_dim, a.mlp_width), nn.Tanh(), nn.Linear(a.mlp_width, L * 2 * H * hd)
                )
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)
            self.mlp.to(self.embedding.device)

    def _activation_init(self, P: int) -> torch.Tensor:
        """Keys/values the frozen LM itself produces for `prefix_len` prior vectors."""
        return activation_kv(self.lm, self.init_prefix(P).data)  # [L, 2, H, P, hd]

    def prefix_kv(self) -> torch.Tensor:
        """All layers' prefix keys and values, [L, 2, H, P, hd]."""
        if self.mlp is None:
            return self.kv
        L, H, hd = self.shape
        flat = self.mlp(self.embedding)  # [P, L*2*H*hd]
        return self.kv + flat.view(-1, L, 2, H, hd).permute(1, 2, 3, 0, 4)

    def past_key_values(self, batch: dict):
        return kv_cache(self.prefix_kv_rows(batch), self.lm)

    def mixed_with(self, other: "Prefix", alpha: float) -> "Prefix":
        """Prefixes mix in key/value space."""
        if self.prefix_kv().shape != other.prefix_kv().shape:
            raise ConfigError(
                f"--mix: the prefixes differ in shape "
                f"({list(self.prefix_kv().shape)} vs {list(other.prefix_kv().shape)})"
            )
        return mix_prefixes(self, other, alpha)


def mix_prefixes(a: Prefix, b: Prefix, alpha: float) -> Prefix:
    """`alpha * a + (1 - alpha) * b` in key/value space, for controlled generation."""
    with torch.no_grad():
        kv = alpha * a.prefix_kv() + (1 - alpha) * b.prefix_kv()
    return Prefix(a.cfg, a.lm, a.encoder_dim, a.tokenizer, kv=kv)
