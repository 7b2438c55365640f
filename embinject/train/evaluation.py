"""Perplexity over a fixed set of windows, token-weighted: exp(sum NLL / scored tokens)."""

from __future__ import annotations

import math

import torch

from ..methods import AdapterMethod


def batches(inputs: dict[str, torch.Tensor], batch_size: int, order: torch.Tensor | None = None, start: int = 0):
    """Yield dicts of row slices; `order` permutes rows, `start` skips the first batches."""
    n = next(iter(inputs.values())).shape[0]
    order = torch.arange(n) if order is None else order
    for i in range(start * batch_size, n, batch_size):
        idx = order[i : i + batch_size]
        yield {k: v[idx] for k, v in inputs.items()}


@torch.no_grad()  # on a generator, torch disables autograd only while the generator body runs
def scored_batches(
    method: AdapterMethod,
    inputs: dict[str, torch.Tensor],
    batch_size: int,
    device: str,
    autocast_dtype: torch.dtype | None,
    per_window: bool = False,
):
    """Yield each batch's (NLL, scored tokens) in eval mode; the method's mode is restored after."""
    was_training = method.training
    method.eval()
    try:
        for batch in batches(inputs, batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(
                device_type=device.split(":")[0], dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                nll_n = method.nll(batch, per_window=per_window)
            yield nll_n
    finally:
        method.train(was_training)


def perplexity(
    method: AdapterMethod,
    inputs: dict[str, torch.Tensor],
    batch_size: int,
    device: str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> float:
    total, count = 0.0, 0
    for nll, n in scored_batches(method, inputs, batch_size, device, autocast_dtype):
        total += float(nll)
        count += n
    return math.exp(total / max(count, 1))


def window_nll(
    method: AdapterMethod,
    inputs: dict[str, torch.Tensor],
    batch_size: int,
    device: str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL and scored-token count of every window (float64, int64 on the CPU), for statistics that
    pair methods window by window; `perplexity` is exp(nll.sum() / count.sum()) of the same numbers."""
    parts = [
        (nll.double().cpu(), n.cpu())
        for nll, n in scored_batches(method, inputs, batch_size, device, autocast_dtype, per_window=True)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def windows_perplexity(nll: torch.Tensor, count: torch.Tensor, rows=slice(None)) -> float:
    """Perplexity of the windows `rows` from each window's summed NLL and scored tokens (`window_nll`'s numbers)."""
    return math.exp(float(nll[rows].sum()) / max(int(count[rows].sum()), 1))


def eval_subset(val: dict[str, torch.Tensor], n: int | None) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The windows intermediate evaluations score: a fixed subset, the same for every trial and seed (so that
    trials are compared on the same windows), with its row index; or all of them (index None)."""
    total = len(val["input_ids"])
    if not n or n >= total:
        return val, None
    index = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:n].sort().values
    return {k: v[index] for k, v in val.items()}, index


def subset_and_full(
    method: AdapterMethod, val: dict, index: torch.Tensor, batch_size: int, device: str, amp, evaluate=window_nll
) -> tuple[float, float]:
    """(perplexity on the subset `index`, perplexity on every window) from one pass over every window: the
    subset's windows are among them, so scoring them separately would be paid twice. `evaluate`: how the windows are
    scored (`SoloSteps.evaluate`'s signature)."""
    nll, count = evaluate(method, val, batch_size, device, amp)
    return windows_perplexity(nll, count, index), windows_perplexity(nll, count)


def score_state(
    method: AdapterMethod, state: dict | None, val: dict, batch_size: int, device: str, amp, evaluate=window_nll
) -> float:
    """Perplexity of `method` with the adapter weights `state` (None: as it is), leaving it as it was."""
    if state is None:
        return windows_perplexity(*evaluate(method, val, batch_size, device, amp))
    current = method.adapter_state()
    method.load_adapter_state({k: v.to(device) for k, v in state.items()})
    try:
        return windows_perplexity(*evaluate(method, val, batch_size, device, amp))
    finally:
        method.load_adapter_state({k: v.to(device) for k, v in current.items()})
