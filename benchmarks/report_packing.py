"""The packing sections of benchmarks/RESULTS.md: one packed step (`benchmarks.packing`), packed trials inside a
search (`benchmarks.packed_search`, CPU and GPU files) and the real search packed against unpacked
(`benchmarks.packed_search --search`)."""

from __future__ import annotations

import json
from pathlib import Path

from embinject.tracking import TIME_SPLIT

HERE = Path(__file__).resolve().parent


def packing_section(data: dict) -> list[str]:
    lines = [
        "## packing: several trials in one batch",
        "",
        f"`python -m benchmarks.packing` on {data['time']} ({data['device']}, {data['threads']} threads): K "
        f"prompt-tuning trials, each with its own prompt of {data['prefix']}, optimizer and batch of {data['batch']} x "
        f"{data['seq']}, trained as one batch of K x {data['batch']} rows over the shared frozen `{data['model']}` "
        f"against K separate steps; interleaved, median of {data['reps']}.",
        "",
        "| K trials | K separate steps (s) | one packed step (s) | packed speed-up | max gradient difference |",
        "|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['k']} | {r['sequential_s']:.2f} | {r['packed_s']:.2f} | x{r['speedup']:.2f} | "
            f"{r['max_grad_diff']:.1e} |"
        )
    packed = [r for r in data["rows"] if r["k"] > 1] or data["rows"]
    best = max(packed, key=lambda r: r["speedup"])
    verdict = (
        f"worth up to x{best['speedup']:.2f} (K={best['k']})"
        if best["speedup"] > 1.05
        else (
            f"not worth it: at best x{best['speedup']:.2f} (K={best['k']}), because a batch of {data['batch']} x "
            f"{data['seq']} tokens already keeps the cores' matmuls busy and larger batches only add memory traffic"
        )
    )
    gpu = HERE / "results" / "packing_gpu.json"
    on_gpu = (
        "see the GPU rows below for what it gives on a GPU"
        if gpu.is_file()
        else "on a GPU, where one small trial leaves most of the device idle, it has not been measured"
    )
    lines += [
        "",
        "- Packing is exact (every trial gets the gradient it would get alone; max difference in the table) and, on "
        f"this {data['device'].upper()}, {verdict}. What it saves regardless is the per-trial process and its private "
        f"memory (see memory above); {on_gpu}. A search packs trials with `tune.pack` (the packed search below).",
        "",
    ]
    return lines


def _arm(arm: str) -> str:
    return {"one": "one trial per device", "packed": "packed"}.get(arm, f"{arm} device per trial")


def packed_search_section(results: Path) -> list[str]:
    files = [results / n for n in ("packed_search.json", "packed_search_gpu.json", "packed_search_gpu_bf16.json")]
    runs = [json.loads(f.read_text()) for f in files if f.is_file()]
    if not runs:
        return real_search_section(results)
    lines = [
        "## packed trials in a search",
        "",
        "`python -m benchmarks.packed_search`: the same trials (a seeded random sample of "
        "search_spaces/injection.yaml's space, encoders that need no download) on the real bundled SmolLM2-135M, fixed "
        "steps, no early stopping, trained with one trial per device (one worker process), fractional devices (several "
        "worker processes, each with its own copy of the LM) and packed (one process, one LM, K trials per step, the "
        "next trial taking a finished one's place). Wall time includes every worker's start; peak memory (PyTorch's "
        "allocations on a GPU, the resident set on a CPU; - where not recorded) is summed over an arm's processes.",
        "",
    ]
    for d in runs:
        lines += [
            f"### {d['device_name']} ({d['device']}, {d['dtype']}), {d['time']}",
            "",
            f"{d['trials']} trials x {d['steps']} steps, batch {d['batch']} x {d['seq_len']}, K = {d['pack']}, "
            f"torch {d['torch']}, {d['cpus']} CPUs.",
            "",
            "| arm | processes | wall (s) | trials per hour | peak memory (MiB) | best val perplexity |",
            "|---|---|---|---|---|---|",
        ]
        for r in d["rows"]:
            mean = f" (mean pack {r['mean_pack']:.1f})" if "mean_pack" in r else ""
            memory = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] else "-"
            lines.append(
                f"| {_arm(r['arm'])}{mean} | {r['processes']} | {r['wall_s']:.1f} | {r['trials_per_hour']:.0f} | "
                f"{memory} | {r['best_val_perplexity']:.4f} |"
            )
        notes = []
        if "speedup_vs_one_per_device" in d:
            notes.append(
                f"packed against one trial per device: x{d['speedup_vs_one_per_device']:.2f} trials per hour, best "
                f"perplexity {100 * d['best_ppl_change']:+.2f}%"
            )
        if "speedup_vs_best_fractional" in d:
            notes.append(
                f"against the best fractional setting ({d['best_fractional']}): x{d['speedup_vs_best_fractional']:.2f}"
            )
        missing = [a for a in ("one", "0.5", "0.25", "0.1", "packed") if a not in {r["arm"] for r in d["rows"]}]
        if missing and d["device"] == "cuda":
            notes.append(f"not run: {', '.join(_arm(a) for a in missing)} (the device time ran out)")
        lines += ["", "- " + "; ".join(notes) + ".", ""] if notes else [""]
    return lines + real_search_section(results)


