"""Perplexity over a fixed set of windows, token-weighted: exp(sum NLL / scored tokens)."""
from __future__ import annotations

import math

import torch

from .methods import AdapterMethod


def batches(inputs: dict[str, torch.Tensor], batch_size: int, order: torch.Tensor | None = None, start: int = 0):
    """Yield dicts of row slices; `order` permutes rows, `start` skips the first batches."""
    n = next(iter(inputs.values())).shape[0]
    order = torch.arange(n) if order is None else order
    for i in range(start * batch_size, n, batch_size):
        idx = order[i : i + batch_size]
        yield {k: v[idx] for k, v in inputs.items()}


@torch.no_grad()
def perplexity(method: AdapterMethod, inputs: dict[str, torch.Tensor], batch_size: int, device: str = "cpu",
               autocast_dtype: torch.dtype | None = None) -> float:
    was_training = method.training
    method.eval()
    total, count = 0.0, 0
    for batch in batches(inputs, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device_type=device.split(":")[0], dtype=autocast_dtype, enabled=autocast_dtype is not None):
            nll, n = method.nll(batch)
        total += float(nll)
        count += n
    method.train(was_training)
    return math.exp(total / max(count, 1))
