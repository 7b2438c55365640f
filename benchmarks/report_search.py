"""RESULTS.md sections on the search itself: strategies against random search (search_efficiency), warm starts
(warm_start), and searches of hundreds of trials (many_trials)."""

from __future__ import annotations


def efficiency_section(data: dict) -> list[str]:
    """search_efficiency: each strategy (TPE, multivariate TPE, ASHA reduction factors) against random search."""
    if "missing" not in data:
        return [
            "## search_efficiency: search strategies against random search",
            "",
            f"benchmarks/results/search_efficiency.json ({data['time']}) was written by an earlier version of the "
            "benchmark; run `python -m benchmarks.search_efficiency` to measure it again.",
            "",
        ]

    def label(kind: str) -> str:
        k = data["kinds"][kind]
        sampler = (
            "random search" if k.get("sampler") == "random" else f"{'multivariate ' if k['multivariate'] else ''}TPE"
        )
        return f"{sampler} + ASHA (reduction factor {k['reduction_factor']:g})"

    lines = [
        "## search_efficiency: search strategies against random search",
        "",
        f"`python -m benchmarks.search_efficiency` on {data['time']}: {data['trials']} trials of up to "
        f"{data['steps_per_trial']} steps per search, one search per seed and strategy (seeds "
        f"{', '.join(map(str, data['seeds']))}); TPE samples at random for its first "
        f"{data['startup_trials']} trials (`tune.startup_trials`); multivariate TPE is `tune.multivariate: true`.",
        "",
        "| seed | strategy | random: final best | random: steps (to within 1% of its best) | final best | steps | "
        "steps to within 1% of random's best | fraction of random's steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in data["per_seed"]:
        frac = "never" if s["fraction_of_random_steps"] is None else f"{100 * s['fraction_of_random_steps']:.0f}%"
        lines.append(
            f"| {s['seed']} | {label(s['kind'])} | {s['random_final_best']:.3f} | {s['random_steps']} "
            f"({s.get('random_steps_to_within_1pct', '-')}) | {s['final_best']:.3f} | "
            f"{s['steps']} | {s['steps_to_within_1pct'] or '-'} | {frac} |"
        )
    lines.append("")
    for kind, med in data["median_fraction"].items():
        seeds = sum(s["kind"] == kind for s in data["per_seed"])
        shown = "never" if med == float("inf") else f"{100 * med:.0f}%"
        lines.append(
            f"- {label(kind)}: median {shown} of random search's steps to come within 1% of its best over "
            f"{seeds} seed{'s' * (seeds != 1)} (target 30%: {'met' if med <= 0.3 else 'not met'})."
        )
    if data["median_fraction"]:
        fewest = min(data["median_fraction"].values())
        best = [label(k) for k, v in data["median_fraction"].items() if v == fewest]
        lines.append(
            f"- Fewest steps: {best[0]}."
            if len(best) == 1
            else f"- No strategy needs fewer steps than the others: {'; '.join(best)}."
        )
    if data["missing"]:
        lines.append(
            "- Not run yet (rerun the benchmark to finish them; finished searches are kept): "
            f"{', '.join(data['missing'])}."
        )
    return lines + [""]


def warm_start_section(data: dict) -> list[str]:
    """warm_start: cold TPE + ASHA against the same search warm-started from the other corpus's search."""

    def pct(v) -> str:
        return "-" if v is None else "never" if v == float("inf") else f"{100 * v:.0f}%"

    lines = [
        "## warm_start: a search warm-started from a search on another corpus",
        "",
        f"`python -m benchmarks.warm_start` on {data['time']}: {data['trials']} trials of up to "
        f"{data['steps_per_trial']} steps per search (TPE + ASHA, {data['startup_trials']} random start-up trials), on "
        f"{' and '.join(data['corpora'].values())}; the warm search of a corpus and seed starts (`tune.warm_start`) "
        "from the cold search of the same seed on the other corpus: its 3 best configurations first, then its trials "
        "as a baseline-rescaled TPE prior. Measured as search_efficiency measures: the share of random search's steps "
        "(no early stopping) a search needs to come within 1% of random search's final best.",
        "",
        "| corpus | seed | search | random: final best | final best | steps | steps to within 1% of random's best | "
        "share of random's steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in data["per_search"]:
        lines.append(
            f"| {s['corpus']} | {s['seed']} | {s['kind']} | {s['random_final_best']:.3f} | {s['final_best']:.3f} | "
            f"{s['steps']} | {s['steps_to_within_1pct'] or '-'} | {pct(s['fraction_of_random_steps'])} |"
        )
    lines.append("")
    paired = set(data.get("paired", []))
    n = {
        k: sum(s["kind"] == k and f"{s['corpus']} seed {s['seed']}" in paired for s in data["per_search"])
        for k in ("warm", "cold")
    }
    warm, cold = data["median_fraction_warm"], data["median_fraction_cold"]
    lines.append(
        f"- Median share of random search's steps, over the corpus-seed pairs where both searches finished: warm "
        f"{pct(warm)} over {n['warm']} searches, cold {pct(cold)} over {n['cold']} (target: warm at most 10%: "
        f"{'met' if warm is not None and warm <= 0.1 else 'not met'})."
    )
    if data["missing"]:
        lines.append(
            "- Not run yet (rerun the benchmark to finish them; finished searches are kept): "
            f"{', '.join(data['missing'])}."
        )
    return lines + [""]


def many_trials_section(data: dict) -> list[str]:
    """many_trials: hundreds of tiny trials in one search."""
    return [
        "## many_trials: a search of hundreds of trials",
        "",
        f"`python -m benchmarks.many_trials` on {data['time']} ({data['cpus']} CPUs): {data['trials']} trials of "
        f"{data['steps_per_trial']} steps on the tiny random-weight model, two at a time, output to a file.",
        "",
        "| trials | wall | trials per minute | rows in summary.csv | MLflow trial runs (finished) | "
        f"driver memory after {data['first']} trials | at the end | end / after {data['first']} | "
        "log lines (per trial) | longest line |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {data['trials']} | {data['wall_s']:.0f} s | {data['trials_per_minute']:.0f} | {data['summary_rows']} | "
        f"{data['mlflow_trial_runs']} ({data['mlflow_finished_runs']}) | {data['driver_rss_after_first_mb']:.0f} MB | "
        f"{data['driver_rss_end_mb']:.0f} MB | x{data['driver_rss_end_over_first']:.2f} | {data['log_lines']} "
        f"({data['log_lines_per_trial']:.2f}) | {data['longest_log_line']} |",
        "",
    ]