def pack_exactness_section(data: dict) -> list[str]:
    """Packed against unpacked on the real model: one step, and the curves against the unpacked run's own spread."""
    lines = [
        "## pack_exactness: a packed trial against its unpacked run on the real model",
        "",
        f"`python -m benchmarks.pack_exactness` on {data['time']} ({data['machine']}, torch {data['torch']}): "
        f"`{data['model']}`, {data['dtype']}, data `{data['data']}`, one trial per encoder of the quickstart space "
        f"(the first is its points_to_evaluate trial), {data['steps']} steps, evaluation every "
        f"{data['eval_every']}. Step: one packed step of all trials against each trial's step alone (largest "
        "relative difference of the NLL and of any gradient entry). Curves: largest relative difference of the "
        "validation perplexity over the evaluations, against the trial alone with 1 torch thread.",
        "",
        "| trial | step: NLL | step: gradients | first evaluation: packed | first evaluation: alone, 2 threads "
        "| curve: packed (2 threads) | curve: alone, 2 threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in data["trials"].items():
        lines.append(
            f"| {name} | {t['step']['nll_rel']:.1e} | {t['step']['grad_rel']:.1e} | "
            f"{t['first_eval']['packed_vs_solo']:.1e} | {t['first_eval']['solo_threads_vs_solo']:.1e} | "
            f"{t['packed_vs_solo']:.1e} | {t['solo_threads_vs_solo']:.1e} |"
        )
    worst_packed = max(t["packed_vs_solo"] for t in data["trials"].values())
    worst_threads = max(t["solo_threads_vs_solo"] for t in data["trials"].values())
    lines += [
        "",
        f"- A packed step is the unpacked step up to float32 rounding (matrix products of another shape sum in "
        f"another order). Over {data['steps']} steps training amplifies rounding: packed curves differ from the "
        f"unpacked ones by up to {worst_packed:.1e}, and the same trial alone at 2 threads instead of 1 by up to "
        f"{worst_threads:.1e}. Packing changes a trial no more than the thread count of an unpacked run does; "
        "the tests check 1e-4 through the real search over a few steps, where rounding has not grown.",
        "",
    ]
    return lines


SPLIT_COLUMNS = (
    ("seconds_steps", "steps"),
    ("seconds_rendezvous", "rendezvous"),
    ("seconds_eval", "evaluation"),
    ("seconds_setup", "setup"),
    ("seconds_waiting", "waiting"),
    ("seconds_report", "report"),
    ("other", "other"),
)


def _scheduler(s: dict) -> str:
    return (
        "no scheduler"
        if s["type"] == "none"
        else f"ASHA (grace {s['grace_period']}, max {s['max_t']}, reduction factor {s['reduction_factor']:g})"
    )


def _verdict(value: float | None, target: float, what: str) -> str:
    return "" if value is None else f" (target {what} {target:g}: {'met' if value >= target else 'not met'})"


def _real_run_notes(d: dict) -> list[str]:
    """The ratios of one run of the real search, and the targets issue 51 set for them."""
    if "search_speedup" not in d:
        return []
    asha = d["scheduler"]["type"] == "asha"
    cpu_target = (0.5 if asha else 0.6) if d["device"] == "cpu" else None
    reference = _placed(next(r for r in d["rows"] if r["arm"] == d["reference_arm"]))
    notes = [
        f"packed against {reference}, the fastest unpacked arm: x{d['search_speedup']:.2f} the search's "
        f"wall time (x{d['tuner_speedup']:.2f} less cache warming, x{d['command_speedup']:.2f} the command's, "
        f"x{d['step_rate_speedup']:.2f} in steps per second)"
    ]
    c = d.get("step_ceiling")
    if c:
        notes.append(
            f"the step-level ceiling (`benchmarks.packing`, K = {c['k']}, prefix {c['prefix']}, {c['threads']} "
            f"threads, median of {c['reps']}): x{c['speedup']:.2f}; packing_efficiency (search speed-up / ceiling) "
            f"**{d['packing_efficiency']:.2f}**"
            + (_verdict(d["packing_efficiency"], cpu_target, ">=") if cpu_target else "")
        )
    t = d.get("trial_ceiling")
    if t:
        notes.append(
            f"the search's own trials (its largest: {', '.join(f'{k}={v}' for k, v in t['trial'].items())}) "
            f"packed {t['k']} at once against {t['k']} separate steps, {t['threads']} threads (`tune.pack: "
            f"auto`'s probe): x{t['speedup']:.2f}; search speed-up / that: "
            f"{d['packing_efficiency_own_trials']:.2f}"
        )
        placed = t.get("placement")
        if placed:
            lanes = placed.get("lanes", 1)
            packs = (
                f"the same packed step, {lanes} side by side, against {lanes} x {t['k']} steps"
                if lanes > 1
                else f"the same packed step against those {t['k']} steps"
            )
            notes.append(
                f"{packs} as the {placed['arm']} arm places them "
                f"({placed['at_once']} processes at once, {placed['threads_each']} thread each: "
                f"{placed['placed_s'] * 1000:.0f} ms against {t['packed_s'] * 1000:.0f} ms packed): "
                f"x{placed['speedup']:.2f}, the most a packed search can gain over that arm here; search "
                f"speed-up / that: {d['packing_efficiency_placed']:.2f}"
            )
    if d["device"] == "cuda" and "speedups" in d:
        one = d["speedups"].get("one")
        if one is not None:
            notes.append(
                f"against one trial per GPU x{one:.2f}" + (_verdict(one, 6, ">=") if d["steps"] >= 300 else "")
            )
        if "best_fractional" in d:
            best = d["speedup_vs_best_fractional"]
            notes.append(
                f"against the best fractional setting ({d['best_fractional']}) x{best:.2f}"
                + (_verdict(best, 2, ">=") if d["steps"] >= 300 else "")
            )
    within = (
        ""
        if d["device"] == "cpu"
        else f" (target within 1%: {'met' if abs(d['best_ppl_rel_diff']) <= 0.01 else 'not met'})"
    )
    notes.append(f"best perplexity packed against {reference}: {d['best_ppl_rel_diff']:+.1e} relative{within}")
    for r in d["rows"]:
        w = r.get("waiting_split")
        if w:
            hosts = f" and {w['pack_hosts']} pack host{'s' * (w['pack_hosts'] != 1)}" if w["pack_hosts"] else ""
            notes.append(
                f"{_placed(r)}: waiting {w['placement_s']:.1f} s for a trial process (Ray placing it, "
                f"starting a process or reusing one) and {w['joining_s']:.1f} s joining a pack (a new host "
                f"loads the LM first), summed over trials; {w['trial_processes']} trial processes{hosts}"
            )
    notes.append(
        "the arms trained the same trials (the seeded random sampler's)"
        if d["same_trials"]
        else "the arms' trials differ: the ratios compare different searches"
    )
    return notes


def _placed(r: dict) -> str:
    """An arm of the real search by where its trials ran."""
    if r["arm"] == "packed":
        lanes = round(r["trials_at_once"] / r["pack"]) if isinstance(r["pack"], int) else 1
        return (
            f"packed, {r['trials_at_once']} at once over one LM"
            if lanes <= 1
            else f"packed, {r['pack']} at once over each of {lanes} LMs ({r['cpus_per_trial']:g} CPU each)"
        )
    device = f"{r['gpus_per_trial']:g} GPU" if r["gpus_per_trial"] else f"{r['cpus_per_trial']:g} CPU"
    return f"{r['trials_at_once']} at a time, {device} each"


def real_search_section(results: Path) -> list[str]:
    """`benchmarks.packed_search --search`: the real search, packed against unpacked, per run of settings."""
    runs = [
        r
        for n in ("packed_search_real.json", "packed_search_real_gpu.json")
        if (results / n).is_file()
        for r in json.loads((results / n).read_text())["runs"]
    ]
    if not runs:
        return []
    lines = [
        "## the real search, packed against unpacked",
        "",
        "`python -m benchmarks.packed_search --search`: each arm is one `python -m embinject.tune` search (a local Ray "
        "the search starts, Optuna's random sampler with a fixed seed, so every arm trains the same trials, MLflow in "
        "a local SQLite store), injection.yaml's searched keys, the trials as placed: packed (`tune.pack: K`, K at "
        "once over one frozen LM) or not (N at once, each with 1/N of the device). Search: the search's own wall time "
        "(caches already warm, Ray's start included); the time split is summary.csv's, summed over the trials, as "
        "shares of their summed wall time (what `embinject report` prints).",
        "",
    ]
    for d in sorted(runs, key=lambda r: (r["device"], r["model"], r["steps"], r["scheduler"]["type"])):
        load = d["load_average"]
        lines += [
            f"### `{d['model']}` on {d['device_name']} ({d['device']}, {d['dtype']}): {d['trials']} trials x "
            f"{d['steps']} steps, {_scheduler(d['scheduler'])}, K = {d['pack']}",
            "",
            f"{d['time']}; batch {d['batch']} x {d['seq_len']}, evaluation every {d['eval_every']} steps on "
            f"{d['val_samples']} windows, data `{d['data']}`, {d['cpus']} CPUs, torch {d['torch']}; load average "
            f"{load['start']:.1f} at the start, {load['end']:.1f} at the end."
            + (f" {d['note']}." if d["note"] else ""),
            "",
            f"`{d['command']}`",
            "",
            "| arm | search (s) | command (s) | steps trained | best val perplexity | "
            + " | ".join(label for _, label in SPLIT_COLUMNS)
            + " |",
            "|---|" + "---|" * (4 + len(SPLIT_COLUMNS)),
        ]
        for r in d["rows"]:
            share = r["time_split"]["share"]
            cells = [f"{100 * share[k]:.0f}%" if share[k] is not None else "-" for k, _ in SPLIT_COLUMNS]
            best = "-" if r["best_val_perplexity"] is None else f"{r['best_val_perplexity']:.4f}"
            lines.append(
                f"| {_placed(r)} | {r['search_s']:.1f} | {r['command_s']:.1f} | "
                f"{r['total_steps']} | {best} | " + " | ".join(cells) + " |"
            )
        lines += [""] + [f"- {n}." for n in _real_run_notes(d)] + [""]
    return lines


def time_split_block(results: Path, steps: int = 96) -> list[str]:
    """Where a packed search's time goes, for docs/packing.md: the CPU run of the real search at the target size
    (96-step trials, no scheduler), both arms' time split in seconds and shares, and the ceilings it is judged by."""
    f = results / "packed_search_real.json"
    runs = json.loads(f.read_text())["runs"] if f.is_file() else []
    target = [
        d
        for d in runs
        if d["scheduler"]["type"] == "none" and d["steps"] == steps and "search_speedup" in d and d.get("lanes", 1) == 1
    ]  # the target's setting: one pack of K (runs with --lanes in RESULTS.md)
    if not target:
        return ["(no run of `benchmarks.packed_search --search` at the target size yet)"]
    d = target[-1]
    rows = {r["arm"]: r for r in d["rows"]}
    arms = [a for a in rows if a != "packed"] + ["packed"]
    lines = [
        f"`{d['command']}` ({d['time']}, {d['cpus']} CPUs, load average {d['load_average']['start']:.1f} at the "
        f"start; generated from benchmarks/results/packed_search_real.json by `python -m benchmarks.report`):",
        "",
        "| seconds summed over the trials | " + " | ".join(_placed(rows[a]) for a in arms) + " |",
        "|---|" + "---|" * len(arms),
    ]
    for key in (*TIME_SPLIT, "other"):
        cells = []
        for a in arms:
            split = rows[a]["time_split"]
            share = split["share"].get(key)
            cells.append(f"{split['seconds'][key]:.1f} ({100 * share:.0f}%)" if share is not None else "-")
        lines.append(f"| {TIME_SPLIT.get(key, 'other (between those)')} | " + " | ".join(cells) + " |")
    for key, label in (
        ("placement_s", "of the waiting: Ray starting trial processes"),
        ("joining_s", "of the waiting: joining the pack"),
    ):
        lines.append(f"| {label} | " + " | ".join(f"{rows[a]['waiting_split'][key]:.1f}" for a in arms) + " |")
    lines.append(
        "| trial processes started | "
        + " | ".join(str(rows[a]["waiting_split"]["trial_processes"]) for a in arms)
        + " |"
    )
    lines.append("| the search's wall time | " + " | ".join(f"{rows[a]['search_s']:.1f}" for a in arms) + " |")
    kept = ("the step-level ceiling", "the search's own trials", "the same packed step", "best perplexity")
    lines += [
        "",
        f"Packed x{d['search_speedup']:.2f} the unpacked arm's speed. "
        + " ".join(f"{n[0].upper()}{n[1:]}." for n in _real_run_notes(d) if n.startswith(kept)),
    ]
    return lines
