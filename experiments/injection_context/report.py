"""RESULTS.md, results.json and the compression plot of the injection study, from its run records."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import yaml

from embinject.errors import ConfigError
from embinject.fsutil import atomic_write_text
from embinject.config_files import load_config
from embinject.tracking import flatten
from experiments.injection_context.arms import (ARM_SETS, ARMS, CONTEXT_ARMS, CONTEXT_READ, CURVE_ARMS, CURVE_K, DESIGNS, HERE, IGNORED_SETTINGS,
                                               BEST_PAIR, MORE_TRAINING, MORE_TRAINING_ARMS, MORE_EPOCHS, MORE_TEXT, MORE_TEXT_CORPUS, MORE_WINDOWS, OVERLAPPING,
                                               REPEAT_OF, STRIDE, SCREEN_K, SEEDS, TEXT_TOKENS, control_arm, design_of, lr_edge)
from experiments.injection_context.arms import (BORROWED, BUDGET_KEYS, LR_RULE_GRID, NO_SEARCH, SEARCHED, budget_of,
                                               extra_corpus, lr_group, lr_status, rate_searched, searched_arm)
from experiments.stats import MIN_SEEDS, PerWindow, claim, seed_interval


CONTROLS = {k: [a for a in (f"shuffled-{k}", f"constant-{k}") if a in ARMS] for k in (1, 2, 4, 8, 16)}
LONGER_SERIES = "converged"  # a series under --out trained until early stopping; the report compares it with this one
CONTEXT_SCORED = {"baseline-context", *CONTEXT_ARMS}  # arms scored on the window's tokens after the context
# the best design trained more: on 4x the windows against the same windows 4x (data or steps?), then on overlapping
# windows and on more distinct text, each against 4,096 windows, and the two against each other
_BEST = BEST_PAIR[0]
MORE_TRAINING_PAIRS = [(f"{_BEST}-w{MORE_WINDOWS}", f"{_BEST}-e{MORE_EPOCHS}"), (f"{_BEST}-e{MORE_EPOCHS}", _BEST),
                       (f"{_BEST}-w{OVERLAPPING}s{STRIDE}", f"{_BEST}-w{MORE_WINDOWS}"),
                       (f"{_BEST}-w{MORE_TEXT}t", f"{_BEST}-w{MORE_WINDOWS}"),
                       (f"{_BEST}-w{MORE_TEXT}t", f"{_BEST}-w{OVERLAPPING}s{STRIDE}")]



def bracket_verdict(search: dict) -> str:
    """What the extra full-epoch trial beyond the edge of the searched rates found."""
    if not search.get("bracket"):
        return "not run: the best may lie beyond the rates tried"
    chosen = min((t for t in search["trials"] if t["lr"] == search["lr"]), key=lambda t: t["val_perplexity"])
    b = search["bracket"][0]
    if b["val_perplexity"] >= chosen["val_perplexity"]:
        return (f"{b['lr']:.2g}: {b['val_perplexity']:.2f} ({b['steps']}), worse than the chosen "
                f"{chosen['val_perplexity']:.2f}: the optimum is bracketed")
    return (f"{b['lr']:.2g}: {b['val_perplexity']:.2f} ({b['steps']}), {100 * (1 - b['val_perplexity'] / chosen['val_perplexity']):.1f}% "
            f"lower than the chosen {chosen['val_perplexity']:.2f} (one seed): the arms were trained at {search['lr']:.3g}, "
            "not at this method's best rate")

AT_BUDGET = "lr_at_budget_"  # <runs>/lr_at_budget_<arm>.json: an arm's search under the rule (`run.py --lr-at-budget`)


def search_settings(search: dict) -> tuple[dict, dict]:
    """The config and tune sections a recorded search ran with: its kept YAML, or (a search copied by --lr-from, or
    from before the YAML was kept) what config.yaml and lr_search.yaml define."""
    raw = search.get("settings")
    if raw is None:
        raw = yaml.safe_load((HERE / "config.yaml").read_text())
        for section, values in yaml.safe_load((HERE / "lr_search.yaml").read_text()).items():
            raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) and section in raw else values
    return raw, raw.get("tune", {})


def lr_rows(corpus: dict) -> dict[str, dict]:
    """Every trained arm's learning rate, the budget it was trained and reported at, the budget its rate was searched
    at (and for which arm), and whether that is its own budget (`arms.lr_status`), from the records."""
    out = {}
    for arm, recs in corpus["arms"].items():
        if arm not in ARMS:
            continue
        rates = sorted({r["lr"] for r in recs})
        budget = budget_of(recs[0]["config"], extra_corpus(arm))
        at = corpus.get("lr_at_budget", {}).get(arm)
        group = lr_group(arm)
        search, source = (at, f"{AT_BUDGET}{arm}") if at and at["lr"] in rates else (corpus["lr"].get(group), group)
        if search is not None and search["lr"] not in rates:
            search = None  # the records trained at another rate than this search chose
        if search is None:  # no search of its own: which recorded search chose the rate it trained at, if one did
            source = next((g for g, s in sorted(corpus["lr"].items(), key=lambda gs: gs[0] != design_of(arm))
                           if s["lr"] in rates), None)
            out[arm] = {"lr": rates[0] if len(rates) == 1 else rates, "budget": budget, "lr_status": NO_SEARCH,
                        "lr_budget": None if source is None else {"search": source, "arm": searched_arm(source),
                                                                  **search_budget(corpus["lr"][source])}}
            continue
        lr_budget = search["budget"] if search is at else search_budget(search)
        search_arm = arm if search is at else searched_arm(group)
        out[arm] = {"lr": search["lr"], "budget": budget, "lr_status": lr_status(arm, budget, search_arm, lr_budget),
                    "lr_budget": {"search": source, "arm": search_arm, **lr_budget},
                    # a pruned search's choice over a trial stopped early was not made on the same windows or steps
                    "lr_settled": search is at or not stopped_beaten(search)}
    return out


def search_budget(search: dict) -> dict:
    raw, tune = search_settings(search)
    return budget_of(raw, None, tune)


def load(out: Path) -> dict[str, dict]:
    """corpus -> {"arms": {arm: [records]}, "lr": {method: search record}}"""
    corpora = {}
    for folder in sorted((out / "runs").glob("*/")):
        arms: dict[str, list[dict]] = {}
        for f in sorted(folder.glob("*.json")):
            if f.name.startswith(("lr_search_", AT_BUDGET)):
                continue
            r = json.loads(f.read_text())
            arms.setdefault(r["arm"], []).append(r)
        lrs = {json.loads(f.read_text())["method"]: json.loads(f.read_text()) for f in folder.glob("lr_search_*.json")}
        for group, search in lrs.items():  # the settings the search ran with, where its YAML was kept beside it
            if (folder / f"lr_search_{group}.yaml").is_file():
                search["settings"] = yaml.safe_load((folder / f"lr_search_{group}.yaml").read_text())
        at_budget = {r["arm"]: r for r in (json.loads(f.read_text())
                                           for f in sorted(folder.glob(f"{AT_BUDGET}*.json")))}
        checks = [json.loads(f.read_text()) for f in sorted((out / "lr_check" / folder.name).glob("*.json"))]
        diverged = [json.loads(f.read_text()) for f in sorted((folder / "diverged").glob("*.json"))]
        if "baseline" in arms:
            corpora[folder.name] = {"arms": arms, "lr": lrs, "lr_check": checks, "diverged": diverged,
                                    "lr_at_budget": at_budget}
    return corpora


def per_window(records: list[dict]) -> PerWindow:
    """An arm's records, a row per seed in seed order, each row knowing its seed number, so that arms pair by seed."""
    records = sorted(records, key=lambda r: r.get("seed", 0))
    return PerWindow([r["test_nll"] for r in records], [r["test_tokens"] for r in records],
                     trained=records[0].get("arm") in ARMS, seed_ids=[r.get("seed", 0) for r in records])


def ci(x: tuple[float, float, float], digits: int = 3, scale: float = 1.0, sign: bool = False) -> str:
    p, lo, hi = (v * scale for v in x)
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    if math.isnan(lo):
        return f"{f.format(p)} [one seed: no interval]"
    return f"{f.format(p)} [{f.format(lo)}, {f.format(hi)}]"


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


