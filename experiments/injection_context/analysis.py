"""The injection study's analysis: run records loaded per corpus and turned into the statistics RESULTS.md and results.json report."""

from __future__ import annotations

import math

import numpy as np

from experiments.injection_context.arms import (
    ARMS,
    CONTEXT_ARMS,
    CURVE_K,
    DESIGNS,
    BEST_PAIR,
    MORE_TRAINING,
    MORE_EPOCHS,
    MORE_TEXT,
    MORE_WINDOWS,
    OVERLAPPING,
    REPEAT_OF,
    STRIDE,
    SCREEN_K,
    TEXT_TOKENS,
    control_arm,
    design_of,
)
from experiments.injection_context.arms import NO_SEARCH, rate_searched
from experiments.stats import PerWindow, claim, seed_interval
from experiments.injection_context.records import lr_rows


CONTROLS = {k: [a for a in (f"shuffled-{k}", f"constant-{k}") if a in ARMS] for k in (1, 2, 4, 8, 16)}

CONTEXT_SCORED = {"baseline-context", *CONTEXT_ARMS}  # arms scored on the window's tokens after the context


# the best design trained more: on 4x the windows against the same windows 4x (data or steps?), then on overlapping
# windows and on more distinct text, each against 4,096 windows, and the two against each other
_BEST = BEST_PAIR[0]


MORE_TRAINING_PAIRS = [
    (f"{_BEST}-w{MORE_WINDOWS}", f"{_BEST}-e{MORE_EPOCHS}"),
    (f"{_BEST}-e{MORE_EPOCHS}", _BEST),
    (f"{_BEST}-w{OVERLAPPING}s{STRIDE}", f"{_BEST}-w{MORE_WINDOWS}"),
    (f"{_BEST}-w{MORE_TEXT}t", f"{_BEST}-w{MORE_WINDOWS}"),
    (f"{_BEST}-w{MORE_TEXT}t", f"{_BEST}-w{OVERLAPPING}s{STRIDE}"),
]


def per_window(records: list[dict]) -> PerWindow:
    """An arm's records, a row per seed in seed order, each row knowing its seed number, so that arms pair by seed."""
    records = sorted(records, key=lambda r: r.get("seed", 0))
    return PerWindow(
        [r["test_nll"] for r in records],
        [r["test_tokens"] for r in records],
        trained=records[0].get("arm") in ARMS,
        seed_ids=[r.get("seed", 0) for r in records],
    )


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


def analyse(corpus: dict) -> dict:
    arms = {a: per_window(rs) for a, rs in corpus["arms"].items()}
    lrs = lr_rows(corpus)
    full = f"text-{max(TEXT_TOKENS)}"
    gain = lambda m: m["baseline"] - m[full]  # noqa: E731  nats per token the full preceding text is worth
    rows = {}
    for name, pw in arms.items():
        if name in CONTEXT_SCORED:
            continue  # scored on other tokens: their own table, against their own baseline
        sub = {"baseline": arms["baseline"], full: arms[full], name: pw}
        rows[name] = {
            "seeds": pw.seeds,
            "nll": seed_interval(lambda m: m[name], sub),
            "perplexity": seed_interval(lambda m: math.exp(m[name]), sub),
            "vs_baseline": seed_interval(lambda m: m[name] - m["baseline"], sub),
            "share_of_text_gain": seed_interval(lambda m: (m["baseline"] - m[name]) / gain(m), sub),
            **lrs.get(name, {}),
        }
    content, control_gaps = {}, {}
    for k, controls in CONTROLS.items():
        inj = f"inject-{k}"
        have = [c for c in controls if c in arms]
        if inj in arms and have:
            sub = {a: arms[a] for a in ["baseline", full, inj, *have]}
            better = lambda m: min(m[c] for c in have)  # noqa: E731
            content[k] = {
                "controls": have,
                "control_lr_status": [lrs[c]["lr_status"] for c in have],
                "nats": seed_interval(lambda m: m[inj] - better(m), sub),
                "share_of_text_gain": seed_interval(lambda m: (better(m) - m[inj]) / gain(m), sub),
            }
        shuffled, constant = f"shuffled-{k}", f"constant-{k}"
        if shuffled in arms and constant in arms:  # how much weaker one control is than the other, where both ran
            control_gaps[k] = seed_interval(
                lambda m: m[shuffled] - m[constant], {shuffled: arms[shuffled], constant: arms[constant]}
            )
    pairs = {}
    for a, b in [
        ("inject-4", "static-4"),
        ("fourier-4", "inject-4"),
        ("lm-mean-4", "inject-4"),
        ("inject-8", "inject-4"),
        ("inject-2", "inject-1"),
        ("inject-4", "inject-2"),
        *MORE_TRAINING_PAIRS,
    ]:
        if a in arms and b in arms:
            pairs[f"{a} - {b}"] = seed_interval(lambda m: m[a] - m[b], {a: arms[a], b: arms[b]})
    window = {}
    if "window-4" in arms and "static-4" in arms:
        sub = {a: arms[a] for a in ("window-4", "static-4")}
        window["ppl_change_vs_static"] = seed_interval(lambda m: math.exp(m["window-4"] - m["static-4"]) - 1, sub)
        window["nats_vs_static"] = seed_interval(lambda m: m["window-4"] - m["static-4"], sub)
        if "window-shuffled-4" in arms:
            sub = {a: arms[a] for a in ("window-4", "window-shuffled-4")}
            window["nats_vs_shuffled"] = seed_interval(lambda m: m["window-4"] - m["window-shuffled-4"], sub)
        if "constant-4" in arms:  # a constant input is the same control in every mode: the scored tokens are the same
            sub = {a: arms[a] for a in ("window-4", "constant-4")}
            window["nats_vs_constant"] = seed_interval(lambda m: m["window-4"] - m["constant-4"], sub)
        if "inject-4" in arms:
            sub = {a: arms[a] for a in ("window-4", "inject-4")}
            window["nats_vs_previous"] = seed_interval(lambda m: m["window-4"] - m["inject-4"], sub)
    designs = analyse_designs(arms, gain, lrs)
    windows = {a: rs[0]["train_windows"] for a, rs in corpus["arms"].items() if "train_windows" in rs[0]}
    return {
        "rows": rows,
        "content": content,
        "shuffled_minus_constant": control_gaps,
        "pairs": pairs,
        "window": window,
        "context": analyse_context(arms),
        "designs": designs,
        "headline": headline(designs),
        "text_scaling": analyse_text_scaling(arms, gain, designs, windows, lrs),
        "windows": arms["baseline"].nll.shape[1],
        "tokens_per_window": float(arms["baseline"].tokens.mean()),
    }


