"""The injection study's report: cells, verdicts and the smaller tables, each a few lines of Markdown from the
analysis."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from embinject.config_files import load_config
from embinject.tracking import flatten
from experiments.injection_context.arms import ARM_SETS, ARMS, CONTEXT_READ, HERE, IGNORED_SETTINGS
from experiments.injection_context.arms import (
    BORROWED,
    BUDGET_KEYS,
    NO_SEARCH,
    SEARCHED,
    budget_of,
    extra_corpus,
    rate_searched,
)
from experiments.stats import claim
from experiments.injection_context.intervals import content_claim
from experiments.injection_context.scaling import MAX_WINDOWS
from experiments.injection_context.records import stopped_beaten


def bracket_verdict(search: dict) -> str:
    """What the extra full-epoch trial beyond the edge of the searched rates found."""
    if not search.get("bracket"):
        return "not run: the best may lie beyond the rates tried"
    chosen = min((t for t in search["trials"] if t["lr"] == search["lr"]), key=lambda t: t["val_perplexity"])
    b = search["bracket"][0]
    if b["val_perplexity"] >= chosen["val_perplexity"]:
        return (
            f"{b['lr']:.2g}: {b['val_perplexity']:.2f} ({b['steps']}), worse than the chosen "
            f"{chosen['val_perplexity']:.2f}: the optimum is bracketed"
        )
    return (
        f"{b['lr']:.2g}: {b['val_perplexity']:.2f} ({b['steps']}), "
        f"{100 * (1 - b['val_perplexity'] / chosen['val_perplexity']):.1f}% lower than the chosen "
        f"{chosen['val_perplexity']:.2f} (one seed): the arms were trained at {search['lr']:.3g}, "
        "not at this method's best rate"
    )


def ci(x: tuple[float, float, float], digits: int = 3, scale: float = 1.0, sign: bool = False) -> str:
    p, lo, hi = (v * scale for v in x)
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    if math.isnan(lo):
        return f"{f.format(p)} [one seed: no interval]"
    return f"{f.format(p)} [{f.format(lo)}, {f.format(hi)}]"


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
    return {
        k: had[k]
        for k in sorted(had)
        if k.startswith(("train.", "data."))
        and k not in IGNORED_SETTINGS
        and k != "train.lr"
        and had[k] != default.get(k)
    }


def same_rates(searches: dict) -> str:
    """A sentence where every method's search tried the same rates: a few trials are all Optuna's random start-up
    draws, from the same sampler seed, so the searches were one grid."""
    tried = {tuple(sorted(round(x["lr"], 12) for x in s["trials"])) for s in searches.values()}
    if len(searches) < 2 or len(tried) != 1:
        return ""
    return (
        f"Every method tried the same {len(next(iter(tried)))} rates: with this few trials all are Optuna's random "
        "start-up draws from one sampler seed, so the searches amount to one grid. "
    )


def named_arm_set(corpora: dict) -> str | None:
    """The `--arms` set (other than `all`) whose arms are exactly the series' trained arms, if one is."""
    ran = {a for c in corpora.values() for a in c["arms"] if a in ARMS}
    return next((name for name, arms in ARM_SETS.items() if name != "all" and ran == set(arms)), None)


def series_flags(corpora: dict) -> list[str]:
    """The run.py options, beyond --data, that a series' records show it was run with."""
    named = named_arm_set(corpora)
    flags = [f"--arms {named}"] if named else []
    sources = {
        Path(s["from"]).parent.parent.parent for c in corpora.values() for s in c["lr"].values() if s.get("from")
    }
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


def unbracketed(search: dict, stopped: set[int]) -> str:
    """A chosen rate inside the rates tried: whether the trials it beat were scored as it was."""
    beaten = stopped_beaten(search)
    if not beaten:
        return "not needed"
    return (
        "not run; the chosen rate beat its neighbour "
        + ", ".join(
            f"{t['lr']:.2g} (stopped at step {t['steps']}, scored on the subset)"
            for t in sorted(beaten, key=lambda t: t["lr"])
        )
        + ": not compared on the same validation windows or steps, so the choice is not settled"
    )


