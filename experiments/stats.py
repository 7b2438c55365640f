"""Intervals and multiple-testing corrections the experiments' RESULTS.md files share."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np


class PerWindow:
    """One arm's summed test NLL and scored-token count per (seed, window): arrays of shape [seeds, windows], row i
    being training seed `seed_ids[i]` (0, 1, ... unless given). Arms without seeds (evaluation only) have one row."""

    def __init__(self, nll, tokens, trained: bool = True, seed_ids=None):
        self.nll = np.atleast_2d(np.asarray(nll, dtype=float))
        self.tokens = np.atleast_2d(np.asarray(tokens, dtype=float))
        self.trained = trained  # False: an evaluation-only arm (no training seed behind its one row)
        self.seed_ids = list(range(self.nll.shape[0])) if seed_ids is None else list(seed_ids)
        if len(self.seed_ids) != self.nll.shape[0]:
            raise ValueError(f"{len(self.seed_ids)} seed ids for {self.nll.shape[0]} rows")

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


def bootstrap(
    stat: Callable[[dict[str, float]], float],
    arms: dict[str, PerWindow],
    n: int = 2000,
    seed: int = 0,
    seeds_too: bool = True,
) -> tuple[float, float, float]:
    """(estimate, 2.5%, 97.5%) of `stat` over arms' mean NLLs. Each resample draws the test windows with
    replacement, the same windows for every arm (the arms are paired by window), and (`seeds_too`) each arm's seeds
    with replacement. Over few seeds that understates the seed variance (over 3 seeds its variance is 2/3 of the
    unbiased one, with normal tails): claims about seeds use `seed_interval`."""
    rng = np.random.default_rng(seed)
    n_windows = next(iter(arms.values())).nll.shape[1]
    point = stat({k: a.mean() for k, a in arms.items()})
    draws = np.empty(n)
    for i in range(n):
        weights = np.bincount(rng.integers(0, n_windows, n_windows), minlength=n_windows).astype(float)
        means = {k: a.mean(rng.integers(0, a.seeds, a.seeds) if seeds_too else None, weights) for k, a in arms.items()}
        draws[i] = stat(means)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return point, float(lo), float(hi)


MIN_SEEDS = 5  # a claim about training seeds rests on at least this many


class Interval(tuple):
    """(estimate, 2.5%, 97.5%), and how many seed means the interval rests on (0: no training seeds involved, the
    interval is over test windows alone)."""

    def __new__(cls, point: float, lo: float, hi: float, seeds: int):
        made = super().__new__(cls, (float(point), float(lo), float(hi)))
        made.seeds = seeds
        return made


def seed_interval(
    stat: Callable[[dict[str, float]], float], arms: dict[str, PerWindow], level: float = 0.95
) -> Interval:
    """`stat` of the arms' mean NLLs with a Student-t interval over seeds: the statistic is computed per seed (seed s of
    every trained arm, each on all test windows, so arms are paired by seed number and by window; an evaluation-only
    arm's one row enters every seed), over the seed numbers every trained arm has, and the interval is the mean of
    those n values +- t(n-1) standard errors. The test windows are held fixed: the interval is about training seeds.
    With one shared seed there is no interval (NaN bounds); where no arm was trained, a bootstrap over test windows
    (`bootstrap`) is the interval."""
    from scipy.stats import t  # lazy: only the reports need SciPy

    trained = [a for a in arms.values() if a.trained]
    if not trained:
        return Interval(*bootstrap(stat, arms, seeds_too=False), 0)
    shared = sorted(set.intersection(*(set(a.seed_ids) for a in trained)))
    if not shared:  # no seed in common: nothing to pair, the point from all rows and no interval
        return Interval(stat({k: a.mean() for k, a in arms.items()}), math.nan, math.nan, 1)
    n = len(shared)  # a trained arm of one seed pairs with the same seed of the others: one seed, no interval
    values = np.array(
        [stat({k: a.mean([a.seed_ids.index(s) if a.trained else 0]) for k, a in arms.items()}) for s in shared]
    )
    if n == 1:
        return Interval(float(values[0]), math.nan, math.nan, 1)
    half = float(t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return Interval(values.mean(), values.mean() - half, values.mean() + half, n)


def claim(x: Interval, negative: str, positive: str) -> str:
    """The verdict an interval of a difference allows: `negative` where it lies below zero, `positive` above it; with
    fewer than MIN_SEEDS seeds such a result is only suggestive, and without an interval there is no verdict."""
    if math.isnan(x[1]):
        return f"no verdict ({getattr(x, 'seeds', 1)} seed: no interval)"
    if x[2] < 0:
        said = negative
    elif x[1] > 0:
        said = positive
    else:
        return "no verdict (interval includes 0)"
    seeds = getattr(x, "seeds", 0)
    return f"suggestive: {said} ({seeds} seeds; a verdict needs {MIN_SEEDS})" if 0 < seeds < MIN_SEEDS else said


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
