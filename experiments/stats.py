"""Intervals and multiple-testing corrections the experiments' RESULTS.md files share."""
from __future__ import annotations

from typing import Callable

import numpy as np


class PerWindow:
    """One arm's summed test NLL and scored-token count per (seed, window): arrays of shape [seeds, windows].
    Arms without seeds (evaluation only) have one row."""

    def __init__(self, nll, tokens):
        self.nll = np.atleast_2d(np.asarray(nll, dtype=float))
        self.tokens = np.atleast_2d(np.asarray(tokens, dtype=float))

    @property
    def seeds(self) -> int:
        return self.nll.shape[0]

    def mean(self, seeds=None, weights=None) -> float:
        """Token-weighted mean NLL (nats per token) over the given seed rows and window weights."""
        nll = self.nll if seeds is None else self.nll[seeds]
        tok = self.tokens if seeds is None else self.tokens[seeds]
        if weights is None:
            return float(nll.sum() / tok.sum())
        return float((nll @ weights).sum() / (tok @ weights).sum())


def bootstrap(stat: Callable[[dict[str, float]], float], arms: dict[str, PerWindow], n: int = 2000,
              seed: int = 0) -> tuple[float, float, float]:
    """(estimate, 2.5%, 97.5%) of `stat` over arms' mean NLLs. Each resample draws the test windows with
    replacement, the same windows for every arm (the arms are paired by window), and each arm's seeds with
    replacement, so the interval holds both the test sample's and the training seeds' variation."""
    rng = np.random.default_rng(seed)
    n_windows = next(iter(arms.values())).nll.shape[1]
    point = stat({k: a.mean() for k, a in arms.items()})
    draws = np.empty(n)
    for i in range(n):
        weights = np.bincount(rng.integers(0, n_windows, n_windows), minlength=n_windows).astype(float)
        means = {k: a.mean(rng.integers(0, a.seeds, a.seeds), weights) for k, a in arms.items()}
        draws[i] = stat(means)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return point, float(lo), float(hi)


def excludes_zero(lo: float, hi: float) -> bool:
    return lo > 0 or hi < 0


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p-values (family-wise error), in the input's keys; None stays None."""
    known = sorted(((p, k) for k, p in pvalues.items() if p is not None))
    m, running, out = len(known), 0.0, dict.fromkeys(pvalues)
    for i, (p, k) in enumerate(known):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out