TWO_LEVEL_METHOD = ("seed-level Student's t half-width and 1.96 x the standard deviation of the statistic over "
                    f"{WINDOW_DRAWS:,} resamples of the test windows (seeds averaged), added in quadrature")


def content_claim(x, control_status: str | list[str], design_status: str | None = None, wide=None,
                  said: tuple[str, str] = ("content helps", "worse than its control")) -> str:
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
            content[k] = {"controls": have, "control_lr_status": [lrs[c]["lr_status"] for c in have],
                          "nats": seed_interval(lambda m: m[inj] - better(m), sub),
                          "share_of_text_gain": seed_interval(lambda m: (better(m) - m[inj]) / gain(m), sub)}
        shuffled, constant = f"shuffled-{k}", f"constant-{k}"
        if shuffled in arms and constant in arms:  # how much weaker one control is than the other, where both ran
            control_gaps[k] = seed_interval(lambda m: m[shuffled] - m[constant], {shuffled: arms[shuffled], constant: arms[constant]})
    pairs = {}
    for a, b in [("inject-4", "static-4"), ("fourier-4", "inject-4"), ("lm-mean-4", "inject-4"), ("inject-8", "inject-4"),
                 ("inject-2", "inject-1"), ("inject-4", "inject-2"), *MORE_TRAINING_PAIRS]:
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
    return {"rows": rows, "content": content, "shuffled_minus_constant": control_gaps, "pairs": pairs, "window": window,
            "context": analyse_context(arms), "designs": designs, "headline": headline(designs),
            "text_scaling": analyse_text_scaling(arms, gain, designs, windows, lrs),
            "windows": arms["baseline"].nll.shape[1], "tokens_per_window": float(arms["baseline"].tokens.mean())}


# (design, its arm, its constant-input control, its shuffled control) for the designs table at every k: the static
# prefix (no input: the capacity alone), the pooled MiniLM vector, then the designs of arms.DESIGNS
ALL_K = sorted((SCREEN_K, *CURVE_K))
STATIC = "static prefix"
DESIGN_ROWS = [(STATIC, f"static-{k}", None, None) for k in ALL_K] + \
    [("pooled MiniLM", f"inject-{k}", f"constant-{k}", f"shuffled-{k}") for k in ALL_K] + \
    [(d, f"{d}-{k}", control_arm(d, k, "constant"), control_arm(d, k, "shuffled")) for d in DESIGNS for k in ALL_K] + \
    [(f"{design_of(arm) or 'pooled MiniLM'}, {tail}", f"{arm}-{suffix}", f"{control}-{suffix}", None)
     for suffix, (_, tail, pairs) in MORE_TRAINING.items() for arm, control in pairs]
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
        row = {"design": design, "arm": arm, "k": k, "seeds": arms[arm].seeds, "control": constant,
               "share_of_text_gain": seed_interval(share, sub), "share_window_sd": window_sd(share, sub),
               **{key: lrs[arm][key] for key in ("lr", "budget", "lr_budget", "lr_status", "lr_settled")
                  if key in lrs.get(arm, {})}}
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
                row[f"{key}content_verdict"] = content_claim(row[f"{key}content_nats"], row[f"{key}control_lr_status"],
                                                             row.get("lr_status"), row[f"{key}content_two_level"])
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
TEXT_POINTS = {"": BEST_PAIR} | {suffix: (f"{_BEST}-{suffix}", f"{BEST_PAIR[1]}-{suffix}")
                                 for suffix in (f"w{MORE_WINDOWS}", f"w{OVERLAPPING}s{STRIDE}", f"w{MORE_TEXT}t")}
TEXT_STEPS = [("", f"w{MORE_WINDOWS}"), (f"w{MORE_WINDOWS}", f"w{OVERLAPPING}s{STRIDE}"), (f"w{MORE_WINDOWS}", f"w{MORE_TEXT}t")]


def analyse_text_scaling(arms: dict[str, PerWindow], gain, designs: dict, windows: dict[str, int],
                         lrs: dict | None = None) -> list[dict]:
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
        step = {"from": a0, "to": a1, "windows": [n0, n1], "doublings": d,
                "share_per_doubling": seed_interval(lambda m: (m[a0] - m[a1]) / gain(m) / d, sub)}
        step["share_needs"] = doublings_to(TARGET_SHARE, designs[a1]["share_of_text_gain"][0], step["share_per_doubling"], n1)
        if c0 in arms and c1 in arms:
            both = {**sub, c0: arms[c0], c1: arms[c1]}
            step["content_per_doubling"] = seed_interval(lambda m: ((m[c1] - m[a1]) - (m[c0] - m[a0])) / gain(m) / d, both)
            step["content_needs"] = doublings_to(TARGET_CONTENT, designs[a1]["content_share"][0], step["content_per_doubling"], n1)
            step["control_lr_status"] = [(lrs or {}).get(c, {}).get("lr_status", NO_SEARCH) for c in (c0, c1)]
            step["content_verdict"] = content_claim(
                step["content_per_doubling"], step["control_lr_status"],
                said=("less content with more windows", "more content with more windows"))
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
    return {"doublings": many, "windows": [windows * 2 ** m if m <= most else None for m in many]}


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
    head = {"design": best["design"], "arm": best["arm"], "k": best["k"], "seeds": best["seeds"],
            "share_of_text_gain": list(best["share_of_text_gain"]),
            "content_share": list(content) if content is not None else None,
            "interval": INTERVAL_METHOD + ("" if content is not None else
                                           "; content_share: its constant-input control has not run"),
            # not pre-registered: the row with the highest mean share among the candidates, so its share is a maximum
            "selection": f"best of {len(candidates)}: the highest mean share of the text gain among {len(candidates)} "
                         f"candidate rows (k <= {SCREEN_K}, not the static prefix, an interval where any has one); "
                         "not pre-registered",
            "runner_up": ({"arm": ranked[1]["arm"], "share_of_text_gain": list(ranked[1]["share_of_text_gain"])}
                          if len(ranked) > 1 else None)}
    for key in ("lr", "budget", "lr_budget", "lr_status", "control_lr_status", "content_verdict"):
        if key in best:
            head[key] = best[key]
    if "share_two_level" in best:
        head["two_level"] = {"share_of_text_gain": best["share_two_level"], "share_window_sd": best["share_window_sd"],
                             "content_share": best.get("content_two_level"),
                             "content_window_sd": best.get("content_window_sd"),
                             "interval": TWO_LEVEL_METHOD}
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
        out["rows"][name] = {"seeds": arms[name].seeds, "perplexity": seed_interval(lambda m: math.exp(m[name]), sub),
                             "vs_baseline": seed_interval(lambda m: m[name] - m["baseline-context"], sub)}
    if {"context-4", "context-constant-4"} <= set(have):
        sub = {a: arms[a] for a in ("context-4", "context-constant-4")}
        out["content_nats"] = seed_interval(lambda m: m["context-4"] - m["context-constant-4"], sub)
    return out


def equivalent_text_tokens(nll: float, text: dict[int, float]) -> str:
    """How many preceding-text tokens the frozen LM must read to reach `nll` (log-linear interpolation)."""
    ms = sorted(text)
    if nll >= text[ms[0]]:
        return f"< {ms[0]}"
    for lo, hi in zip(ms, ms[1:]):
        if text[hi] <= nll <= text[lo]:
            t = (text[lo] - nll) / (text[lo] - text[hi])
            return f"{2 ** (math.log2(lo) + t * (math.log2(hi) - math.log2(lo))):.1f}"
    return f"> {ms[-1]}"


def settings_changed(config: dict) -> dict:
    """The shared training and data settings a series' runs used that differ from config.yaml (say, a longer budget)."""
    default = flatten(load_config(str(HERE / "config.yaml")).to_dict())
    had = flatten(config)
    return {k: had[k] for k in sorted(had) if k.startswith(("train.", "data.")) and k not in IGNORED_SETTINGS
            and k != "train.lr" and had[k] != default.get(k)}


def same_rates(searches: dict) -> str:
    """A sentence where every method's search tried the same rates: a few trials are all Optuna's random start-up
    draws, from the same sampler seed, so the searches were one grid."""
    tried = {tuple(sorted(round(x["lr"], 12) for x in s["trials"])) for s in searches.values()}
    if len(searches) < 2 or len(tried) != 1:
        return ""
    return (f"Every method tried the same {len(next(iter(tried)))} rates: with this few trials all are Optuna's random "
            "start-up draws from one sampler seed, so the searches amount to one grid. ")