# (design, its arm, its constant-input control, its shuffled control) for the designs table at every k: the static
# prefix (no input: the capacity alone), the pooled MiniLM vector, then the designs of arms.DESIGNS
ALL_K = sorted((SCREEN_K, *CURVE_K))


STATIC = "static prefix"

DESIGN_ROWS = (
    [(STATIC, f"static-{k}", None, None) for k in ALL_K]
    + [("pooled MiniLM", f"inject-{k}", f"constant-{k}", f"shuffled-{k}") for k in ALL_K]
    + [(d, f"{d}-{k}", control_arm(d, k, "constant"), control_arm(d, k, "shuffled")) for d in DESIGNS for k in ALL_K]
    + [
        (f"{design_of(arm) or 'pooled MiniLM'}, {tail}", f"{arm}-{suffix}", f"{control}-{suffix}", None)
        for suffix, (_, tail, pairs) in MORE_TRAINING.items()
        for arm, control in pairs
    ]
)

INTERVAL_METHOD = "Student's t over seed means (n - 1 df), arms paired by seed and by test window"


def analyse_designs(arms: dict[str, PerWindow], gain, lrs: dict | None = None) -> dict:
    """Each design's share of the text gain, its content share (its share minus its constant-input control's, paired),
    and its difference from the pooled MiniLM design at the same k; each with the SD that resampling the test windows
    adds (`window_sd`), the two-level interval, each arm's learning-rate facts and the verdict on its content share
    (`content_claim`)."""
    lrs = lrs or {}
    full = f"text-{max(TEXT_TOKENS)}"
    out = {}
    for design, arm, constant, shuffled in DESIGN_ROWS:
        if arm not in arms:
            continue
        shape = ARMS[arm][1]
        k = shape.get("adapter.inject_tokens", shape.get("adapter.prefix_len"))
        sub = {"baseline": arms["baseline"], full: arms[full], arm: arms[arm]}
        share = lambda m: (m["baseline"] - m[arm]) / gain(m)  # noqa: E731
        row = {
            "design": design,
            "arm": arm,
            "k": k,
            "seeds": arms[arm].seeds,
            "control": constant,
            "share_of_text_gain": seed_interval(share, sub),
            "share_window_sd": window_sd(share, sub),
            **{
                key: lrs[arm][key]
                for key in ("lr", "budget", "lr_budget", "lr_status", "lr_settled")
                if key in lrs.get(arm, {})
            },
        }
        row["share_two_level"] = two_level(row["share_of_text_gain"], row["share_window_sd"])
        for control, key in ((constant, ""), (shuffled, "shuffled_")):
            if control in arms:
                both = {**sub, control: arms[control]}
                content = lambda m: (m[control] - m[arm]) / gain(m)  # noqa: E731
                row[f"{key}control_seeds"] = arms[control].seeds
                row[f"{key}content_share"] = seed_interval(content, both)
                row[f"{key}content_nats"] = seed_interval(lambda m: m[arm] - m[control], both)
                row[f"{key}content_window_sd"] = window_sd(content, both)
                row[f"{key}content_two_level"] = two_level(row[f"{key}content_share"], row[f"{key}content_window_sd"])
                row[f"{key}control_lr_status"] = lrs.get(control, {}).get("lr_status", NO_SEARCH)
                row[f"{key}control_lr_settled"] = lrs.get(control, {}).get("lr_settled", False)
                row[f"{key}content_verdict"] = content_claim(
                    row[f"{key}content_nats"],
                    row[f"{key}control_lr_status"],
                    row.get("lr_status"),
                    row[f"{key}content_two_level"],
                )
        pooled = pooled_beside(arm, k)
        if design != STATIC and arm != pooled and pooled in arms:
            row["vs_pooled_nats"] = seed_interval(lambda m: m[arm] - m[pooled], {arm: arms[arm], pooled: arms[pooled]})
        out[arm] = row
    return out


