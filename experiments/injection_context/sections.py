"""The injection study's per-corpus tables: learning-rate searches, every arm, (a) to (c), other paired differences."""

from __future__ import annotations

import math

import numpy as np

from experiments.injection_context.arms import ARMS, NO_SEARCH, TEXT_TOKENS, lr_edge, rate_searched
from experiments.injection_context.describe import (
    SHARED_MLP,
    bracket_verdict,
    budget_text,
    ci,
    content_verdict,
    equivalent_text_tokens,
    pair_verdict,
    same_rates,
    seeds_ci,
    shared_chunk_mlp,
    unbracketed,
)
from experiments.injection_context.records import pruned_steps, search_budget
from experiments.stats import claim


def lr_search_lines(corpus: dict, precision: str) -> list[str]:
    """The recorded learning-rate searches of a corpus (pruned ones, each at one budget)."""
    lines = []
    if corpus["lr"]:
        copied = sorted({s["from"] for s in corpus["lr"].values() if s.get("from")})
        lines += [
            (
                "Learning rates taken from another series' searches (" + ", ".join(f"`{c}`" for c in copied) + "): "
                if copied
                else "Learning rates, "
            )
            + "each the best of an `embinject.tune` search (Optuna TPE + ASHA, one epoch, "
            "validation split, training seed 0). Each trial shows its best validation perplexity and the steps "
            "it trained (fewer than the epoch's where ASHA stopped it). A trial ASHA stopped is scored by "
            "its "
            "best evaluation on the evaluation subset; a trial that ran to the end, by its kept adapter on "
            "all "
            "validation windows: the two are scores on different validation sets, so a rate chosen over a "
            "stopped trial was not compared like for like. "
            + same_rates(corpus["lr"])
            + "Where the chosen rate was the largest (smallest) tried, one more "
            "full-epoch trial at twice (half) the rate checks whether the optimum was bracketed. None of "
            "these "
            "searches meets the learning-rate rule (each was pruned, at one budget: the column *searched "
            "at*):",
            "",
            "| method | searched at | searched (lr: best validation perplexity, steps, validation windows) | "
            "chosen lr | bracket check |",
            "|---|---|---|---|---|",
        ]
        for m, s in sorted(corpus["lr"].items()):
            stopped = pruned_steps(s)
            tried = ", ".join(
                f"{x['lr']:.2g}: {x['val_perplexity']:.2f} ({x['steps']}, "
                f"{'subset: stopped' if x['steps'] in stopped else 'all'})"
                for x in sorted(s["trials"], key=lambda x: x["lr"])
            )
            edge = lr_edge(s)
            # a search keeps its precision from the field's start; one that differs from the arms' says so
            other = f" (trials in {s['dtype']})" if s.get("dtype", precision) != precision else ""
            lines.append(
                f"| {m} | {budget_text(search_budget(s))} | {tried}{other} | "
                f"{s['lr']:.3g}{f' (the {edge} tried)' if edge else ''} | "
                f"{bracket_verdict(s) if edge else unbracketed(s, stopped)} |"
            )
        lines.append("")
    return lines


