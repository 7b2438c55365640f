"""The frozen LM as a trained encoder of the injected text: LoRA on its layers below N, on the encoder pass only.

With `adapter.embedding_model: lm-hidden:N` and `adapter.encoder_rank: r > 0`, injection reads the LM's states after
layer N over the text through low-rank updates of `adapter.target_modules` in layers 1..N, trained with the MLP.
The decoder pass that scores the window uses the frozen LM unchanged: the updates are forward hooks that exist only
while the encoder pass runs, and act only in the thread that runs it, so a packed step's other members, or another
trial evaluating beside it on the same LM object, never see them. B starts at zero, so training starts from the
frozen encoder (the states `lm-hidden:N` caches), and the states are unit length per token, as there.
"""

from __future__ import annotations

import contextlib
import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders import Pooling, check_lm_layer, lm_layer_states
from ..errors import ConfigError


class EncoderLoRA(nn.Module):
    """LoRA updates of the LM's first `layer` blocks, applied on `encode` only; [B, T] ids -> [B, D] (pooled mean) or
    [B, k, D] (k chunk means)."""

    def __init__(self, lm, layer: int, rank: int, alpha: float, targets: list[str], pooling: Pooling, seed: int):
        super().__init__()
        check_lm_layer(lm, layer)
        object.__setattr__(self, "lm", lm)  # not a submodule: the frozen LM is not adapter state
        self.layer, self.pooling, self.scale = layer, pooling, alpha / rank
        blocks = list(getattr(lm.get_decoder(), "layers", []))[:layer]
        self.sites = [
            (f"{i}_{name}".replace(".", "_"), module)
            for i, block in enumerate(blocks)  # ParameterDict keys
            for name, module in block.named_modules()
            if name.rsplit(".", 1)[-1] in targets and isinstance(module, nn.Linear)
        ]
        if not self.sites:
            raise ConfigError(
                f"adapter.target_modules: none of {list(targets)} is a linear layer in the LM's first {layer} "
                "layers, where adapter.encoder_rank puts its LoRA"
            )
        device = lm.get_input_embeddings().weight.device
        self.down, self.up = nn.ParameterDict(), nn.ParameterDict()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for name, module in self.sites:
                down = torch.empty(rank, module.in_features, device=device)
                nn.init.kaiming_uniform_(down, a=math.sqrt(5))  # as PEFT's LoRA: A random, B zero
                self.down[name] = nn.Parameter(down)
                self.up[name] = nn.Parameter(torch.zeros(module.out_features, rank, device=device))

    @contextlib.contextmanager
    def _updates(self):
        owner = threading.get_ident()

        def hook_for(name):
            def hook(module, args, output):
                if threading.get_ident() != owner:  # another thread's pass over the same LM object
                    return None
                return output + F.linear(F.linear(args[0], self.down[name]), self.up[name]) * self.scale

            return hook

        handles = [module.register_forward_hook(hook_for(name)) for name, module in self.sites]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        with self._updates():
            states = lm_layer_states(self.lm, self.layer, ids)
        states = F.normalize(states.float(), dim=-1)
        if self.pooling.chunked:
            return torch.stack([self.pooling.pool(t) for t in states])
        return states.mean(dim=1)

    @torch.no_grad()
    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """As the frozen encoders do: embeddings on the CPU, for a prompt's context at generation."""
        return self(ids.to(self.lm.get_input_embeddings().weight.device)).cpu()
