"""The compile section of benchmarks/RESULTS.md (`benchmarks.compile`: torch.compile of the frozen LM's decoder)."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

TRIAL_STEPS = (96, 300)  # a search's trial length, the range the search spaces' budgets give
EXACT = 1e-5  # relative difference of the loss against eager that still counts as the same training
# evaluation passes of a trial: 4 evaluations of the 64-window subset (train.eval_windows) and the final one of all
# 256 windows (data.val_samples' default), 32 windows a pass (train.eval_batch_size)
EVAL_PASSES = 4 * 64 // 32 + 256 // 32


def _cost(row: dict, steps: int, cache: str) -> float:
    """Seconds of a trial of `steps` compiled training steps and EVAL_PASSES evaluation passes, compiles included,
    over the same trial eager."""
    compiled = (
        row[f"compile_train_s_{cache}"]
        + row[f"compile_eval_s_{cache}"]
        + steps * row["compiled_train_s"]
        + EVAL_PASSES * row["compiled_eval_s"]
    )
    return compiled / (steps * row["eager_train_s"] + EVAL_PASSES * row["eager_eval_s"])


def _breakeven(value) -> str:
    return "never" if value is None else f"{value:,.0f}"


def _fixed_table(data: dict) -> list[str]:
    lines = [
        "| case | dynamic | step eager / compiled (s) | speed | compile s (empty / filled cache) | break-even steps "
        "(empty / filled) | x time of a trial of 96 / 300 steps, compiles included (filled cache) | eval pass eager / "
        "compiled (s) | eval compile s (empty / filled) | max rel. diff loss / gradients / eval NLL |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        cold = r["cold"]
        lines.append(
            f"| {r['case']} ({r['model']}, K={r['k']}, {r['batch']} x {r['seq']}) | {r['dynamic']} | "
            f"{r['eager_train_s']:.4f} / {r['compiled_train_s']:.4f} | "
            f"x{r['eager_train_s'] / r['compiled_train_s']:.2f} | {r['compile_train_s_cold']:.1f} / "
            f"{r['compile_train_s_warm']:.1f} | {_breakeven(r['break_even_steps_cold'])} / "
            f"{_breakeven(r['break_even_steps_warm'])} | x{_cost(r, TRIAL_STEPS[0], 'warm'):.2f} / "
            f"x{_cost(r, TRIAL_STEPS[1], 'warm'):.2f} | {r['eager_eval_s']:.4f} / {r['compiled_eval_s']:.4f} | "
            f"{r['compile_eval_s_cold']:.1f} / {r['compile_eval_s_warm']:.1f} | "
            f"{cold['loss_rel_diff']:.1e} / {cold['grad_rel_diff']:.1e} / {cold['eval_nll_rel_diff']:.1e} |"
        )
    return lines


def _sequence_table(data: dict) -> list[str]:
    rows = [r for r in data["rows"] if "sequence" in r]
    if not rows:
        return []
    s0 = rows[0]["sequence"]
    lines = [
        "",
        f"Packs changing as members join and leave: {len(s0['packs'])} packed steps of "
        f"{', '.join(map(str, s0['packs']))} members (at most the case's K), members' prefix lengths "
        f"{', '.join(map(str, s0['prefixes']))}; compiled from nothing in memory (inductor's cache on disk holding "
        "the fixed pack's graphs), then the same steps again, median of 3. torch.compile falls back to eager for a "
        f"frame after {data['recompile_limit']} recompiles (`recompile_limit`).",
        "",
        "| case | dynamic | graphs compiled | first pass eager / compiled, compiles included (s) | "
        "again eager / compiled (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["sequence"]
        lines.append(
            f"| {r['case']} | {r['dynamic']} | {s['graphs']} | "
            f"{s['eager_first_s']:.2f} / {s['compiled_first_s']:.1f} | {s['eager_s']:.2f} / {s['compiled_s']:.2f} |"
        )
    return lines


def _verdict(data: dict) -> list[str]:
    """Compiling pays where a trial of TRIAL_STEPS[0] steps is faster compiles included, with inductor's cache empty:
    a search's trials differ in shape (prefix lengths, pack sizes), so a trial often meets a shape no earlier one
    compiled. Where it pays only with the cache filled, the section says so and by how much."""
    exact = [r for r in data["rows"] if r["cold"]["loss_rel_diff"] <= EXACT and r["warm"]["loss_rel_diff"] <= EXACT]

    def pays(r: dict, cache: str) -> bool:
        changing = "sequence" in r and r["sequence"]["compiled_first_s"] >= r["sequence"]["eager_first_s"]
        return _cost(r, TRIAL_STEPS[0], cache) < 1 and not changing

    paying = [r for r in exact if pays(r, "cold")]
    filled = [r for r in exact if pays(r, "warm") and r not in paying]
    lines = [
        "",
        f'- A trial\'s time (column "x time") counts its steps and {EVAL_PASSES} evaluation passes (4 evaluations '
        "of the 64-window subset and the final one of 256 windows, 32 a pass), each side's compiles included.",
        f"- Exact: {len(exact)} of {len(data['rows'])} settings within {EXACT:g} relative on the loss against eager "
        "(float32; inductor reorders reductions, so not bit for bit).",
    ]
    if paying:
        lines.append(
            f"- Pays for itself within a trial of {TRIAL_STEPS[0]} steps, compiles included, even with inductor's "
            "cache empty: " + ", ".join(f"{r['case']} (dynamic {r['dynamic']})" for r in paying) + "."
        )
        return lines + [""]
    for r in filled:
        lines.append(
            f"- {r['case']} (dynamic {r['dynamic']}) pays only where inductor's cache already holds its shape: a "
            f"trial of {TRIAL_STEPS[0]} steps takes x{_cost(r, TRIAL_STEPS[0], 'warm'):.2f} the eager time then, "
            f"but x{_cost(r, TRIAL_STEPS[0], 'cold'):.2f} with the cache empty "
            f"(x{_cost(r, TRIAL_STEPS[1], 'cold'):.2f} over {TRIAL_STEPS[1]} steps): a machine's first trial; a trial "
            "whose prefix length or pack size no earlier trial had meets a shape the cache does not hold either (not "
            "timed apart here)."
        )
    if not filled:
        best = min(data["rows"], key=lambda r: _cost(r, TRIAL_STEPS[1], "warm"))
        lines.append(
            f"- Does not pay within a search's trial of {TRIAL_STEPS[0]} steps, compiles included. At best "
            f"({best['case']}, dynamic {best['dynamic']}) a trial of {TRIAL_STEPS[0]} steps takes "
            f"x{_cost(best, TRIAL_STEPS[0], 'warm'):.2f} the eager time with inductor's cache filled, and one of "
            f"{TRIAL_STEPS[1]} steps x{_cost(best, TRIAL_STEPS[1], 'warm'):.2f}; with the cache empty (a "
            f"machine's first trial) x{_cost(best, TRIAL_STEPS[1], 'cold'):.2f}."
        )
    lines.append(
        "- A pack whose members change shape compiles again (table above). So embinject trains eager: no "
        "`train.compile` key."
    )
    return lines + [""]


def _block(data: dict, command: str) -> list[str]:
    device = data["device"] if data["device_name"] == data["device"] else f"{data['device']}: {data['device_name']}"
    lines = [
        f"`{command}` on {data['time']} ({device}, {data['threads']} thread(s), torch "
        f"{data['torch']}, mode {data['mode']}): the decoder's forward compiled, the LM head, loss and packing eager; "
        f"eager and compiled steps interleaved on the same model, median of {data['reps']}. Compile seconds: the first "
        "compiled call less an eager one, with inductor's cache on disk empty (a machine's first trial) and filled (a "
        f"later trial process). Evaluation: a packed pass of {data['eval_batch']} windows per member without gradient. "
        f"Machine: {data['machine']} (shared: absolute seconds are noisy, ratios are from the same run).",
        "",
    ]
    return lines + _fixed_table(data) + _sequence_table(data) + _verdict(data)


def compile_section(data: dict) -> list[str]:
    lines = ["## compile: torch.compile of the frozen LM's decoder", ""] + _block(data, "python -m benchmarks.compile")
    for name, flags in (
        ("compile_gpu", "--device cuda"),
        ("compile_gpu_cudagraphs", "--device cuda --mode reduce-overhead"),
    ):
        gpu = HERE / "results" / f"{name}.json"
        if gpu.is_file():  # written by benchmarks/gpu_rows.sh
            lines += [f"### on the GPU ({'CUDA graphs' if 'mode' in flags else 'inductor'})", ""]
            lines += _block(json.loads(gpu.read_text()), f"python -m benchmarks.compile {flags}")
    return lines