# the targets for the best design at 8 vectors: share of the text gain, and content share (points / 100)
TARGET_SHARE, TARGET_CONTENT = 0.70, 0.25


MAX_WINDOWS = 1e9  # extrapolated window counts above this are reported as "over" it


# The best design and its constant control by the training text they saw: suffix ("" for the study's own windows) ->
# (arm, control). Each step goes from the first to the second; its change is per doubling of the training windows.
TEXT_POINTS = {"": BEST_PAIR} | {
    suffix: (f"{_BEST}-{suffix}", f"{BEST_PAIR[1]}-{suffix}")
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


def headline(designs: dict) -> dict | None:
    """The best design at k <= 8 (the highest mean share of the text gain), as results.json's headline block; among the
    rows with an interval (2 seeds or more) where there is one: one seed's mean is not set against others' intervals."""
    candidates = [r for r in designs.values() if r["design"] != STATIC and r["k"] <= SCREEN_K]
    if not candidates:
        return None
    candidates = [r for r in candidates if r["seeds"] > 1] or candidates
    ranked = sorted(candidates, key=lambda r: -r["share_of_text_gain"][0])
    best = ranked[0]
    content = best.get("content_share")
    head = {
        "design": best["design"],
        "arm": best["arm"],
        "k": best["k"],
        "seeds": best["seeds"],
        "share_of_text_gain": list(best["share_of_text_gain"]),
        "content_share": list(content) if content is not None else None,
        "interval": INTERVAL_METHOD
        + ("" if content is not None else "; content_share: its constant-input control has not run"),
        # not pre-registered: the row with the highest mean share among the candidates, so its share is a maximum
        "selection": f"best of {len(candidates)}: the highest mean share of the text gain among {len(candidates)} "
        f"candidate rows (k <= {SCREEN_K}, not the static prefix, an interval where any has one); "
        "not pre-registered",
        "runner_up": (
            {"arm": ranked[1]["arm"], "share_of_text_gain": list(ranked[1]["share_of_text_gain"])}
            if len(ranked) > 1
            else None
        ),
    }
    for key in ("lr", "budget", "lr_budget", "lr_status", "control_lr_status", "content_verdict"):
        if key in best:
            head[key] = best[key]
    if "share_two_level" in best:
        head["two_level"] = {
            "share_of_text_gain": best["share_two_level"],
            "share_window_sd": best["share_window_sd"],
            "content_share": best.get("content_two_level"),
            "content_window_sd": best.get("content_window_sd"),
            "interval": TWO_LEVEL_METHOD,
        }
    return head


def analyse_context(arms: dict[str, PerWindow]) -> dict:
    """The `context` arms against the frozen LM scored on the same tokens, and injection against its control."""
    have = [a for a in CONTEXT_ARMS if a in arms]
    if "baseline-context" not in arms or not have:
        return {}
    base = arms["baseline-context"]
    out = {"rows": {}, "tokens_per_window": float(base.tokens.mean())}
    for name in ["baseline-context", *have]:
        sub = {"baseline-context": base, name: arms[name]}
        out["rows"][name] = {
            "seeds": arms[name].seeds,
            "perplexity": seed_interval(lambda m: math.exp(m[name]), sub),
            "vs_baseline": seed_interval(lambda m: m[name] - m["baseline-context"], sub),
        }
    if {"context-4", "context-constant-4"} <= set(have):
        sub = {a: arms[a] for a in ("context-4", "context-constant-4")}
        out["content_nats"] = seed_interval(lambda m: m["context-4"] - m["context-constant-4"], sub)
    return out


def pooled_beside(arm: str, k: int) -> str:
    """The pooled MiniLM arm a design's row is compared with: the same k, trained the same way (an arm trained longer
    than the pooled vector ever was has none); the pooled vector trained longer is compared with itself on one epoch."""
    if arm in REPEAT_OF and REPEAT_OF[arm] != f"inject-{k}":
        return f"inject-{k}-{arm.rsplit('-', 1)[1]}"
    return f"inject-{k}"