def named_arm_set(corpora: dict) -> str | None:
    """The `--arms` set (other than `all`) whose arms are exactly the series' trained arms, if one is."""
    ran = {a for c in corpora.values() for a in c["arms"] if a in ARMS}
    return next((name for name, arms in ARM_SETS.items() if name != "all" and ran == set(arms)), None)


def series_flags(corpora: dict) -> list[str]:
    """The run.py options, beyond --data, that a series' records show it was run with."""
    named = named_arm_set(corpora)
    flags = [f"--arms {named}"] if named else []
    sources = {Path(s["from"]).parent.parent.parent for c in corpora.values() for s in c["lr"].values() if s.get("from")}
    if sources:  # "from" is relative to the series' folder: <source>/runs/<corpus>/lr_search_<method>.json
        flags = ["--out <this folder>", *flags, f"--lr-from <this folder>/{sources.pop().as_posix()}"]
    if any(c.get("lr_check") for c in corpora.values()):
        flags.append("--lr-check")
    return flags


def trained_runs(corpus: dict) -> list[dict]:
    """A corpus's training-run records (not the evaluation-only references)."""
    return [r for a, rs in corpus["arms"].items() if a in ARMS for r in rs]


def values_of(records: list[dict], key: str, default: str) -> str:
    """The distinct values of one record field, joined: where the runs trained, at which precision."""
    return ", ".join(sorted({str(r.get(key, default)) for r in records}))


def most_common_and_others(records: list[dict], key: str, default) -> tuple[str, str]:
    """The value of a record field that most runs share, and "; <value> for <arms>" for the runs that differ."""
    by_value: dict[str, set[str]] = {}
    for r in records:
        by_value.setdefault(str(r.get(key, default)), set()).add(r["arm"])
    common = max(by_value, key=lambda v: len(by_value[v])) if by_value else str(default)
    return common, "".join(f"; {v} for {', '.join(sorted(a))}" for v, a in sorted(by_value.items()) if v != common)


def pruned_steps(search: dict) -> set[int]:
    """The step counts at which a search's scheduler stopped trials (ASHA's rungs below its max_t)."""
    _, tune = search_settings(search)
    sched = tune.get("scheduler") or {}
    if sched.get("type", "none") in (None, "none"):
        return set()
    rungs, step = set(), sched.get("grace_period", 1)
    while step < sched.get("max_t", 0):
        rungs.add(step)
        step *= sched.get("reduction_factor", 2)
    return rungs


def stopped_beaten(search: dict) -> list[dict]:
    """The chosen rate's neighbours (the nearest rates tried below and above it) that the scheduler had stopped: the
    chosen rate beat them on the evaluation subset at an earlier step, not on the same windows and steps as its own
    score, so the choice between neighbouring rates was not made like for like."""
    stopped = pruned_steps(search)
    rates = sorted({t["lr"] for t in search["trials"]})
    if search["lr"] not in rates:
        return []
    at = rates.index(search["lr"])
    near = set(rates[max(0, at - 1):at] + rates[at + 1:at + 2])
    return [t for t in search["trials"] if t["lr"] in near and t["steps"] in stopped]


def unbracketed(search: dict, stopped: set[int]) -> str:
    """A chosen rate inside the rates tried: whether the trials it beat were scored as it was."""
    beaten = stopped_beaten(search)
    if not beaten:
        return "not needed"
    return ("not run; the chosen rate beat its neighbour " + ", ".join(
        f"{t['lr']:.2g} (stopped at step {t['steps']}, scored on the "
                                                        "subset)" for t in sorted(beaten, key=lambda t: t["lr"]))
            + ": not compared on the same validation windows or steps, so the choice is not settled")


def at_budget_table(searches: dict[str, dict]) -> list[str]:
    """The searches that follow the learning-rate rule (`run.py --lr-at-budget`), each trial to the end."""
    lines = ["Searches under the learning-rate rule (`run.py --lr-at-budget ARM`; every trial run to the end and "
             "scored on all validation windows, training seed 0):", "",
             "| arm | searched at | trials (lr: validation perplexity, steps) | chosen lr |", "|---|---|---|---|"]
    for arm, s in sorted(searches.items()):
        tried = ", ".join(f"{t['lr']:.3g}: {t['val_perplexity']:.2f} ({t['steps']})"
                          for t in sorted(s["trials"], key=lambda t: t["lr"]))
        lines.append(f"| {arm} | {budget_text(s['budget'])} | {tried} | {s['lr']:.3g} |")
    return lines + [""]


def lr_rule_table(rows: dict) -> list[str]:
    """Every trained arm: its rate, the budget it is reported at, the budget (and arm) its rate was searched at."""
    trained = {a: r for a, r in rows.items() if "lr_status" in r}
    if not trained:
        return []
    lines = ["Each trained arm's rate against the learning-rate rule (results.json's `lr`, `budget`, `lr_budget`):", "",
             "| Arm | Rate | Trained and reported at | Rate searched at (searched arm) |", "|---|---|---|---|"]
    for arm, r in trained.items():
        lb = r.get("lr_budget")
        same = lb is not None and all(lb.get(k) == r["budget"].get(k) for k in BUDGET_KEYS)
        pruned = f", pruned by {lb['pruning']}" if lb and lb.get("pruning") else ""
        where = "no search" if lb is None else "the same budget" + pruned if same else budget_text(lb)
        searched = where if lb is None else f"{where} (`{lb['arm']}`)"
        lines.append(f"| `{arm}` | {rate_cell(r)} | {budget_text(r['budget'])} | {searched} |")
    return lines + [""]


def budget_text(b: dict | None) -> str:
    """A budget (`arms.budget_of`) in words."""
    if not b:
        return "not recorded"
    windows = f"{b['windows']:,} windows" + (f" cut every {b['stride']} tokens" if b.get("stride") else "") + \
        (f" with `{b['extra_text']}`'s text" if b.get("extra_text") else "")
    return (f"{windows}, {b['epochs']} epoch(s) ({b['steps']:,} steps at most), early stopping on {b['validation']} "
            f"every {b['eval_every']} steps, patience {b['patience']}"
            + (f", pruned by {b['pruning']}" if b.get("pruning") else ""))


def rate_cell(info: dict | None) -> str:
    """An arm's rate and whether it was searched at the budget the arm is reported at."""
    if not info:
        return "-"
    lr = info["lr"] if isinstance(info["lr"], list) else [info["lr"]]
    rates = ", ".join(f"{x:.3g}" for x in lr)
    status, source = info["lr_status"], (info.get("lr_budget") or {}).get("arm")
    if rate_searched(status):
        return f"{rates} ({status})"
    if status == NO_SEARCH:
        return f"{rates} (rate borrowed/not searched at this budget: no search of its own" + \
            (f"; the rate of `{source}`'s search)" if source else ")")
    where = "another arm's" if status == BORROWED else "the same arm's, at another budget"
    return f"{rates} (rate borrowed/not searched at this budget: `{source}`'s search, {where})"


def regimes(trained: list[dict]) -> list[str]:
    """Each training budget the series' runs used, with how many runs and which arms: the set-up of every regime."""
    by: dict[str, list[dict]] = {}
    for r in trained:
        extra = extra_corpus(r["arm"]) if r["arm"] in ARMS else None
        by.setdefault(budget_text(budget_of(r["config"], extra)), []).append(r)
    return [f"- {b}: {len(rs)} runs ({len({r['arm'] for r in rs})} arms"
            + (f", e.g. `{sorted({r['arm'] for r in rs}, key=len)[0]}`)" if rs else ")")
            for b, rs in sorted(by.items(), key=lambda kv: -len(kv[1]))]


