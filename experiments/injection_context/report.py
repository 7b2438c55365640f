"""RESULTS.md, results.json and the compression plot of the injection study, from its run records."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from embinject.errors import ConfigError
from embinject.fsutil import atomic_write_text
from embinject.config_files import load_config
from embinject.tracking import flatten
from experiments.injection_context.arms import (ARM_SETS, ARMS, CONTEXT_ARMS, CONTEXT_READ, CURVE_ARMS, CURVE_K, DESIGNS, HERE, IGNORED_SETTINGS,
                                               BEST_PAIR, MORE_TRAINING, MORE_TRAINING_ARMS, MORE_EPOCHS, MORE_TEXT, MORE_TEXT_CORPUS, MORE_WINDOWS, OVERLAPPING,
                                               REPEAT_OF, STRIDE, SCREEN_K, SEEDS, TEXT_TOKENS, control_arm, design_of, lr_edge)
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

def load(out: Path) -> dict[str, dict]:
    """corpus -> {"arms": {arm: [records]}, "lr": {method: search record}}"""
    corpora = {}
    for folder in sorted((out / "runs").glob("*/")):
        arms: dict[str, list[dict]] = {}
        for f in sorted(folder.glob("*.json")):
            if f.name.startswith("lr_search_"):
                continue
            r = json.loads(f.read_text())
            arms.setdefault(r["arm"], []).append(r)
        lrs = {json.loads(f.read_text())["method"]: json.loads(f.read_text()) for f in folder.glob("lr_search_*.json")}
        checks = [json.loads(f.read_text()) for f in sorted((out / "lr_check" / folder.name).glob("*.json"))]
        diverged = [json.loads(f.read_text()) for f in sorted((folder / "diverged").glob("*.json"))]
        if "baseline" in arms:
            corpora[folder.name] = {"arms": arms, "lr": lrs, "lr_check": checks, "diverged": diverged}
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


def analyse(corpus: dict) -> dict:
    arms = {a: per_window(rs) for a, rs in corpus["arms"].items()}
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
        }
    content, control_gaps = {}, {}
    for k, controls in CONTROLS.items():
        inj = f"inject-{k}"
        have = [c for c in controls if c in arms]
        if inj in arms and have:
            sub = {a: arms[a] for a in ["baseline", full, inj, *have]}
            better = lambda m: min(m[c] for c in have)  # noqa: E731
            content[k] = {"controls": have,
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
    designs = analyse_designs(arms, gain)
    windows = {a: rs[0]["train_windows"] for a, rs in corpus["arms"].items() if "train_windows" in rs[0]}
    return {"rows": rows, "content": content, "shuffled_minus_constant": control_gaps, "pairs": pairs, "window": window,
            "context": analyse_context(arms), "designs": designs, "headline": headline(designs),
            "text_scaling": analyse_text_scaling(arms, gain, designs, windows),
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


def analyse_designs(arms: dict[str, PerWindow], gain) -> dict:
    """Each design's share of the text gain, its content share (its share minus its constant-input control's, paired),
    and its difference from the pooled MiniLM design at the same k."""
    full = f"text-{max(TEXT_TOKENS)}"
    out = {}
    for design, arm, constant, shuffled in DESIGN_ROWS:
        if arm not in arms:
            continue
        shape = ARMS[arm][1]
        k = shape.get("adapter.inject_tokens", shape.get("adapter.prefix_len"))
        sub = {"baseline": arms["baseline"], full: arms[full], arm: arms[arm]}
        row = {"design": design, "arm": arm, "k": k, "seeds": arms[arm].seeds, "control": constant,
               "share_of_text_gain": seed_interval(lambda m: (m["baseline"] - m[arm]) / gain(m), sub)}
        for control, key in ((constant, ""), (shuffled, "shuffled_")):
            if control in arms:
                both = {**sub, control: arms[control]}
                row[f"{key}control_seeds"] = arms[control].seeds
                row[f"{key}content_share"] = seed_interval(lambda m: (m[control] - m[arm]) / gain(m), both)
                row[f"{key}content_nats"] = seed_interval(lambda m: m[arm] - m[control], both)
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


def analyse_text_scaling(arms: dict[str, PerWindow], gain, designs: dict, windows: dict[str, int]) -> list[dict]:
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
    best = max(candidates, key=lambda r: r["share_of_text_gain"][0])
    content = best.get("content_share")
    return {"design": best["design"], "arm": best["arm"], "k": best["k"], "seeds": best["seeds"],
            "share_of_text_gain": list(best["share_of_text_gain"]),
            "content_share": list(content) if content is not None else None,
            "interval": INTERVAL_METHOD + ("" if content is not None else "; content_share: its constant-input control has not run")}


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
        f"Up to {cfg['data']['train_samples']} training windows per run (each corpus's section gives how many it yields), "
        f"batch {t['batch_size']} (at most {math.ceil(cfg['data']['train_samples'] / t['batch_size'])} steps per epoch), "
        f"at most {t['max_epochs']} epoch(s), evaluation every {t['eval_every']} steps on a fixed subset of at most "
        f"{t['eval_windows']} of the (up to {cfg['data']['val_samples']}) validation windows, early stopping after {t['patience']} evaluations without improvement, the best adapter kept; "
        f"training precision `{precision}` (autocast){others}, test scoring in float32. "
        f"Injection arms read only the k MLP-made vectors (MLP width {cfg['adapter']['mlp_width']}, no static vectors beside them). "
        "Controls: the same injection adapter fed another window's embedding (shuffled) or one constant vector, the "
        "training split's mean embedding, at training, validation and test alike.", "",
        "**Statistics.** 95% intervals are at the seed level: each statistic is computed per training seed (on all test "
        "windows; arms compared are paired by seed and by window), and the interval is Student's t over those seed values "
        "(n - 1 degrees of freedom). Rows that involve no training (the frozen LM, reading text) have a percentile "
        "bootstrap over test windows instead; a trained arm with one seed has no interval. A verdict needs an interval of "
        f"a difference that excludes zero and at least {MIN_SEEDS} seeds; an interval that excludes zero over fewer seeds "
        "is marked *suggestive*. Shares are of the *text gain*: the drop in test NLL "
        "(nats per token) from the frozen LM alone to the frozen LM reading all 64 preceding tokens.", ""]
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
                      "it trained (fewer than the epoch's where ASHA stopped it). " + same_rates(corpus["lr"]) +
                      "Where the chosen rate was the largest (smallest) tried, one more "
                      "full-epoch trial at twice (half) the rate checks whether the optimum was bracketed:", "",
                      "| method | searched (lr: best validation perplexity, steps) | chosen lr | bracket check |",
                      "|---|---|---|---|"]
            for m, s in sorted(corpus["lr"].items()):
                tried = ", ".join(f"{x['lr']:.2g}: {x['val_perplexity']:.2f} ({x['steps']})"
                                  for x in sorted(s["trials"], key=lambda x: x["lr"]))
                edge = lr_edge(s)
                # a search keeps its precision from the field's start; one that differs from the arms' says so
                other = f" (trials in {s['dtype']})" if s.get("dtype", precision) != precision else ""
                lines.append(f"| {m} | {tried}{other} | {s['lr']:.3g}{f' (the {edge} tried)' if edge else ''} | "
                             f"{bracket_verdict(s) if edge else 'not needed'} |")
            lines.append("")
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
                lines.append(f"| {k} | {', '.join(c['controls'])} | {ci(c['nats'], 4, sign=True)} | "
                             f"{ci(c['share_of_text_gain'], 1, 100)}% | {verdict} |")
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
                lines.append(f"| {pair} | {ci(x, 4, sign=True)} | {pair_verdict(pair, x)} |")
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
    lines += ["| Design | k | Seeds (constant, shuffled) | Share of text gain | Content share | Verdict on content | "
              "Content share vs shuffled | Δ NLL vs pooled MiniLM, same k | Verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for arm, r in designs.items():
        if r["design"] == STATIC:
            lines.append(f"| static prefix (`{arm}`) | {r['k']} | {r['seeds']} | {ci(r['share_of_text_gain'], 1, 100)}% | "
                         "- | - | - | - | - |")
            continue
        content = r.get("content_share")
        content_cell = "control not run" if content is None else ci(content, 1, 100, sign=True) + " pts"
        content_verdict_ = "-" if content is None else claim(r["content_nats"], "content helps", "worse than its control")
        shuffled = r.get("shuffled_content_share")
        shuffled_cell = "-" if shuffled is None else ci(shuffled, 1, 100, sign=True) + " pts"
        vs = r.get("vs_pooled_nats")
        vs_cell = "-" if vs is None else ci(vs, 4, sign=True)
        vs_verdict = "-" if vs is None else claim(vs, "better than pooled MiniLM", "worse than pooled MiniLM")
        if vs is not None:
            vs_verdict += precision_note(arms, [arm, pooled_beside(arm, r["k"])])
        if content is not None:
            content_verdict_ += precision_note(arms, [arm, r["control"]])
        design = f"{r['design']}, {SHARED_MLP}" if shared_chunk_mlp(arms.get(arm, [])) else r["design"]
        lines.append(f"| {design} (`{arm}`) | {r['k']} | {r['seeds']} ({r.get('control_seeds', 0)}, "
                     f"{r.get('shuffled_control_seeds', 0)}) | {ci(r['share_of_text_gain'], 1, 100)}% | {content_cell} | "
                     f"{content_verdict_} | {shuffled_cell} | {vs_cell} | {vs_verdict} |")
    head = headline(designs)
    best = "none has run" if head is None else f"{head['design']} (`{head['arm']}`), {head['seeds']} seed(s)"
    lines += ["", f"Best design at k <= {SCREEN_K} by mean share, among the rows with an interval where there are any (results.json's `headline`): {best}. Designs are screened on one epoch before the best is trained to early stopping; "
              "with fewer than 5 seeds no row above has a verdict.", ""]
    return lines


def needs_cell(needs: dict | None, rate) -> str:
    if needs is None:
        return "one seed: no rate to extrapolate" if math.isnan(rate[1]) else "no rate to extrapolate (its interval is not above 0)"
    if needs["doublings"][0] == 0:
        return "reached"
    (d, d_lo, d_hi), (w, w_lo, w_hi) = needs["doublings"], needs["windows"]
    count = lambda n: f"over {MAX_WINDOWS:,.0f}" if n is None else f"{n:,.0f}"  # noqa: E731
    times = lambda m: f"{m:.1f}" if m < 1000 else f"{m:.2g}"  # noqa: E731
    return (f"{times(d)} [{times(d_lo)}, {times(d_hi)}] doublings: "
            f"about {count(w)} [{count(w_lo)}, {count(w_hi)}] windows")


def text_scaling_table(steps: list[dict]) -> list[str]:
    """(g): what more training text did for the best design, per doubling of the windows, and what the targets would
    take at that rate."""
    lines = ["### (g) Training text and the targets", "",
             f"The best design ({_BEST}) and its constant control, each step from fewer training windows to more (rows of (f)), "
             "paired by seed and window: the change of the share of the text gain, and of the content share, per doubling of "
             f"the training windows. Where a change's interval lies above 0, the last columns extrapolate it: the doublings "
             f"beyond the step's windows that would take the arm to {TARGET_SHARE:.0%} of the text gain and to a content share "
             f"of {100 * TARGET_CONTENT:.0f} points if each doubling kept adding as much (the range from the interval's ends; the "
             "arm's own share taken at its mean). That is an extrapolation, not a measurement: where the gain per doubling "
             "shrinks with more text, the targets need more than it says. "
             "The steps change more than the text: 1,024 windows early-stopped on 64 validation windows with patience 3, "
             "4,096 with patience 5, 8,192 on the whole validation split every 64 steps with patience 5.", "",
             "| Step (training windows) | Seeds | Share of text gain, change per doubling | Verdict | "
             f"Content share, change per doubling | Verdict | At that rate, {TARGET_SHARE:.0%} of the text gain needs | "
             f"... a content share of {100 * TARGET_CONTENT:.0f} points needs |", "|---|---|---|---|---|---|---|---|"]
    for st in steps:
        share, content = st["share_per_doubling"], st.get("content_per_doubling")
        content_cells = ("control not run", "-", "-") if content is None else (
            ci(content, 1, 100, sign=True) + " pts", claim(content, "less content with more text", "more content with more text"),
            needs_cell(st["content_needs"], content))
        lines.append(f"| `{st['from']}` to `{st['to']}` ({st['windows'][0]:,} to {st['windows'][1]:,}) | {share.seeds} | "
                     f"{ci(share, 1, 100, sign=True)} pts | {claim(share, 'less with more text', 'more with more text')} | "
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
        recs = other["arms"][arm]
        steps = f"{np.median([x['steps'] for x in recs]):.0f} ({np.median([x['epochs_run'] for x in recs]):.1f})"
        lines.append(f"| {ARMS[arm][3]} | {ci(main_a['rows'][arm]['share_of_text_gain'], 1, 100)}% | "
                     f"{ci(other_a['rows'][arm]['share_of_text_gain'], 1, 100)}% | {steps} | {ci(diff, 4, sign=True)} | {verdict} |")
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
    return claim(c["nats"], "content helps", "worse than a control")


def content_cell(c: dict) -> str:
    return f"{ci(c['share_of_text_gain'], 1, 100)}% ({content_verdict(c)})"


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
