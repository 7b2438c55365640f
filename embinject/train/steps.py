"""How a training loop takes a step: `SoloSteps`, alone on its own LM (with the frozen LM's gradient checkpointing,
`checkpointed_lm`, where asked). `embinject.train.packing.PackedSteps` takes each step as one member of a pack."""

from __future__ import annotations

import contextlib

import torch

from ..methods import AdapterMethod
from .distill import TEACHER_INDEX, TEACHER_LOGP, distill_kl
from .evaluation import window_nll


class checkpointed_lm:
    """Gradient checkpointing of the frozen LM for the training loop only (transformers applies it in
    train mode, which changes nothing else for a frozen LM without dropout); eval mode is restored
    afterwards, so generation and other methods see the usual model."""

    def __init__(self, model, enabled: bool):
        self.model, self.enabled = model, enabled

    def __enter__(self):
        if self.enabled:
            if hasattr(self.model, "activation_checkpointing_enable"):  # the newer name; the old one warns
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.train()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            (
                getattr(self.model, "activation_checkpointing_disable", None)
                or self.model.gradient_checkpointing_disable
            )()
            self.model.eval()


class SoloSteps:
    """How the loop takes a step: alone, on its own LM (the default). `embinject.train.packing.PackedSteps` takes it
    as one member of a pack instead; both set the gradients and return the loss, and the loop steps the optimizer."""

    def building(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def training(self, model, checkpointing: bool) -> contextlib.AbstractContextManager:
        return checkpointed_lm(model, checkpointing)

    def away(self, evaluating: bool = False) -> contextlib.AbstractContextManager:
        """Around evaluating and reporting (`evaluating`: it evaluates first), where a pack's other members go on."""
        return contextlib.nullcontext()

    def evaluate(
        self, method: AdapterMethod, inputs: dict, batch_size: int, device: str, amp
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each window's summed NLL and scored tokens (`window_nll`); a pack's member scores them in packed passes."""
        return window_nll(method, inputs, batch_size, device, amp)

    def step(self, method: AdapterMethod, opt: torch.optim.Optimizer, batch: dict, amp, device: str) -> float:
        weight = method.cfg.train.distill
        with torch.autocast(device_type=device.split(":")[0], dtype=amp, enabled=amp is not None):
            if weight:
                logits, targets, where = method.scored_logits(batch)
                nll, count = (
                    torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"),
                    int(where.sum()),
                )
                nll = nll + weight * distill_kl(logits, batch[TEACHER_INDEX][where], batch[TEACHER_LOGP][where])
            else:
                nll, count = method.nll(batch)
        loss = nll / max(count, 1)  # with train.distill: the NLL plus the weighted KL, per scored token
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss.item()

    def pack_size(self) -> int:
        return 1

    def eval_pack_size(self) -> int:
        """Members whose windows were scored in this run's last evaluation's packed passes (1: alone)."""
        return 1

    def waited(self) -> tuple[float, float, float]:
        """Seconds this run has waited for other runs so far: for its turn to prepare, at its steps' rendezvous and
        at its evaluations'."""
        return 0.0, 0.0, 0.0