def render(corpora: dict, analyses: dict, series: dict | None = None) -> str:
    trained = [r for c in corpora.values() for r in trained_runs(c)]
    # The set-up is what a training run used (the evaluation-only records carry no training settings).
    first = trained[0] if trained else next(iter(next(iter(corpora.values()))["arms"].values()))[0]
    cfg, t = first["config"], first["config"]["train"]
    hours = sum(r["wall_seconds"] for r in trained) / 3600
    precision, others = most_common_and_others(trained, "dtype", t["dtype"])
    threads, other_threads = most_common_and_others(trained, "threads", first.get("threads", 1))
    devices = values_of(trained, "device", "a device not recorded (the run records of this series predate the field)")
    one_named_set = named_arm_set(corpora) is not None  # `--arms previous`: it never meant to run the other arms
    changed = " ".join(series_flags(corpora) + [f"--set {k}={v}" for k, v in settings_changed(cfg).items()])
    lines = [
        "# How much of unseen preceding text can injected vectors carry?", "",
        f"Generated by `python -m experiments.injection_context.run --data ../shared/data/<corpus>{' ' + changed if changed else ''}` (then `--render-only`) "
        f"from the run records under `runs/`; {len(trained)} training runs, {hours:.1f} h of run time on "
        f"{devices} (each run in its own process with {threads} torch thread(s){other_threads}). "
        "Every number below was computed from those records.", "",
        "**Question.** With `embed_source: previous`, the sentence encoder reads the 64 tokens that precede a window and "
        "the frozen LM reads only k vectors made from them. How much of what reading that text itself would give does "
        "injection recover, and how much of that comes from the embedding's content rather than from extra trainable capacity?", "",
        "**Set-up.** "
        f"Frozen `{cfg['model']}`; windows of {cfg['data']['seq_len']} tokens, each scored on its last "
        f"{cfg['data']['seq_len'] - 1} tokens in every arm (the first has no in-window context). Splits: every 10th "
        "training document is the validation split (early stopping and learning-rate searches); the corpus's validation "
        "file is the **test split**, used only for the numbers below. "
        f"Batch {t['batch_size']}, up to {cfg['data']['val_samples']} validation windows; early stopping keeps the "
        "adapter "
        "of the best evaluation. The runs use these budgets (training regimes), each listed with its runs:", "",
        *regimes(trained), "",
        f"Training precision `{precision}` (autocast){others}, test scoring in float32. "
        f"Injection arms read only the k MLP-made vectors (MLP width {cfg['adapter']['mlp_width']}, no static vectors beside them). "
        "Controls: the same injection adapter fed another window's embedding (shuffled) or one constant vector, the "
        "training split's mean embedding, at training, validation and test alike.", "",
        "**Statistics.** 95% intervals are at the seed level: each statistic is computed per training seed (on all test "
        "windows; arms compared are paired by seed and by window), and the interval is Student's t over those seed values "
        "(n - 1 degrees of freedom). Rows that involve no training (the frozen LM, reading text) have a percentile "
        "bootstrap over test windows instead; a trained arm with one seed has no interval. A verdict needs an interval of "
        f"a difference that excludes zero and at least {MIN_SEEDS} seeds; an interval that excludes zero over fewer seeds "
        "is marked *suggestive*. Shares are of the *text gain*: the drop in test NLL "
        "(nats per token) from the frozen LM alone to the frozen LM reading all 64 preceding tokens. "
        "The seed-level intervals hold the test windows fixed: the (f) table gives, beside each, the standard "
        "deviation "
        f"that resampling the test windows adds, and a two-level interval ({TWO_LEVEL_METHOD}); a verdict that the "
        "two-level interval does not keep is marked *barely*. Every interval is a 95% interval of that kind over the "
        "seeds it names.", "",
        "**Learning-rate rule.** An arm's learning rate counts as searched only where the search trained that arm "
        "(its own "
        "k and its own input: controls included) at the budget the arm is reported at (training windows, epochs, early "
        "stopping and its validation windows); the rule's search (`run.py --lr-at-budget ARM`) also runs every trial "
        "to "
        f"the end, scores it on the whole validation split and tries at least {', '.join(map(str, LR_RULE_GRID))} "
        "and one "
        "step beyond the best on each side. Rows whose rate was not searched at their budget are marked *rate "
        "borrowed/not searched at this budget*; a content share that rests on such a control gets *no verdict "
        "(control's "
        "rate not searched at this budget)*. The searches recorded so far were pruned (ASHA): rows whose rate comes "
        "from one at their own budget say *pruned search*.", ""]
    for name, corpus in corpora.items():
        a = analyses[name]
        rows, arms = a["rows"], corpus["arms"]
        full = f"text-{max(TEXT_TOKENS)}"
        sizes = {(r["train_windows"], r["val_windows"]) for rs in arms.values() for r in rs if "train_windows" in r}
        size = "" if not sizes else " Training / validation windows per run: " + ", ".join(f"{t} / {v}" for t, v in sorted(sizes)) + "."
        lines += [f"## {name}", "",
                  f"{a['windows']} test windows ({a['windows'] * a['tokens_per_window']:,.0f} scored tokens).{size}", ""]
        if corpus["lr"]:
            copied = sorted({s["from"] for s in corpus["lr"].values() if s.get("from")})
            lines += [("Learning rates taken from another series' searches (" + ", ".join(f"`{c}`" for c in copied) + "): "
                       if copied else "Learning rates, ") +
                      "each the best of an `embinject.tune` search (Optuna TPE + ASHA, one epoch, "
                      "validation split, training seed 0). Each trial shows its best validation perplexity and the steps "
                      "it trained (fewer than the epoch's where ASHA stopped it). A trial ASHA stopped is scored by "
                      "its "
                      "best evaluation on the evaluation subset; a trial that ran to the end, by its kept adapter on "
                      "all "
                      "validation windows: the two are scores on different validation sets, so a rate chosen over a "
                      "stopped trial was not compared like for like. " + same_rates(corpus["lr"]) +
                      "Where the chosen rate was the largest (smallest) tried, one more "
                      "full-epoch trial at twice (half) the rate checks whether the optimum was bracketed. None of "
                      "these "
                      "searches meets the learning-rate rule (each was pruned, at one budget: the column *searched "
                      "at*):", "",
                      "| method | searched at | searched (lr: best validation perplexity, steps, validation windows) | "
                      "chosen lr | bracket check |", "|---|---|---|---|---|"]
            for m, s in sorted(corpus["lr"].items()):
                stopped = pruned_steps(s)
                tried = ", ".join(f"{x['lr']:.2g}: {x['val_perplexity']:.2f} ({x['steps']}, "
                                  f"{'subset: stopped' if x['steps'] in stopped else 'all'})"
                                  for x in sorted(s["trials"], key=lambda x: x["lr"]))
                edge = lr_edge(s)
                # a search keeps its precision from the field's start; one that differs from the arms' says so
                other = f" (trials in {s['dtype']})" if s.get("dtype", precision) != precision else ""
                lines.append(f"| {m} | {budget_text(search_budget(s))} | {tried}{other} | "
                             f"{s['lr']:.3g}{f' (the {edge} tried)' if edge else ''} | "
                             f"{bracket_verdict(s) if edge else unbracketed(s, stopped)} |")
            lines.append("")
        if corpus.get("lr_at_budget"):
            lines += at_budget_table(corpus["lr_at_budget"])
        lines += lr_rule_table(a["rows"])
        if corpus.get("lr_check"):
            lines += lr_check_table(corpus["lr_check"], arms)
        lines += ["| Arm | LM reads | Seeds | Test perplexity [95% CI] | Δ NLL vs frozen (nats/token) | Share of text gain | "
                  "Val perplexity | Steps (epochs) | Still improving at stop | Peak RSS (MB) | Trainable params |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        order = ["baseline", *[f"text-{m}" for m in TEXT_TOKENS], *[x for x in ARMS if x in rows]]
        for arm in order:
            if arm not in rows:
                continue
            r, recs = rows[arm], arms[arm]
            if arm in ARMS:
                label = ARMS[arm][3] + (f" ({SHARED_MLP})" if shared_chunk_mlp(recs) else "")
                reads = f"{recs[0]['config']['adapter']['inject_tokens' if ARMS[arm][0] == 'injection' else 'prefix_len']} vectors"
                val = f"{np.mean([x['val_perplexity'] for x in recs]):.2f}"
                steps = f"{np.median([x['steps'] for x in recs]):.0f} ({np.median([x['epochs_run'] for x in recs]):.1f})"
                improving = f"{sum(x['best_step'] == x['steps'] for x in recs)} of {len(recs)}"  # best subset evaluation was the last
                params = f"{recs[0]['trainable_params']:,}"
                seeds = f"{len(recs)}"
            else:
                m = recs[0]["text_tokens"]
                label = "Frozen LM (baseline)" if m == 0 else f"Frozen LM reading the last {m} preceding tokens"
                reads, val, steps, improving, params, seeds = (f"{m} tokens" if m else "-"), "-", "-", "-", "0", "-"
            rss = f"{max(x['peak_rss_mb'] for x in recs):,.0f}"
            delta = "-" if arm == "baseline" else ci(r["vs_baseline"], 3, sign=True)
            share = "-" if arm in ("baseline", full) else ci(r["share_of_text_gain"], 1, 100) + "%"
            lines.append(f"| {label} | {reads} | {seeds} | {ci(r['perplexity'], 2)} | {delta} | {share} | {val} | {steps} | "
                         f"{improving} | {rss} | {params} |")
        lines += ["", "Val perplexity: the kept adapter on every validation window (mean over seeds). Still improving at stop: runs "
                  "whose best evaluation (on the fixed validation subset) was their last, so more training might still help. "
                  "Peak RSS is each arm's own process (the largest over its seeds); the evaluation-only rows share one process.", ""]
        text = {m: rows[f"text-{m}"]["nll"][0] for m in TEXT_TOKENS if f"text-{m}" in rows}
        ks = [k for k in (1, 2, 4, 8, 16) if f"inject-{k}" in rows]
        if ks:
            def tokens(arm: str) -> str:  # the preceding-text tokens the LM must read to match `arm`
                if arm not in rows:
                    return "-"
                nll, lo, hi = rows[arm]["nll"]
                if math.isnan(lo):
                    return equivalent_text_tokens(nll, text)
                return f"{equivalent_text_tokens(nll, text)} [{equivalent_text_tokens(hi, text)}, {equivalent_text_tokens(lo, text)}]"

            lines += ["### (a) The compression curve", "",
                      "| k | Injection, k vectors: share of text gain | Frozen LM reading the last k tokens: share | "
                      "Preceding-text tokens the LM must read to match injection [95% CI] | ... its constant-input control | "
                      "... its shuffled control |", "|---|---|---|---|---|---|"]
            for k in ks:
                r = rows[f"inject-{k}"]
                lines.append(f"| {k} | {ci(r['share_of_text_gain'], 1, 100)}% | {ci(rows[f'text-{k}']['share_of_text_gain'], 1, 100)}% | "
                             f"{tokens(f'inject-{k}')} | {tokens(f'constant-{k}')} | {tokens(f'shuffled-{k}')} |")
            lines += ["", "The token counts interpolate injection's test NLL (and its interval's ends) on the frozen LM's "
                      "curve of NLL against preceding tokens read (log-linear between the lengths measured); the curve "
                      "itself is taken at its point estimates.", ""]
        if a["content"]:
            lines += ["### (b) What is specific to the embedding's content", "",
                      "Injection minus the better of its controls (same adapter, same parameter count, no matching information); "
                      "negative nats mean injection is better.", "",
                      "| k | Controls | Δ NLL, injection - better control (nats/token) | Share of text gain specific to content | Verdict |",
                      "|---|---|---|---|---|"]
            for k, c in a["content"].items():
                verdict = content_verdict(c)
                if c["controls"] == [f"shuffled-{k}"] and "no verdict" not in verdict:
                    verdict += " (provisional: shuffled control only)"
                lines.append(f"| {k} | {', '.join(c['controls'])} | {seeds_ci(c['nats'], 4, sign=True)} | "
                             f"{seeds_ci(c['share_of_text_gain'], 1, 100, unit='%')} | {verdict} |")
            lines.append("")
            alone = [str(k) for k, c in a["content"].items() if c["controls"] == [f"shuffled-{k}"]]
            gaps = list(a["shuffled_minus_constant"].items())
            if alone:
                gap = "; ".join(f"at k = {k} the shuffled control is {ci(g, 4, sign=True)} nats/token against the constant-input "
                                "control" for k, g in gaps)
                lines += [f"Only the shuffled control has been run at k = {', '.join(alone)}. " + (f"Where both ran, {gap}: "
                          "shuffled embeddings are noise the adapter must learn to ignore, so a control that is weaker than the "
                          "constant input can credit content with a gain the constant input would also get. " if gaps else "")
                          + "The verdicts at those k are provisional until the constant-input control runs there.", ""]
        if a["window"]:
            w = a["window"]
            change = w["ppl_change_vs_static"]
            size = (" by at least as much as the seed's -14.6%" if change[2] <= -0.146 else
                    ", but by less than the seed's -14.6%" if change[1] > -0.146 else "")
            verdict = claim(change, "reproduced in direction: injection that reads the scored window beats the static prefix" + size
                            + (" (the seed's figure is one run of a larger model on another corpus, so its size is not "
                               "expected to carry over; the direction is what is tested)" if size else ""),
                            "not reproduced: the static prefix is better")
            lines += ["### (c) The seed report's `window` mode", "",
                      "The seed report measured injection with the encoder reading the scored window itself at -14.6% "
                      "validation perplexity against a 3-vector static prefix (14.38 against 16.83; SmolLM2-360M, "
                      "FineWeb-Edu). Here, on the same test windows and tokens as every arm above:", "",
                      "| Comparison | Estimate [95% CI] |", "|---|---|",
                      f"| test perplexity, `window` injection (4 vectors) vs static prefix (4 vectors) | "
                      f"{ci(change, 1, 100, sign=True)}% |",
                      f"| Δ NLL, the same (nats/token) | {ci(w['nats_vs_static'], 4, sign=True)} |"]
            if "nats_vs_shuffled" in w:
                lines.append(f"| Δ NLL, `window` injection - its shuffled control | {ci(w['nats_vs_shuffled'], 4, sign=True)} |")
            if "nats_vs_constant" in w:
                lines.append(f"| Δ NLL, `window` injection - constant-input control | {ci(w['nats_vs_constant'], 4, sign=True)} |")
            if "nats_vs_previous" in w:
                lines.append(f"| Δ NLL, `window` injection - `previous` injection | {ci(w['nats_vs_previous'], 4, sign=True)} |")
            lines += ["", f"Verdict: {verdict}. In `window` mode the encoder's embedding is computed from the very tokens "
                      "the LM is then scored on, so whatever the vectors carry beyond the controls is partly the "
                      "answer; a gain there is a leak, not context, and cannot be had when generating. (The `window` arm's "
                      "validation perplexity is not comparable with the other arms': its validation windows include each "
                      "document's first window, which the other arms skip for lack of preceding text. Its test windows "
                      "are the same.)", ""]
        if a["context"]:
            lines += context_table(a["context"], arms)
        if any(design_of(arm) for arm in a["designs"]):
            lines += designs_table(a["designs"], arms)
        if a["text_scaling"]:
            lines += text_scaling_table(a["text_scaling"])
        if a["pairs"]:
            lines += ["### Other paired differences", "", "| Difference (test NLL, nats/token) | Estimate [95% CI] | Verdict |",
                      "|---|---|---|"]
            for pair, x in a["pairs"].items():
                unsearched = [arm for arm in pair.split(" - ")
                              if not rate_searched(rows.get(arm, {}).get("lr_status", NO_SEARCH))]
                caveat = f" (rate borrowed/not searched at this budget: {', '.join(unsearched)})" if unsearched else ""
                lines.append(f"| {pair} | {seeds_ci(x, 4, sign=True)} | {pair_verdict(pair, x)}{caveat} |")
            lines.append("")
        if series and name in series["corpora"]:
            lines += series_table(name, series["path"], corpus, a, series["corpora"][name], series["analyses"][name])
        diverged = corpus.get("diverged", [])
        ended = {arm: {r["seed"] for r in arms.get(arm, []) + [d for d in diverged if d["arm"] == arm]} for arm in ARMS}
        missing = [f"{arm} (seeds {', '.join(str(s) for s in SEEDS if s not in ended[arm])})"
                   for arm in ARMS if 0 < len(ended[arm]) and not set(SEEDS) <= ended[arm]]
        # a curve not started is named by its set (8 arms each); a started one lists the arms it still lacks
        untouched = [d for d in DESIGNS if not any(a in arms for a in CURVE_ARMS[d] if design_of(a) == d)]  # not shared controls
        absent = [arm for arm in ARMS if not ended[arm] and not (design_of(arm) in untouched and arm in CURVE_ARMS[design_of(arm)])]
        if one_named_set:
            untouched, absent = [], []
        if diverged:
            lines += [f"Diverged on {name} (recorded, not retried: the same seed at the same rate diverges again; the arm's "
                      "rows use its other seeds): " + "; ".join(
                          f"{d['arm']} seed {d['seed']} at lr {d['lr']:.3g} ({d['what']} {d['value']:.4g} at step {d['step']})"
                          for d in diverged) + ".", ""]
        if missing:
            lines += [f"Not finished on {name}: " + "; ".join(missing) + ". The study continues where it stopped when run again.", ""]
        if absent:
            lines += [f"Arms not run on {name}: {', '.join(absent)} (`--arms` names the arms to run).", ""]
        if untouched:
            lines += [f"Compression curves not started on {name} (k = {', '.join(map(str, CURVE_K))}, each with its "
                      f"constant control): {', '.join(f'`{d}-curve`' for d in untouched)}.", ""]
    lines += ["![compression curve](compression.png)", ""]
    return "\n".join(lines)


def shared_chunk_mlp(records: list[dict]) -> bool:
    """Chunk-pooled runs recorded before each chunk went through its position's own rows of the MLP's last layer (they
    lack `chunk_rows`): one MLP shared by the k chunks, a design the code no longer trains."""
    return any(r["config"]["adapter"].get("pooling") == "chunks" and "chunk_rows" not in r for r in records)


SHARED_MLP = "one MLP shared by the chunks"


def pooled_beside(arm: str, k: int) -> str:
    """The pooled MiniLM arm a design's row is compared with: the same k, trained the same way (an arm trained longer
    than the pooled vector ever was has none); the pooled vector trained longer is compared with itself on one epoch."""
    if arm in REPEAT_OF and REPEAT_OF[arm] != f"inject-{k}":
        return f"inject-{k}-{arm.rsplit('-', 1)[1]}"
    return f"inject-{k}"


def designs_table(designs: dict, arms: dict) -> list[str]:
    """(f): the designs against one another, their controls and the pooled MiniLM vector."""
    lines = ["### (f) Designs: what makes the vectors carry the text", "",
             "Each design's share of the text gain, and its *content share*: its share minus that of its constant-input "
             "control (the same architecture, fed the training split's mean input: `adapter.ablation: constant`), paired by "
             "seed and window. A design and its control each have their own learning-rate search (`<design>` and "
             "`<design>-constant` in the table of learning rates above); a control whose search is not in that table "
             "trained at its design's rate. Targets: a share of at least 70% at 8 vectors, a content share of at least 25 "
             "points.", "",
             "The static prefix at the same k reads nothing: what the vectors' capacity alone gives. A shuffled control "
             "(another window's input) is shown where it ran. A design's rate, and each control's, is searched at k = "
             f"{SCREEN_K} and used at every k.", ""]
    if any(a in designs for a in MORE_TRAINING_ARMS[f"w{MORE_WINDOWS}"]):
        lines += [f"Rows *..., {MORE_WINDOWS:,} training windows* are a design and its constant control trained on "
                  f"{MORE_WINDOWS // 1024}x the training windows (`--arms more-windows`: the same validation and test windows, "
                  "the rates of their searches on 1,024, patience 5): their content share says whether more data lets the "
                  "vectors carry more of the text. The pooled vector's Δ is against itself on 1,024 windows (what the extra "
                  f"data changed); another design's against the pooled vector on the same {MORE_WINDOWS:,}.", ""]
    if any(a in designs for a in MORE_TRAINING_ARMS[f"e{MORE_EPOCHS}"]):
        lines += [f"Rows *..., {MORE_EPOCHS} epochs over 1,024 windows* (`--arms more-epochs`) may take as many steps as one "
                  f"epoch over {MORE_WINDOWS:,} windows, on none of their extra text (the same rates, patience 5, the best "
                  f"adapter kept; early stopping may end them sooner): whether the {MORE_WINDOWS:,}-window rows gained from the "
                  "data or from the steps. The paired differences below set them against both.", ""]
    if any(a in designs for a in MORE_TRAINING_ARMS[f"w{OVERLAPPING}s{STRIDE}"]):
        lines += [f"Rows *..., {OVERLAPPING:,} overlapping training windows* (`--arms overlapping-windows`) are trained on "
                  f"windows cut every {STRIDE} tokens (`data.train_stride: {STRIDE}`), each with the text before it: "
                  f"about twice the windows the sample's training split holds side by side, each token in two of them "
                  "(the same validation and test windows and rates as on 4,096; their epoch of 1,024 steps early-stops on "
                  "the whole validation split, evaluated every 64 steps, patience 5).", ""]
    if any(a in designs for a in MORE_TRAINING_ARMS[f"w{MORE_TEXT}t"]):
        lines += [f"Rows *..., {MORE_TEXT:,} training windows with other articles' text* (`--arms more-text`) train on the "
                  f"study's training articles and the shared `{MORE_TEXT_CORPUS}` corpus's articles together (other Wikipedia "
                  "articles, none of which repeats a validation or test article), side by side: distinct text where the "
                  "overlapping windows repeat each token. The same validation and test windows, rates and early stopping as "
                  "the overlapping windows.", ""]
    if any(shared_chunk_mlp(arms.get(a, [])) for a in designs):
        lines += [f"Rows marked *{SHARED_MLP}* were trained before chunk pooling sent each chunk through its position's own "
                  "rows of the MLP's last layer: their k vectors shared one bias, so they could not learn to differ where "
                  "the chunks are alike, not even as a static prefix does. They are not that design as it is trained now, "
                  "and they take no more seeds.", ""]
    lines += ["Every interval below is a 95% Student's t interval over the seeds it names (paired by seed and test "
              "window); "
              "*± windows* is the standard deviation that resampling the test windows adds to it (`window_sd`). "
              "*Rate*: "
              "whether the arm's rate, and its constant control's, was searched at the budget the row is reported "
              "at.", "",
              "| Design | k | Seeds (constant, shuffled) | Rate (arm; control) | Share of text gain | ± windows | "
              "Content share | "
              "± windows | Verdict on content | Content share vs shuffled | Δ NLL vs pooled MiniLM, same k | Verdict "
              "|",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, r in designs.items():
        share = seeds_ci(r['share_of_text_gain'], 1, 100, unit="%")
        if r["design"] == STATIC:
            lines.append(f"| static prefix (`{arm}`) | {r['k']} | {r['seeds']} | {rate_mark(r)} | {share} | "
                         f"{100 * r['share_window_sd']:.1f} | - | - | - | - | - | - |")
            continue
        content = r.get("content_share")
        content_cell = "control not run" if content is None else seeds_ci(content, 1, 100, sign=True, unit=" pts")
        content_sd = "-" if content is None else f"{100 * r['content_window_sd']:.1f}"
        content_verdict_ = "-" if content is None else r["content_verdict"]
        shuffled = r.get("shuffled_content_share")
        shuffled_cell = "-" if shuffled is None else \
            f"{seeds_ci(shuffled, 1, 100, sign=True, unit=' pts')}: {r['shuffled_content_verdict']}"
        vs = r.get("vs_pooled_nats")
        vs_cell = "-" if vs is None else seeds_ci(vs, 4, sign=True)
        vs_verdict = "-" if vs is None else precision_verdict(
            claim(vs, "better than pooled MiniLM", "worse than pooled MiniLM"), arms, [arm, pooled_beside(arm, r["k"])])
        if content is not None:
            content_verdict_ = precision_verdict(content_verdict_, arms, [arm, r["control"]])
        design = f"{r['design']}, {SHARED_MLP}" if shared_chunk_mlp(arms.get(arm, [])) else r["design"]
        control_mark = "-" if "control_lr_status" not in r else \
            rate_mark({"lr_status": r["control_lr_status"], "lr_settled": r.get("control_lr_settled", True)})
        lines.append(f"| {design} (`{arm}`) | {r['k']} | {r['seeds']} ({r.get('control_seeds', 0)}, "
                     f"{r.get('shuffled_control_seeds', 0)}) | {rate_mark(r)}; {control_mark} | {share} | "
                     f"{100 * r['share_window_sd']:.1f} | {content_cell} | {content_sd} | "
                     f"{content_verdict_} | {shuffled_cell} | {vs_cell} | {vs_verdict} |")
    head = headline(designs)
    lines += [""] + headline_lines(head) + [""]
    return lines


def headline_lines(head: dict | None) -> list[str]:
    """The headline block in words: which row, how it was selected, its intervals of both kinds."""
    if head is None:
        return [f"Best design at k <= {SCREEN_K}: none has run."]
    said = (f"Headline (results.json's `headline`): {head['design']} (`{head['arm']}`), selected as the "
            f"{head['selection']}; a selected maximum is biased upward. Share of the text gain "
            f"{seeds_ci(head['share_of_text_gain'], 1, 100, unit='%')} (95% t over seeds)")
    two = head.get("two_level")
    if two:
        said += f", {ci(two['share_of_text_gain'], 1, 100)}% with the test windows resampled too (two-level)"
    if head.get("content_share") is not None:
        said += (f"; content share {ci(head['content_share'], 1, 100, sign=True)} points ({head['seeds']} seeds, t)"
                 + (f", {ci(two['content_share'], 1, 100, sign=True)} two-level"
                    if two and two.get("content_share") else "")
                 + f": {head.get('content_verdict', '-')}")
    said += "."
    if head.get("runner_up"):
        ru = head["runner_up"]
        said += f" The next candidate by mean share: `{ru['arm']}`, {ci(ru['share_of_text_gain'], 1, 100)}%."
    if head.get("lr_status") and not rate_searched(head["lr_status"]):
        said += (f" Its rate, {head['lr']:.3g}, is borrowed/not searched at this budget: it was searched for "
                 f"`{head['lr_budget']['arm']}` at {budget_text(head['lr_budget'])}, and the row is reported at "
                 f"{budget_text(head['budget'])}; its control's rate: {head.get('control_lr_status', '-')}.")
    return [said, "", "Designs are screened on one epoch before the best is trained longer; with fewer than "
            f"{MIN_SEEDS} seeds no row above has a verdict."]


def seeds_ci(x, digits: int = 3, scale: float = 1.0, sign: bool = False, unit: str = "") -> str:
    """An interval (and its unit) with the number of seeds it rests on, where it rests on seeds."""
    n = getattr(x, "seeds", 0)
    return ci(x, digits, scale, sign) + unit + (f" ({n} seeds)" if n else "")


def rate_mark(r: dict) -> str:
    """A row's rate status in a few words (`lr_rule_table` has the budgets)."""
    status = r.get("lr_status")
    if status is None:
        return "-"
    if rate_searched(status):
        unsettled = "" if r.get("lr_settled", True) else " (chosen over a neighbouring rate stopped early)"
        return ("pruned search at this budget" if status != SEARCHED else "searched at this budget") + unsettled
    return {BORROWED: "borrowed", NO_SEARCH: "no search of its own"}.get(status, "not searched at this budget")


def precision_verdict(verdict: str, arms: dict, compared: list[str]) -> str:
    """A verdict between arms trained at different precisions compares the precisions as much as the arms: none."""
    note = precision_note(arms, compared)
    if not note or verdict.startswith("no verdict") or verdict == "-":
        return verdict + note if note and verdict != "-" else verdict
    return f"no verdict (trained at different precisions: {note[len('; precision differs ('):-1]})"


def needs_cell(needs: dict | None, rate, verdict: str = "") -> str:
    """What a target needs at a step's rate: a two-point extrapolation (the step's two ends), with no interval."""
    if verdict.startswith("no verdict (control"):
        return "no rate to extrapolate (its control's rate was not searched at this budget)"
    if needs is None:
        return "one seed: no rate to extrapolate" if math.isnan(rate[1]) else "no rate to extrapolate (its interval is not above 0)"
    if needs["doublings"][0] == 0:
        return "reached"
    d, w = needs["doublings"][0], needs["windows"][0]
    count = f"over {MAX_WINDOWS:,.0f}" if w is None else f"{w:,.0f}"
    times = f"{d:.1f}" if d < 1000 else f"{d:.2g}"
    return f"{times} doublings, about {count} windows (two-point extrapolation, no interval)"


def text_scaling_table(steps: list[dict]) -> list[str]:
    """(g): what more training windows did for the best design, per doubling of the windows, and what the targets would
    take at that rate (a two-point extrapolation)."""
    lines = ["### (g) Training windows and the targets", "",
             f"The best design ({_BEST}) and its constant control, each step from fewer training windows to more (rows of (f)), "
             "paired by seed and window: the change of the share of the text gain, and of the content share, per doubling of "
             "the training windows (95% t intervals over the seeds each names). Where a change's interval lies above 0 "
             "and has a verdict, the last columns extrapolate its mean: the doublings beyond the step's windows that "
             f"would take the arm to {TARGET_SHARE:.0%} of the text gain and to a content share of "
             f"{100 * TARGET_CONTENT:.0f} points if each doubling kept adding as much. These are two-point "
             "extrapolations (a straight line through "
             "the step's two ends, no model of how the gain per doubling shrinks), so they carry no interval, and the "
             "steps disagree with one another. "
             "The steps change more than the text: their budgets (early stopping, its validation windows, patience) "
             "differ (the set-up lists them), and none of their rates was searched at the larger budget. A step to "
             "overlapping windows doubles the windows, not the distinct text.", "",
             "| Step (training windows) | What grew | Share of text gain, change per doubling | Verdict | "
             f"Content share, change per doubling | Verdict | {TARGET_SHARE:.0%} of the text gain at that rate | "
             f"A content share of {100 * TARGET_CONTENT:.0f} points at that rate |",
             "|---|---|---|---|---|---|---|---|"]
    for st in steps:
        share, content = st["share_per_doubling"], st.get("content_per_doubling")
        grew = ("windows overlapping (each token in " f"{st['overlap']:.0f} windows): not the distinct text"
                if st.get("overlap", 1) > 1 else "distinct windows")
        content_cells = ("control not run", "-", "-") if content is None else (
            seeds_ci(content, 1, 100, sign=True, unit=" pts"), st.get("content_verdict", "-"),
            needs_cell(st["content_needs"], content, st.get("content_verdict", "")))
        share_verdict = claim(share, "less with more windows", "more with more windows")
        if not all(rate_searched(x) for x in st.get("lr_status", [])):
            share_verdict += " (rates not searched at these budgets)"
        lines.append(f"| `{st['from']}` to `{st['to']}` ({st['windows'][0]:,} to {st['windows'][1]:,}) | {grew} | "
                     f"{seeds_ci(share, 1, 100, sign=True, unit=' pts')} | {share_verdict} | "
                     f"{content_cells[0]} | {content_cells[1]} | {needs_cell(st['share_needs'], share)} | {content_cells[2]} |")
    return lines + [""]


def precision_note(arms: dict, compared: list[str]) -> str:
    """Where arms that a row compares trained at different precisions (a series continued on a machine without fast
    bf16), what the row's verdicts carry besides the designs."""
    dtypes = sorted({r.get("dtype", "?") for a in compared for r in arms.get(a, [])})
    return f"; precision differs ({' / '.join(dtypes)})" if len(dtypes) > 1 else ""


def lr_check_table(checks: list[dict], arms: dict) -> list[str]:
    """`--lr-check`: seed 0 of an arm at half and twice its rate, against seed 0 at the rate the arms trained with."""
    lines = ["Learning-rate check at this series' budget (`--lr-check`; seed 0, the same budget and early stopping):", "",
             "| arm | lr | validation perplexity | steps | against seed 0 at the arms' rate |", "|---|---|---|---|---|"]
    better = []
    for c in sorted(checks, key=lambda c: (c["arm"], c["lr"])):
        base = next((r for r in arms.get(c["arm"], []) if r["seed"] == 0), None)
        if base is None:
            continue
        change = c["val_perplexity"] / base["val_perplexity"] - 1
        lines.append(f"| {c['arm']} | {c['lr']:.2g} | {c['val_perplexity']:.2f} | {c['steps']} | "
                     f"{100 * change:+.1f}% (against {base['val_perplexity']:.2f} at {base['lr']:.3g}) |")
        if change < 0:
            better.append(f"{c['arm']} at {c['lr']:.2g} ({100 * change:+.1f}%)")
    lines.append("")
    if better:
        lines += ["At this budget a rate the search did not choose trains to a lower validation perplexity (one seed): "
                  + "; ".join(better) + ". Every arm below was trained at its method's searched rate, so the comparisons "
                  "hold at those rates, not at each method's best for this budget.", ""]
    else:
        lines += ["Neither half nor twice the searched rate does better at this budget (one seed).", ""]
    return lines


def series_table(name: str, path: str, main: dict, main_a: dict, other: dict, other_a: dict) -> list[str]:
    """The same arms trained for the main study's budget and for another series' (say, until early stopping)."""
    shared = [a for a in ARMS if a in main_a["rows"] and a in other_a["rows"]]
    if not shared:
        return []
    runs_main, runs_other = trained_runs(main), trained_runs(other)
    t_main, t_other = runs_main[0]["config"]["train"], runs_other[0]["config"]["train"]
    lines = [f"### (e) Trained longer: the series in `{path}`", "",
             f"The same arms, seeds and test windows, trained for at most {t_other['max_epochs']} epoch(s) with early "
             f"stopping (patience {t_other['patience']} evaluations) instead of at most {t_main['max_epochs']} "
             f"(its RESULTS.md has every table; learning rates as that file says). Trained on {values_of(runs_other, 'device', 'a device not recorded')} "
             f"(`{values_of(runs_other, 'dtype', '?')}` autocast) against {values_of(runs_main, 'device', 'a device not recorded')} "
             f"(`{values_of(runs_main, 'dtype', '?')}`) here; test scoring is float32 in both. "
             "Δ NLL pairs the two series by test window.", "",
             "| Arm | Share of text gain, this study | Share, trained longer | Median steps (epochs), trained longer | "
             "Δ test NLL, longer - this study | Verdict |", "|---|---|---|---|---|---|"]
    for arm in shared:
        diff = seed_interval(lambda m: m["longer"] - m["this"], {"this": per_window(main["arms"][arm]),
                                                             "longer": per_window(other["arms"][arm])})
        verdict = claim(diff, "longer training better", "longer training worse")
        if not rate_searched(other_a["rows"][arm].get("lr_status", NO_SEARCH)):
            verdict += " (trained longer at a rate not searched at that budget)"
        recs = other["arms"][arm]
        steps = f"{np.median([x['steps'] for x in recs]):.0f} ({np.median([x['epochs_run'] for x in recs]):.1f})"
        lines.append(f"| {ARMS[arm][3]} | {ci(main_a['rows'][arm]['share_of_text_gain'], 1, 100)}% | "
                     f"{ci(other_a['rows'][arm]['share_of_text_gain'], 1, 100)}% | {steps} | {seeds_ci(diff, 4, sign=True)} | {verdict} |")
    lines.append("")
    ks = [k for k in main_a["content"] if k in other_a["content"]]
    pairs = [p for p in main_a["pairs"] if p in other_a["pairs"]]
    if ks or pairs:
        lines += ["| Comparison | This study [95% CI] | Trained longer [95% CI] |", "|---|---|---|"]
        for k in ks:
            lines.append(f"| content-specific share of text gain, k = {k} | {content_cell(main_a['content'][k])} | "
                         f"{content_cell(other_a['content'][k])} |")
        for pair in pairs:
            lines.append(f"| Δ NLL, {pair} | {pair_cell(pair, main_a['pairs'][pair])} | {pair_cell(pair, other_a['pairs'][pair])} |")
        lines.append("")
    return lines


def content_verdict(c: dict) -> str:
    return content_claim(c["nats"], c.get("control_lr_status", []))


def content_cell(c: dict) -> str:
    return f"{seeds_ci(c['share_of_text_gain'], 1, 100, unit='%')}: {content_verdict(c)}"


def pair_verdict(pair: str, x: tuple[float, float, float]) -> str:
    first_arm, second_arm = pair.split(" - ")
    return claim(x, f"{first_arm} better", f"{second_arm} better")


def pair_cell(pair: str, x: tuple[float, float, float]) -> str:
    return f"{ci(x, 4, sign=True)} ({pair_verdict(pair, x)})"


def context_table(c: dict, arms: dict) -> list[str]:
    lines = ["### (d) Secondary: `context` mode", "",
             f"The quickstart's mode: the encoder reads the window's first {CONTEXT_READ} tokens, which the LM reads too and "
             "is not scored "
             f"on, so these arms are scored on the window's other {c['tokens_per_window']:.0f} tokens (on average) and compared "
             "only with each other and with the frozen LM scored on the same tokens. The vectors can add trainable capacity, "
             "but no text the LM does not already read. Learning rate: the injection search's.", "",
             "| Arm | Seeds | Test perplexity [95% CI] | Δ NLL vs frozen, same tokens (nats/token) | Val perplexity | Still improving at stop |",
             "|---|---|---|---|---|---|"]
    for name, r in c["rows"].items():
        recs = arms[name]
        if name == "baseline-context":
            lines.append(f"| Frozen LM (baseline), scored on the same tokens | - | {ci(r['perplexity'], 2)} | - | - | - |")
            continue
        improving = f"{sum(x['best_step'] == x['steps'] for x in recs)} of {len(recs)}"
        lines.append(f"| {ARMS[name][3]} | {len(recs)} | {ci(r['perplexity'], 2)} | {ci(r['vs_baseline'], 3, sign=True)} | "
                     f"{np.mean([x['val_perplexity'] for x in recs]):.2f} | {improving} |")
    lines.append("")
    if "content_nats" in c:
        x = c["content_nats"]
        verdict = claim(x, "the embedding's content helps beyond a constant input", "the constant input is better")
        lines += [f"Injection minus its constant-input control, same tokens: {ci(x, 4, sign=True)} nats/token; verdict: {verdict}.", ""]
    return lines


def plot(corpora: dict, analyses: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(corpora), figsize=(6 * len(corpora), 4.2), squeeze=False)
    for ax, (name, a) in zip(axes[0], analyses.items()):
        rows = a["rows"]

        def curve(prefix, ks, label, min_points=1, **kw):
            ks = [k for k in ks if f"{prefix}{k}" in rows]
            if len(ks) >= min_points:
                p = [rows[f"{prefix}{k}"]["perplexity"] for k in ks]
                ax.errorbar(ks, [x[0] for x in p], yerr=[[x[0] - x[1] for x in p], [x[2] - x[0] for x in p]],
                            label=label, capsize=3, marker="o", **kw)

        curve("text-", TEXT_TOKENS, "frozen LM reading the last k preceding tokens")
        curve("inject-", (1, 2, 4, 8, 16), "injection, k vectors (MiniLM)")
        curve("shuffled-", (1, 2, 4, 8, 16), "control: shuffled embeddings", linestyle="--")
        curve("static-", (1, 2, 4, 8, 16), "static prefix, k vectors", linestyle="-.", min_points=2)
        for design in DESIGNS:  # a design's curve once it has run at more than one k
            curve(f"{design}-", (1, 2, 4, 8, 16), f"injection, k vectors: {design}", min_points=2)
        for arm, color, style, label in (("baseline", "k", ":", "frozen LM alone"),
                                         ("static-4", "C3", "-.", "static prefix, 4 vectors"),
                                         ("constant-4", "C4", ":", "control: constant input, 4 vectors")):
            if arm in rows:
                ax.axhline(rows[arm]["perplexity"][0], color=color, linestyle=style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("vectors or tokens the LM reads before the window")
        ax.set_ylabel("test perplexity (95% CI)")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def without_nan(value):
    """JSON's null for an interval's missing bounds (one seed): NaN is not JSON, and strict readers refuse it."""
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def write_report(out: Path) -> Path:
    corpora = load(out)
    if not corpora:
        raise ConfigError(f"--out: no run records under {out / 'runs'}; run the study first")
    analyses = {name: analyse(c) for name, c in corpora.items()}
    series = None
    longer = out / LONGER_SERIES
    if (longer / "runs").is_dir() and (other := load(longer)):
        series = {"path": LONGER_SERIES, "corpora": other, "analyses": {name: analyse(c) for name, c in other.items()}}
    plot(corpora, analyses, out / "compression.png")
    atomic_write_text(out / "results.json", json.dumps(without_nan(analyses), indent=1, allow_nan=False))
    return atomic_write_text(out / "RESULTS.md", render(corpora, analyses, series))