def at_budget_table(searches: dict[str, dict]) -> list[str]:
    """The searches that follow the learning-rate rule (`run.py --lr-at-budget`), each trial to the end."""
    lines = [
        "Searches under the learning-rate rule (`run.py --lr-at-budget ARM`; every trial run to the end and "
        "scored on all validation windows, training seed 0):",
        "",
        "| arm | searched at | trials (lr: validation perplexity, steps) | chosen lr |",
        "|---|---|---|---|",
    ]
    for arm, s in sorted(searches.items()):
        tried = ", ".join(
            f"{t['lr']:.3g}: {t['val_perplexity']:.2f} ({t['steps']})"
            for t in sorted(s["trials"], key=lambda t: t["lr"])
        )
        lines.append(f"| {arm} | {budget_text(s['budget'])} | {tried} | {s['lr']:.3g} |")
    return lines + [""]


def lr_rule_table(rows: dict) -> list[str]:
    """Every trained arm: its rate, the budget it is reported at, the budget (and arm) its rate was searched at."""
    trained = {a: r for a, r in rows.items() if "lr_status" in r}
    if not trained:
        return []
    lines = [
        "Each trained arm's rate against the learning-rate rule (results.json's `lr`, `budget`, `lr_budget`):",
        "",
        "| Arm | Rate | Trained and reported at | Rate searched at (searched arm) |",
        "|---|---|---|---|",
    ]
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
    windows = (
        f"{b['windows']:,} windows"
        + (f" cut every {b['stride']} tokens" if b.get("stride") else "")
        + (f" with `{b['extra_text']}`'s text" if b.get("extra_text") else "")
    )
    return (
        f"{windows}, {b['epochs']} epoch(s) ({b['steps']:,} steps at most), early stopping on {b['validation']} "
        f"every {b['eval_every']} steps, patience {b['patience']}"
        + (f", pruned by {b['pruning']}" if b.get("pruning") else "")
    )


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
        return f"{rates} (rate borrowed/not searched at this budget: no search of its own" + (
            f"; the rate of `{source}`'s search)" if source else ")"
        )
    where = "another arm's" if status == BORROWED else "the same arm's, at another budget"
    return f"{rates} (rate borrowed/not searched at this budget: `{source}`'s search, {where})"


def regimes(trained: list[dict]) -> list[str]:
    """Each training budget the series' runs used, with how many runs and which arms: the set-up of every regime."""
    by: dict[str, list[dict]] = {}
    for r in trained:
        extra = extra_corpus(r["arm"]) if r["arm"] in ARMS else None
        by.setdefault(budget_text(budget_of(r["config"], extra)), []).append(r)
    return [
        f"- {b}: {len(rs)} runs ({len({r['arm'] for r in rs})} arms"
        + (f", e.g. `{min({r['arm'] for r in rs}, key=lambda a: (len(a), a))}`)" if rs else ")")
        for b, rs in sorted(by.items(), key=lambda kv: -len(kv[1]))
    ]


def shared_chunk_mlp(records: list[dict]) -> bool:
    """Chunk-pooled runs recorded before each chunk went through its position's own rows of the MLP's last layer (they
    lack `chunk_rows`): one MLP shared by the k chunks, a design the code no longer trains."""
    return any(r["config"]["adapter"].get("pooling") == "chunks" and "chunk_rows" not in r for r in records)


SHARED_MLP = "one MLP shared by the chunks"


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
    return f"no verdict (trained at different precisions: {note[len('; precision differs (') : -1]})"


def needs_cell(needs: dict | None, rate, verdict: str = "") -> str:
    """What a target needs at a step's rate: a two-point extrapolation (the step's two ends), with no interval."""
    if verdict.startswith("no verdict (control"):
        return "no rate to extrapolate (its control's rate was not searched at this budget)"
    if needs is None:
        return (
            "one seed: no rate to extrapolate"
            if math.isnan(rate[1])
            else "no rate to extrapolate (its interval is not above 0)"
        )
    if needs["doublings"][0] == 0:
        return "reached"
    d, w = needs["doublings"][0], needs["windows"][0]
    count = f"over {MAX_WINDOWS:,.0f}" if w is None else f"{w:,.0f}"
    times = f"{d:.1f}" if d < 1000 else f"{d:.2g}"
    return f"{times} doublings, about {count} windows (two-point extrapolation, no interval)"