def arms_table(rows: dict, arms: dict) -> list[str]:
    """Every arm's test perplexity, shares and training facts."""
    lines = []
    full = f"text-{max(TEXT_TOKENS)}"
    lines += [
        "| Arm | LM reads | Seeds | Test perplexity [95% CI] | Δ NLL vs frozen (nats/token) | Share of text gain | "
        "Val perplexity | Steps (epochs) | Still improving at stop | Peak RSS (MB) | Trainable params |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = ["baseline", *[f"text-{m}" for m in TEXT_TOKENS], *[x for x in ARMS if x in rows]]
    for arm in order:
        if arm not in rows:
            continue
        r, recs = rows[arm], arms[arm]
        if arm in ARMS:
            label = ARMS[arm][3] + (f" ({SHARED_MLP})" if shared_chunk_mlp(recs) else "")
            reads = (
                f"{recs[0]['config']['adapter']['inject_tokens' if ARMS[arm][0] == 'injection' else 'prefix_len']} "
                "vectors"
            )
            val = f"{np.mean([x['val_perplexity'] for x in recs]):.2f}"
            steps = f"{np.median([x['steps'] for x in recs]):.0f} ({np.median([x['epochs_run'] for x in recs]):.1f})"
            # best subset evaluation was the last
            improving = f"{sum(x['best_step'] == x['steps'] for x in recs)} of {len(recs)}"
            params = f"{recs[0]['trainable_params']:,}"
            seeds = f"{len(recs)}"
        else:
            m = recs[0]["text_tokens"]
            label = "Frozen LM (baseline)" if m == 0 else f"Frozen LM reading the last {m} preceding tokens"
            reads, val, steps, improving, params, seeds = (f"{m} tokens" if m else "-"), "-", "-", "-", "0", "-"
        rss = f"{max(x['peak_rss_mb'] for x in recs):,.0f}"
        delta = "-" if arm == "baseline" else ci(r["vs_baseline"], 3, sign=True)
        share = "-" if arm in ("baseline", full) else ci(r["share_of_text_gain"], 1, 100) + "%"
        lines.append(
            f"| {label} | {reads} | {seeds} | {ci(r['perplexity'], 2)} | {delta} | {share} | {val} | {steps} | "
            f"{improving} | {rss} | {params} |"
        )
    lines += [
        "",
        "Val perplexity: the kept adapter on every validation window (mean over seeds). Still improving at stop: runs "
        "whose best evaluation (on the fixed validation subset) was their last, so more training might still help. "
        "Peak RSS is each arm's own process (the largest over its seeds); the evaluation-only rows share one process.",
        "",
    ]
    return lines


def compression_section(rows: dict) -> list[str]:
    """(a): injection's k vectors against the LM reading k tokens."""
    lines = []
    text = {m: rows[f"text-{m}"]["nll"][0] for m in TEXT_TOKENS if f"text-{m}" in rows}
    ks = [k for k in (1, 2, 4, 8, 16) if f"inject-{k}" in rows]
    if ks:

        def tokens(arm: str) -> str:  # the preceding-text tokens the LM must read to match `arm`
            if arm not in rows:
                return "-"
            nll, lo, hi = rows[arm]["nll"]
            if math.isnan(lo):
                return equivalent_text_tokens(nll, text)
            return (
                f"{equivalent_text_tokens(nll, text)} "
                f"[{equivalent_text_tokens(hi, text)}, {equivalent_text_tokens(lo, text)}]"
            )

        lines += [
            "### (a) The compression curve",
            "",
            "| k | Injection, k vectors: share of text gain | Frozen LM reading the last k tokens: share | "
            "Preceding-text tokens the LM must read to match injection [95% CI] | ... its constant-input control | "
            "... its shuffled control |",
            "|---|---|---|---|---|---|",
        ]
        for k in ks:
            r = rows[f"inject-{k}"]
            lines.append(
                f"| {k} | {ci(r['share_of_text_gain'], 1, 100)}% | "
                f"{ci(rows[f'text-{k}']['share_of_text_gain'], 1, 100)}% | {tokens(f'inject-{k}')} | "
                f"{tokens(f'constant-{k}')} | {tokens(f'shuffled-{k}')} |"
            )
        lines += [
            "",
            "The token counts interpolate injection's test NLL (and its interval's ends) on the frozen LM's "
            "curve of NLL against preceding tokens read (log-linear between the lengths measured); the curve "
            "itself is taken at its point estimates.",
            "",
        ]
    return lines


def content_section(a: dict) -> list[str]:
    """(b): injection against its controls."""
    lines = []
    if a["content"]:
        lines += [
            "### (b) What is specific to the embedding's content",
            "",
            "Injection minus the better of its controls (same adapter, same parameter count, no matching information); "
            "negative nats mean injection is better.",
            "",
            "| k | Controls | Δ NLL, injection - better control (nats/token) | "
            "Share of text gain specific to content | Verdict |",
            "|---|---|---|---|---|",
        ]
        for k, c in a["content"].items():
            verdict = content_verdict(c)
            if c["controls"] == [f"shuffled-{k}"] and "no verdict" not in verdict:
                verdict += " (provisional: shuffled control only)"
            lines.append(
                f"| {k} | {', '.join(c['controls'])} | {seeds_ci(c['nats'], 4, sign=True)} | "
                f"{seeds_ci(c['share_of_text_gain'], 1, 100, unit='%')} | {verdict} |"
            )
        lines.append("")
        alone = [str(k) for k, c in a["content"].items() if c["controls"] == [f"shuffled-{k}"]]
        gaps = list(a["shuffled_minus_constant"].items())
        if alone:
            gap = "; ".join(
                f"at k = {k} the shuffled control is {ci(g, 4, sign=True)} nats/token against the constant-input "
                "control"
                for k, g in gaps
            )
            lines += [
                f"Only the shuffled control has been run at k = {', '.join(alone)}. "
                + (
                    f"Where both ran, {gap}: shuffled embeddings are noise the adapter must learn to ignore, "
                    "so a control that is weaker than the constant input can credit content with a gain the constant "
                    "input would also get. "
                    if gaps
                    else ""
                )
                + "The verdicts at those k are provisional until the constant-input control runs there.",
                "",
            ]
    return lines


def window_section(a: dict) -> list[str]:
    """(c): the seed report's `window` mode."""
    lines = []
    if a["window"]:
        w = a["window"]
        change = w["ppl_change_vs_static"]
        size = (
            " by at least as much as the seed's -14.6%"
            if change[2] <= -0.146
            else ", but by less than the seed's -14.6%"
            if change[1] > -0.146
            else ""
        )
        verdict = claim(
            change,
            "reproduced in direction: injection that reads the scored window beats the static prefix"
            + size
            + (
                " (the seed's figure is one run of a larger model on another corpus, so its size is not "
                "expected to carry over; the direction is what is tested)"
                if size
                else ""
            ),
            "not reproduced: the static prefix is better",
        )
        lines += [
            "### (c) The seed report's `window` mode",
            "",
            "The seed report measured injection with the encoder reading the scored window itself at -14.6% "
            "validation perplexity against a 3-vector static prefix (14.38 against 16.83; SmolLM2-360M, "
            "FineWeb-Edu). Here, on the same test windows and tokens as every arm above:",
            "",
            "| Comparison | Estimate [95% CI] |",
            "|---|---|",
            f"| test perplexity, `window` injection (4 vectors) vs static prefix (4 vectors) | "
            f"{ci(change, 1, 100, sign=True)}% |",
            f"| Δ NLL, the same (nats/token) | {ci(w['nats_vs_static'], 4, sign=True)} |",
        ]
        if "nats_vs_shuffled" in w:
            lines.append(
                f"| Δ NLL, `window` injection - its shuffled control | {ci(w['nats_vs_shuffled'], 4, sign=True)} |"
            )
        if "nats_vs_constant" in w:
            lines.append(
                f"| Δ NLL, `window` injection - constant-input control | {ci(w['nats_vs_constant'], 4, sign=True)} |"
            )
        if "nats_vs_previous" in w:
            lines.append(
                f"| Δ NLL, `window` injection - `previous` injection | {ci(w['nats_vs_previous'], 4, sign=True)} |"
            )
        lines += [
            "",
            f"Verdict: {verdict}. In `window` mode the encoder's embedding is computed from the very tokens "
            "the LM is then scored on, so whatever the vectors carry beyond the controls is partly the "
            "answer; a gain there is a leak, not context, and cannot be had when generating. (The `window` arm's "
            "validation perplexity is not comparable with the other arms': its validation windows include each "
            "document's first window, which the other arms skip for lack of preceding text. Its test windows "
            "are the same.)",
            "",
        ]
    return lines


def pairs_section(a: dict) -> list[str]:
    """Other paired differences."""
    lines = []
    rows = a["rows"]
    if a["pairs"]:
        lines += [
            "### Other paired differences",
            "",
            "| Difference (test NLL, nats/token) | Estimate [95% CI] | Verdict |",
            "|---|---|---|",
        ]
        for pair, x in a["pairs"].items():
            unsearched = [
                arm for arm in pair.split(" - ") if not rate_searched(rows.get(arm, {}).get("lr_status", NO_SEARCH))
            ]
            caveat = f" (rate borrowed/not searched at this budget: {', '.join(unsearched)})" if unsearched else ""
            lines.append(f"| {pair} | {seeds_ci(x, 4, sign=True)} | {pair_verdict(pair, x)}{caveat} |")
        lines.append("")
    return lines
