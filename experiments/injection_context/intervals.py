"""The injection study's interval helpers: the test windows' resampling SD, two-level intervals, content verdicts."""

from __future__ import annotations

import math

import numpy as np

from experiments.injection_context.arms import rate_searched
from experiments.stats import PerWindow, claim


WINDOW_DRAWS = 1000


def window_sd(stat, arms: dict[str, PerWindow], n: int = WINDOW_DRAWS, seed: int = 0) -> float:
    """The standard deviation of `stat` when the test windows are resampled (with replacement, the same windows for
    every arm) and the seeds held at their mean: the uncertainty the seed-level intervals leave out."""
    rng = np.random.default_rng(seed)
    trained = [a for a in arms.values() if a.trained]
    shared = sorted(set.intersection(*(set(a.seed_ids) for a in trained))) if trained else [0]
    rows = {k: [a.seed_ids.index(s) for s in shared] if a.trained else [0] for k, a in arms.items()}
    n_windows = next(iter(arms.values())).nll.shape[1]
    draws = []
    for _ in range(n):
        weights = np.bincount(rng.integers(0, n_windows, n_windows), minlength=n_windows).astype(float)
        draws.append(stat({k: a.mean(rows[k], weights) for k, a in arms.items()}))
    return float(np.std(draws, ddof=1))


def two_level(x, sd: float) -> list[float]:
    """A seed-level interval widened by the test windows' resampling SD: the t half-width and 1.96 SDs added in
    quadrature (TWO_LEVEL_METHOD)."""
    if math.isnan(x[1]):
        return [x[0], math.nan, math.nan]
    half = math.hypot((x[2] - x[1]) / 2, 1.959964 * sd)
    return [x[0], x[0] - half, x[0] + half]


TWO_LEVEL_METHOD = (
    "seed-level Student's t half-width and 1.96 x the standard deviation of the statistic over "
    f"{WINDOW_DRAWS:,} resamples of the test windows (seeds averaged), added in quadrature"
)


def content_claim(
    x,
    control_status: str | list[str],
    design_status: str | None = None,
    wide=None,
    said: tuple[str, str] = ("content helps", "worse than its control"),
) -> str:
    """The verdict on a content share (injection minus its control): the seed-level interval's, and none where the
    control's rate was not searched at the budget it is reported at (a mistuned control credits content with what the
    control failed to learn); "worse than its control" needs the design's rate searched too. `wide`: the two-level
    interval, which says whether the verdict survives resampling the test windows as well."""
    said = claim(x, *said)
    if said.startswith("no verdict"):
        return said
    controls = [control_status] if isinstance(control_status, str) else control_status
    if not all(rate_searched(c) for c in controls):
        return "no verdict (control's rate not searched at this budget)"
    if "worse than its control" in said and design_status is not None and not rate_searched(design_status):
        return "no verdict (design's rate not searched at this budget)"
    if wide is not None and not math.isnan(wide[1]) and wide[1] <= 0 <= wide[2]:
        return f"{said} at the seed level only (barely: with the test windows resampled too the interval includes 0)"
    return said
