"""The injection study's report: the designs, text-scaling and series tables."""

from __future__ import annotations


import numpy as np

from experiments.injection_context.arms import (
    ARMS,
    MORE_TRAINING_ARMS,
    MORE_EPOCHS,
    MORE_TEXT,
    MORE_TEXT_CORPUS,
    MORE_WINDOWS,
    OVERLAPPING,
    STRIDE,
    SCREEN_K,
)
from experiments.injection_context.arms import NO_SEARCH, rate_searched
from experiments.stats import MIN_SEEDS, claim, seed_interval
from experiments.injection_context.describe import (
    SHARED_MLP,
    budget_text,
    ci,
    content_cell,
    needs_cell,
    pair_cell,
    precision_verdict,
    rate_mark,
    seeds_ci,
    shared_chunk_mlp,
    trained_runs,
    values_of,
)
from experiments.injection_context.analysis import (
    STATIC,
    _BEST,
    headline,
    per_window,
    pooled_beside,
)
from experiments.injection_context.scaling import TARGET_CONTENT, TARGET_SHARE


def designs_table(designs: dict, arms: dict) -> list[str]:
    """(f): the designs against one another, their controls and the pooled MiniLM vector."""
    lines = [
        "### (f) Designs: what makes the vectors carry the text",
        "",
        "Each design's share of the text gain, and its *content share*: its share minus that of its constant-input "
        "control (the same architecture, fed the training split's mean input: `adapter.ablation: constant`), paired by "
        "seed and window. A design and its control each have their own learning-rate search (`<design>` and "
        "`<design>-constant` in the table of learning rates above); a control whose search is not in that table "
        "trained at its design's rate. Targets: a share of at least 70% at 8 vectors, a content share of at least 25 "
        "points.",
        "",
        "The static prefix at the same k reads nothing: what the vectors' capacity alone gives. A shuffled control "
        "(another window's input) is shown where it ran. A design's rate, and each control's, is searched at k = "
        f"{SCREEN_K} and used at every k.",
        "",
    ]
    lines += design_notes(designs, arms)
    lines += [
        "Every interval below is a 95% Student's t interval over the seeds it names (paired by seed and test "
        "window); "
        "*± windows* is the standard deviation that resampling the test windows adds to it (`window_sd`). "
        "*Rate*: "
        "whether the arm's rate, and its constant control's, was searched at the budget the row is reported "
        "at.",
        "",
        "| Design | k | Seeds (constant, shuffled) | Rate (arm; control) | Share of text gain | ± windows | "
        "Content share | "
        "± windows | Verdict on content | Content share vs shuffled | Δ NLL vs pooled MiniLM, same k | Verdict "
        "|",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [design_row(arm, r, arms) for arm, r in designs.items()]
    head = headline(designs)
    lines += [""] + headline_lines(head) + [""]
    return lines


def design_notes(designs: dict, arms: dict) -> list[str]:
    """(f)'s notes on the rows it holds: those trained on more windows, for more epochs, on overlapping windows or
    on other articles' text, and those trained with the chunk MLP's shared bias."""
    lines = []
    if any(a in designs for a in MORE_TRAINING_ARMS[f"w{MORE_WINDOWS}"]):
        lines += [
            f"Rows *..., {MORE_WINDOWS:,} training windows* are a design and its constant control trained on "
            f"{MORE_WINDOWS // 1024}x the training windows (`--arms more-windows`: the same validation and test "
            "windows, the rates of their searches on 1,024, patience 5): their content share says whether more data "
            "lets the vectors carry more of the text. The pooled vector's Δ is against itself on 1,024 windows (what "
            f"the extra data changed); another design's against the pooled vector on the same {MORE_WINDOWS:,}.",
            "",
        ]
    if any(a in designs for a in MORE_TRAINING_ARMS[f"e{MORE_EPOCHS}"]):
        lines += [
            f"Rows *..., {MORE_EPOCHS} epochs over 1,024 windows* (`--arms more-epochs`) may take as many steps as one "
            f"epoch over {MORE_WINDOWS:,} windows, on none of their extra text (the same rates, patience 5, the best "
            f"adapter kept; early stopping may end them sooner): whether the {MORE_WINDOWS:,}-window rows gained from "
            "the data or from the steps. The paired differences below set them against both.",
            "",
        ]
    if any(a in designs for a in MORE_TRAINING_ARMS[f"w{OVERLAPPING}s{STRIDE}"]):
        lines += [
            f"Rows *..., {OVERLAPPING:,} overlapping training windows* (`--arms overlapping-windows`) are trained on "
            f"windows cut every {STRIDE} tokens (`data.train_stride: {STRIDE}`), each with the text before it: "
            f"about twice the windows the sample's training split holds side by side, each token in two of them "
            "(the same validation and test windows and rates as on 4,096; their epoch of 1,024 steps early-stops on "
            "the whole validation split, evaluated every 64 steps, patience 5).",
            "",
        ]
    if any(a in designs for a in MORE_TRAINING_ARMS[f"w{MORE_TEXT}t"]):
        lines += [
            f"Rows *..., {MORE_TEXT:,} training windows with other articles' text* (`--arms more-text`) train on the "
            f"study's training articles and the shared `{MORE_TEXT_CORPUS}` corpus's articles together (other "
            "Wikipedia articles, none of which repeats a validation or test article), side by side: "
            "distinct text where the overlapping windows repeat each token. The same validation and test windows, "
            "rates and early stopping as the overlapping windows.",
            "",
        ]
    if any(shared_chunk_mlp(arms.get(a, [])) for a in designs):
        lines += [
            f"Rows marked *{SHARED_MLP}* were trained before chunk pooling sent each chunk through its position's own "
            "rows of the MLP's last layer: their k vectors shared one bias, so they could not learn to differ where "
            "the chunks are alike, not even as a static prefix does. They are not that design as it is trained now, "
            "and they take no more seeds.",
            "",
        ]
    return lines


def design_row(arm: str, r: dict, arms: dict) -> str:
    """(f)'s row of one design: its share, content share against each control and difference from pooled MiniLM."""
    share = seeds_ci(r["share_of_text_gain"], 1, 100, unit="%")
    if r["design"] == STATIC:
        return (
            f"| static prefix (`{arm}`) | {r['k']} | {r['seeds']} | {rate_mark(r)} | {share} | "
            f"{100 * r['share_window_sd']:.1f} | - | - | - | - | - | - |"
        )
    content = r.get("content_share")
    content_cell = "control not run" if content is None else seeds_ci(content, 1, 100, sign=True, unit=" pts")
    content_sd = "-" if content is None else f"{100 * r['content_window_sd']:.1f}"
    content_verdict_ = "-" if content is None else r["content_verdict"]
    shuffled = r.get("shuffled_content_share")
    shuffled_cell = (
        "-"
        if shuffled is None
        else f"{seeds_ci(shuffled, 1, 100, sign=True, unit=' pts')}: {r['shuffled_content_verdict']}"
    )
    vs = r.get("vs_pooled_nats")
    vs_cell = "-" if vs is None else seeds_ci(vs, 4, sign=True)
    vs_verdict = (
        "-"
        if vs is None
        else precision_verdict(
            claim(vs, "better than pooled MiniLM", "worse than pooled MiniLM"),
            arms,
            [arm, pooled_beside(arm, r["k"])],
        )
    )
    if content is not None:
        content_verdict_ = precision_verdict(content_verdict_, arms, [arm, r["control"]])
    design = f"{r['design']}, {SHARED_MLP}" if shared_chunk_mlp(arms.get(arm, [])) else r["design"]
    control_mark = (
        "-"
        if "control_lr_status" not in r
        else rate_mark({"lr_status": r["control_lr_status"], "lr_settled": r.get("control_lr_settled", True)})
    )
    return (
        f"| {design} (`{arm}`) | {r['k']} | {r['seeds']} ({r.get('control_seeds', 0)}, "
        f"{r.get('shuffled_control_seeds', 0)}) | {rate_mark(r)}; {control_mark} | {share} | "
        f"{100 * r['share_window_sd']:.1f} | {content_cell} | {content_sd} | "
        f"{content_verdict_} | {shuffled_cell} | {vs_cell} | {vs_verdict} |"
    )


def headline_lines(head: dict | None) -> list[str]:
    """The headline block in words: which row, how it was selected, its intervals of both kinds."""
    if head is None:
        return [f"Best design at k <= {SCREEN_K}: none has run."]
    said = (
        f"Headline (results.json's `headline`): {head['design']} (`{head['arm']}`), selected as the "
        f"{head['selection']}; a selected maximum is biased upward. Share of the text gain "
        f"{seeds_ci(head['share_of_text_gain'], 1, 100, unit='%')} (95% t over seeds)"
    )
    two = head.get("two_level")
    if two:
        said += f", {ci(two['share_of_text_gain'], 1, 100)}% with the test windows resampled too (two-level)"
    if head.get("content_share") is not None:
        said += (
            f"; content share {ci(head['content_share'], 1, 100, sign=True)} points ({head['seeds']} seeds, t)"
            + (f", {ci(two['content_share'], 1, 100, sign=True)} two-level" if two and two.get("content_share") else "")
            + f": {head.get('content_verdict', '-')}"
        )
    said += "."
    if head.get("runner_up"):
        ru = head["runner_up"]
        said += f" The next candidate by mean share: `{ru['arm']}`, {ci(ru['share_of_text_gain'], 1, 100)}%."
    if head.get("lr_status") and not rate_searched(head["lr_status"]):
        said += (
            f" Its rate, {head['lr']:.3g}, is borrowed/not searched at this budget: it was searched for "
            f"`{head['lr_budget']['arm']}` at {budget_text(head['lr_budget'])}, and the row is reported at "
            f"{budget_text(head['budget'])}; its control's rate: {head.get('control_lr_status', '-')}."
        )
    return [
        said,
        "",
        "Designs are screened on one epoch before the best is trained longer; with fewer than "
        f"{MIN_SEEDS} seeds no row above has a verdict.",
    ]


def text_scaling_table(steps: list[dict]) -> list[str]:
    """(g): what more training windows did for the best design, per doubling of the windows, and what the targets would
    take at that rate (a two-point extrapolation)."""
    lines = [
        "### (g) Training windows and the targets",
        "",
        f"The best design ({_BEST}) and its constant control, each step from fewer training windows to more (rows of "
        "(f)), paired by seed and window: the change of the share of the text gain, and of the content share, per "
        "doubling of the training windows (95% t intervals over the seeds each names). Where a change's interval lies "
        "above 0 and has a verdict, the last columns extrapolate its mean: the doublings beyond the step's windows "
        f"that would take the arm to {TARGET_SHARE:.0%} of the text gain and to a content share of "
        f"{100 * TARGET_CONTENT:.0f} points if each doubling kept adding as much. These are two-point extrapolations "
        "(a straight line through the step's two ends, no model of how the gain per doubling shrinks), so they carry "
        "no interval, and the steps disagree with one another. The steps change more than the text: their budgets "
        "(early stopping, its validation windows, patience) differ (the set-up lists them), and none of their rates "
        "was searched at the larger budget. A step to overlapping windows doubles the windows, not the distinct text.",
        "",
        "| Step (training windows) | What grew | Share of text gain, change per doubling | Verdict | "
        f"Content share, change per doubling | Verdict | {TARGET_SHARE:.0%} of the text gain at that rate | "
        f"A content share of {100 * TARGET_CONTENT:.0f} points at that rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for st in steps:
        share, content = st["share_per_doubling"], st.get("content_per_doubling")
        grew = (
            f"windows overlapping (each token in {st['overlap']:.0f} windows): not the distinct text"
            if st.get("overlap", 1) > 1
            else "distinct windows"
        )
        content_cells = (
            ("control not run", "-", "-")
            if content is None
            else (
                seeds_ci(content, 1, 100, sign=True, unit=" pts"),
                st.get("content_verdict", "-"),
                needs_cell(st["content_needs"], content, st.get("content_verdict", "")),
            )
        )
        share_verdict = claim(share, "less with more windows", "more with more windows")
        if not all(rate_searched(x) for x in st.get("lr_status", [])):
            share_verdict += " (rates not searched at these budgets)"
        lines.append(
            f"| `{st['from']}` to `{st['to']}` ({st['windows'][0]:,} to {st['windows'][1]:,}) | {grew} | "
            f"{seeds_ci(share, 1, 100, sign=True, unit=' pts')} | {share_verdict} | "
            f"{content_cells[0]} | {content_cells[1]} | {needs_cell(st['share_needs'], share)} | {content_cells[2]} |"
        )
    return lines + [""]


def series_table(name: str, path: str, main: dict, main_a: dict, other: dict, other_a: dict) -> list[str]:
    """The same arms trained for the main study's budget and for another series' (say, until early stopping)."""
    shared = [a for a in ARMS if a in main_a["rows"] and a in other_a["rows"]]
    if not shared:
        return []
    runs_main, runs_other = trained_runs(main), trained_runs(other)
    t_main, t_other = runs_main[0]["config"]["train"], runs_other[0]["config"]["train"]
    lines = [
        f"### (e) Trained longer: the series in `{path}`",
        "",
        f"The same arms, seeds and test windows, trained for at most {t_other['max_epochs']} epoch(s) with early "
        f"stopping (patience {t_other['patience']} evaluations) instead of at most {t_main['max_epochs']} (its "
        "RESULTS.md has every table; learning rates as that file says). Trained on "
        f"{values_of(runs_other, 'device', 'a device not recorded')} (`{values_of(runs_other, 'dtype', '?')}` "
        f"autocast) against {values_of(runs_main, 'device', 'a device not recorded')} "
        f"(`{values_of(runs_main, 'dtype', '?')}`) here; test scoring is float32 in both. Δ NLL pairs the two series "
        "by test window.",
        "",
        "| Arm | Share of text gain, this study | Share, trained longer | Median steps (epochs), trained longer | "
        "Δ test NLL, longer - this study | Verdict |",
        "|---|---|---|---|---|---|",
    ]
    for arm in shared:
        diff = seed_interval(
            lambda m: m["longer"] - m["this"],
            {"this": per_window(main["arms"][arm]), "longer": per_window(other["arms"][arm])},
        )
        verdict = claim(diff, "longer training better", "longer training worse")
        if not rate_searched(other_a["rows"][arm].get("lr_status", NO_SEARCH)):
            verdict += " (trained longer at a rate not searched at that budget)"
        recs = other["arms"][arm]
        steps = f"{np.median([x['steps'] for x in recs]):.0f} ({np.median([x['epochs_run'] for x in recs]):.1f})"
        lines.append(
            f"| {ARMS[arm][3]} | {ci(main_a['rows'][arm]['share_of_text_gain'], 1, 100)}% | "
            f"{ci(other_a['rows'][arm]['share_of_text_gain'], 1, 100)}% | {steps} | {seeds_ci(diff, 4, sign=True)} | "
            f"{verdict} |"
        )
    lines.append("")
    ks = [k for k in main_a["content"] if k in other_a["content"]]
    pairs = [p for p in main_a["pairs"] if p in other_a["pairs"]]
    if ks or pairs:
        lines += ["| Comparison | This study [95% CI] | Trained longer [95% CI] |", "|---|---|---|"]
        for k in ks:
            lines.append(
                f"| content-specific share of text gain, k = {k} | {content_cell(main_a['content'][k])} | "
                f"{content_cell(other_a['content'][k])} |"
            )
        for pair in pairs:
            lines.append(
                f"| Δ NLL, {pair} | {pair_cell(pair, main_a['pairs'][pair])} | "
                f"{pair_cell(pair, other_a['pairs'][pair])} |"
            )
        lines.append("")
    return lines