def precision_note(arms: dict, compared: list[str]) -> str:
    """Where arms that a row compares trained at different precisions (a series continued on a machine without fast
    bf16), what the row's verdicts carry besides the designs."""
    dtypes = sorted({r.get("dtype", "?") for a in compared for r in arms.get(a, [])})
    return f"; precision differs ({' / '.join(dtypes)})" if len(dtypes) > 1 else ""


def lr_check_table(checks: list[dict], arms: dict) -> list[str]:
    """`--lr-check`: seed 0 of an arm at half and twice its rate, against seed 0 at the rate the arms trained with."""
    lines = [
        "Learning-rate check at this series' budget (`--lr-check`; seed 0, the same budget and early stopping):",
        "",
        "| arm | lr | validation perplexity | steps | against seed 0 at the arms' rate |",
        "|---|---|---|---|---|",
    ]
    better = []
    for c in sorted(checks, key=lambda c: (c["arm"], c["lr"])):
        base = next((r for r in arms.get(c["arm"], []) if r["seed"] == 0), None)
        if base is None:
            continue
        change = c["val_perplexity"] / base["val_perplexity"] - 1
        lines.append(
            f"| {c['arm']} | {c['lr']:.2g} | {c['val_perplexity']:.2f} | {c['steps']} | "
            f"{100 * change:+.1f}% (against {base['val_perplexity']:.2f} at {base['lr']:.3g}) |"
        )
        if change < 0:
            better.append(f"{c['arm']} at {c['lr']:.2g} ({100 * change:+.1f}%)")
    lines.append("")
    if better:
        lines += [
            "At this budget a rate the search did not choose trains to a lower validation perplexity (one seed): "
            + "; ".join(better)
            + ". Every arm below was trained at its method's searched rate, so the comparisons "
            "hold at those rates, not at each method's best for this budget.",
            "",
        ]
    else:
        lines += ["Neither half nor twice the searched rate does better at this budget (one seed).", ""]
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
    lines = [
        "### (d) Secondary: `context` mode",
        "",
        f"The quickstart's mode: the encoder reads the window's first {CONTEXT_READ} tokens, which the LM reads too "
        f"and is not scored on, so these arms are scored on the window's other {c['tokens_per_window']:.0f} tokens "
        "(on average) and compared only with each other and with the frozen LM scored on the same tokens. The vectors "
        "can add trainable capacity, but no text the LM does not already read. Learning rate: the injection search's.",
        "",
        "| Arm | Seeds | Test perplexity [95% CI] | Δ NLL vs frozen, same tokens (nats/token) | Val perplexity | "
        "Still improving at stop |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in c["rows"].items():
        recs = arms[name]
        if name == "baseline-context":
            lines.append(
                f"| Frozen LM (baseline), scored on the same tokens | - | {ci(r['perplexity'], 2)} | - | - | - |"
            )
            continue
        improving = f"{sum(x['best_step'] == x['steps'] for x in recs)} of {len(recs)}"
        lines.append(
            f"| {ARMS[name][3]} | {len(recs)} | {ci(r['perplexity'], 2)} | {ci(r['vs_baseline'], 3, sign=True)} | "
            f"{np.mean([x['val_perplexity'] for x in recs]):.2f} | {improving} |"
        )
    lines.append("")
    if "content_nats" in c:
        x = c["content_nats"]
        verdict = claim(x, "the embedding's content helps beyond a constant input", "the constant input is better")
        lines += [
            f"Injection minus its constant-input control, same tokens: {ci(x, 4, sign=True)} nats/token; verdict: "
            f"{verdict}.",
            "",
        ]
    return lines
