"""The optimizer every adapter trains with."""

from __future__ import annotations

import torch


def adamw(params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused into one kernel per step where torch has one for the parameters' device (CPU and CUDA do): the
    default runs about ten ops per parameter, and an adapter's step is small, so on a CPU the optimizer took a fifth of
    a small trial's step, and in a pack, whose members step one after another, more (benchmarks/RESULTS.md)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
