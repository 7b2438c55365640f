"""Soft prompt: `prefix_len` learnable vectors prepended to the input embeddings.

With `adapter.deep_layers: N` it becomes a deep prompt (as in the embedding-priors study): the
prompt positions' hidden states entering each of the last N layers are learned vectors too,
substituted by forward pre-hooks. They start as the activations the frozen LM itself computes for
the initial prompt, so training starts from exactly the soft prompt's behaviour.
"""

from __future__ import annotations

import contextlib
import torch
from torch import nn

from ..errors import ConfigError
from .base import AdapterMethod


class Prompt(AdapterMethod):
    name = "prompt"

    def __init__(self, cfg, lm, encoder_dim=None, tokenizer=None):
        super().__init__(cfg, lm, encoder_dim, tokenizer)
        self.prompt = self.init_prefix(cfg.adapter.prefix_len)
        n = cfg.adapter.deep_layers
        self.deep = None
        if n:
            layers = self.decoder_layers()
            if n > len(layers):
                raise ConfigError(f"adapter.deep_layers: this model has {len(layers)} layers, got {n}")
            with torch.no_grad():
                hidden = self.lm(inputs_embeds=self.prompt.data.unsqueeze(0), output_hidden_states=True).hidden_states
            L = len(layers)
            self.deep = nn.Parameter(torch.stack([hidden[i][0] for i in range(L - n, L)]).clone())  # [N, P, d]

    def mixed_with(self, other: "Prompt", alpha: float) -> "Prompt":
        """Soft prompts mix in input space (deep prompts' activations too)."""
        if self.prompt.shape != other.prompt.shape or (self.deep is None) != (other.deep is None):
            raise ConfigError(
                f"--mix: the prompts differ in shape ({list(self.prompt.shape)} vs {list(other.prompt.shape)})"
            )
        mixed = type(self)(self.cfg, self.lm, self.encoder_dim, self.tokenizer)
        with torch.no_grad():
            mixed.prompt.copy_(alpha * self.prompt + (1 - alpha) * other.prompt)
            if self.deep is not None:
                mixed.deep.copy_(alpha * self.deep + (1 - alpha) * other.deep)
        return mixed

    def decoder_layers(self) -> nn.ModuleList:
        return self.lm.get_decoder().layers

    def prefix_embeds(self, batch: dict) -> torch.Tensor:
        return self.prompt.unsqueeze(0).expand(batch["input_ids"].shape[0], -1, -1)

    @contextlib.contextmanager
    def activation_hooks(self):
        if self.deep is None:
            yield
            return
        layers = self.decoder_layers()
        P = self.prompt.shape[0]

        def substitute(vectors):
            def hook(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                new = torch.cat(
                    [vectors.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1), hidden[:, P:]], dim=1
                )
                if args:
                    return (new, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": new}

            return hook

        first = len(layers) - self.deep.shape[0]
        handles = [
            layers[first + i].register_forward_pre_hook(substitute(self.deep[i]), with_kwargs=True)
            for i in range(self.deep.shape[0])
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
