"""The injection study's text scaling: the best design's change per doubling of its windows, doublings to targets."""

from __future__ import annotations

import math

from experiments.injection_context.arms import (
    BEST_PAIR,
    MORE_TEXT,
    MORE_WINDOWS,
    NO_SEARCH,
    OVERLAPPING,
    STRIDE,
    TEXT_TOKENS,
)
from experiments.injection_context.intervals import content_claim
from experiments.stats import PerWindow, seed_interval


# the targets for the best design at 8 vectors: share of the text gain, and content share (points / 100)
TARGET_SHARE, TARGET_CONTENT = 0.70, 0.25


MAX_WINDOWS = 1e9  # extrapolated window counts above this are reported as "over" it


# The best design and its constant control by the training text they saw: suffix ("" for the study's own windows) ->
# (arm, control). Each step goes from the first to the second; its change is per doubling of the training windows.
TEXT_POINTS = {"": BEST_PAIR} | {
    suffix: (f"{BEST_PAIR[0]}-{suffix}", f"{BEST_PAIR[1]}-{suffix}")
    for suffix in (f"w{MORE_WINDOWS}", f"w{OVERLAPPING}s{STRIDE}", f"w{MORE_TEXT}t")
}


TEXT_STEPS = [
    ("", f"w{MORE_WINDOWS}"),
    (f"w{MORE_WINDOWS}", f"w{OVERLAPPING}s{STRIDE}"),
    (f"w{MORE_WINDOWS}", f"w{MORE_TEXT}t"),
]


def analyse_text_scaling(
    arms: dict[str, PerWindow], gain, designs: dict, windows: dict[str, int], lrs: dict | None = None
) -> list[dict]:
    """Each step of training text for the best design: the change of its share of the text gain and of its content
    share per doubling of the training windows (paired by seed and window), and where a change is positive at the
    seed level, how many more doublings would reach the targets at that rate (an extrapolation, not a measurement)."""
    full = f"text-{max(TEXT_TOKENS)}"
    steps = []
    for before, after in TEXT_STEPS:
        (a0, c0), (a1, c1) = TEXT_POINTS[before], TEXT_POINTS[after]
        if a0 not in arms or a1 not in arms:
            continue
        n0, n1 = windows[a0], windows[a1]
        d = math.log2(n1 / n0)
        sub = {"baseline": arms["baseline"], full: arms[full], a0: arms[a0], a1: arms[a1]}
        step = {
            "from": a0,
            "to": a1,
            "windows": [n0, n1],
            "doublings": d,
            "share_per_doubling": seed_interval(lambda m: (m[a0] - m[a1]) / gain(m) / d, sub),
        }
        step["share_needs"] = doublings_to(
            TARGET_SHARE, designs[a1]["share_of_text_gain"][0], step["share_per_doubling"], n1
        )
        if c0 in arms and c1 in arms:
            both = {**sub, c0: arms[c0], c1: arms[c1]}
            step["content_per_doubling"] = seed_interval(
                lambda m: ((m[c1] - m[a1]) - (m[c0] - m[a0])) / gain(m) / d, both
            )
            step["content_needs"] = doublings_to(
                TARGET_CONTENT, designs[a1]["content_share"][0], step["content_per_doubling"], n1
            )
            step["control_lr_status"] = [(lrs or {}).get(c, {}).get("lr_status", NO_SEARCH) for c in (c0, c1)]
            step["content_verdict"] = content_claim(
                step["content_per_doubling"],
                step["control_lr_status"],
                said=("less content with more windows", "more content with more windows"),
            )
            if step["content_verdict"].startswith("no verdict"):
                step["content_needs"] = None  # no rate to extrapolate from a change that has no verdict
        step["lr_status"] = [(lrs or {}).get(a, {}).get("lr_status", NO_SEARCH) for a in (a0, a1)]
        # overlapping windows (a stride below the window) repeat text: each token sits in seq_len / stride windows
        b1 = (lrs or {}).get(a1, {}).get("budget", {})
        stride, seq = b1.get("stride"), b1.get("seq_len")
        step["overlap"] = seq / stride if stride and seq and stride < seq else 1
        steps.append(step)
    return steps


def doublings_to(target: float, now: float, rate, windows: int) -> dict | None:
    """Doublings of `windows` that would take `now` to `target` at `rate` per doubling, its range from the rate's
    interval ends; None where the rate's interval does not lie above zero (no rate to extrapolate)."""
    if now >= target:
        return {"doublings": [0.0, 0.0, 0.0], "windows": [windows] * 3}
    if math.isnan(rate[1]) or rate[1] <= 0:
        return None
    many = [(target - now) / r for r in (rate[0], rate[2], rate[1])]  # the point, then fewest and most doublings
    # a rate whose interval ends just above 0 puts its far end at hundreds of doublings (2 ** m overflows past 1,024):
    # beyond MAX_WINDOWS the count says nothing a reader can use, so it is None ("over ...")
    most = math.log2(MAX_WINDOWS / windows)
    return {"doublings": many, "windows": [windows * 2**m if m <= most else None for m in many]}
