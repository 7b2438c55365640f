"""The packing sections of benchmarks/RESULTS.md: one packed step (`benchmarks.packing`) and packed trials inside a
search (`benchmarks.packed_search`, CPU and GPU files)."""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def packing_section(data: dict) -> list[str]:
    lines = ["## packing: several trials in one batch", "",
             f"`python -m benchmarks.packing` on {data['time']} ({data['device']}, {data['threads']} threads): K prompt-tuning trials, "
             f"each with its own prompt of {data['prefix']}, optimizer and batch of {data['batch']} x {data['seq']}, trained as one "
             f"batch of K x {data['batch']} rows over the shared frozen `{data['model']}` against K separate steps; "
             f"interleaved, median of {data['reps']}.", "",
             "| K trials | K separate steps (s) | one packed step (s) | packed speed-up | max gradient difference |",
             "|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['k']} | {r['sequential_s']:.2f} | {r['packed_s']:.2f} | x{r['speedup']:.2f} | {r['max_grad_diff']:.1e} |")
    packed = [r for r in data["rows"] if r["k"] > 1] or data["rows"]
    best = max(packed, key=lambda r: r["speedup"])
    verdict = (f"worth up to x{best['speedup']:.2f} (K={best['k']})" if best["speedup"] > 1.05 else
               f"not worth it: at best x{best['speedup']:.2f} (K={best['k']}), because a batch of {data['batch']} x {data['seq']} "
               "tokens already keeps the cores' matmuls busy and larger batches only add memory traffic")
    gpu = HERE / "results" / "packing_gpu.json"
    on_gpu = ("see the GPU rows below for what it gives on a GPU" if gpu.is_file() else
              "on a GPU, where one small trial leaves most of the device idle, it has not been measured")
    lines += ["", f"- Packing is exact (every trial gets the gradient it would get alone; max difference in the table) and, on this "
              f"{data['device'].upper()}, {verdict}. What it saves regardless is the per-trial process and its private memory "
              f"(see memory above); {on_gpu}. A search packs trials with `tune.pack` (the packed search below).", ""]
    return lines


def _arm(arm: str) -> str:
    return {"one": "one trial per device", "packed": "packed"}.get(arm, f"{arm} device per trial")


def packed_search_section(results: Path) -> list[str]:
    files = [results / n for n in ("packed_search.json", "packed_search_gpu.json", "packed_search_gpu_bf16.json")]
    runs = [json.loads(f.read_text()) for f in files if f.is_file()]
    if not runs:
        return []
    lines = ["## packed trials in a search", "",
             "`python -m benchmarks.packed_search`: the same trials (a seeded random sample of search_spaces/injection.yaml's "
             "space, encoders that need no download) on the real bundled SmolLM2-135M, fixed steps, no early stopping, trained "
             "with one trial per device (one worker process), fractional devices (several worker processes, each with its "
             "own copy of the LM) and packed (one process, one LM, K trials per step, the next trial taking a finished one's "
             "place). Wall time includes every worker's start; peak memory (PyTorch's allocations on a GPU, the resident set on a "
             "CPU; - where not recorded) is summed over an arm's processes.", ""]
    for d in runs:
        lines += [f"### {d['device_name']} ({d['device']}, {d['dtype']}), {d['time']}", "",
                  f"{d['trials']} trials x {d['steps']} steps, batch {d['batch']} x {d['seq_len']}, K = {d['pack']}, "
                  f"torch {d['torch']}, {d['cpus']} CPUs.", "",
                  "| arm | processes | wall (s) | trials per hour | peak memory (MiB) | best val perplexity |", "|---|---|---|---|---|---|"]
        for r in d["rows"]:
            mean = f" (mean pack {r['mean_pack']:.1f})" if "mean_pack" in r else ""
            memory = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] else "-"
            lines.append(f"| {_arm(r['arm'])}{mean} | {r['processes']} | {r['wall_s']:.1f} | {r['trials_per_hour']:.0f} | "
                         f"{memory} | {r['best_val_perplexity']:.4f} |")
        notes = []
        if "speedup_vs_one_per_device" in d:
            notes.append(f"packed against one trial per device: x{d['speedup_vs_one_per_device']:.2f} trials per hour, best "
                         f"perplexity {100 * d['best_ppl_change']:+.2f}%")
        if "speedup_vs_best_fractional" in d:
            notes.append(f"against the best fractional setting ({d['best_fractional']}): x{d['speedup_vs_best_fractional']:.2f}")
        missing = [a for a in ("one", "0.5", "0.25", "0.1", "packed") if a not in {r["arm"] for r in d["rows"]}]
        if missing and d["device"] == "cuda":
            notes.append(f"not run: {', '.join(_arm(a) for a in missing)} (the device time ran out)")
        lines += ["", "- " + "; ".join(notes) + ".", ""] if notes else [""]
    return lines


def pack_exactness_section(data: dict) -> list[str]:
    """Packed against unpacked on the real model: one step, and the curves against the unpacked run's own spread."""
    lines = ["## pack_exactness: a packed trial against its unpacked run on the real model", "",
             f"`python -m benchmarks.pack_exactness` on {data['time']} ({data['machine']}, torch {data['torch']}): "
             f"`{data['model']}`, {data['dtype']}, data `{data['data']}`, one trial per encoder of the quickstart space "
             f"(the first is its points_to_evaluate trial), {data['steps']} steps, evaluation every "
             f"{data['eval_every']}. Step: one packed step of all trials against each trial's step alone (largest "
             "relative difference of the NLL and of any gradient entry). Curves: largest relative difference of the "
             "validation perplexity over the evaluations, against the trial alone with 1 torch thread.", "",
             "| trial | step: NLL | step: gradients | first evaluation: packed | first evaluation: alone, 2 threads "
             "| curve: packed (2 threads) | curve: alone, 2 threads |", "|---|---|---|---|---|---|---|"]
    for name, t in data["trials"].items():
        lines.append(f"| {name} | {t['step']['nll_rel']:.1e} | {t['step']['grad_rel']:.1e} | "
                     f"{t['first_eval']['packed_vs_solo']:.1e} | {t['first_eval']['solo_threads_vs_solo']:.1e} | "
                     f"{t['packed_vs_solo']:.1e} | {t['solo_threads_vs_solo']:.1e} |")
    worst_packed = max(t["packed_vs_solo"] for t in data["trials"].values())
    worst_threads = max(t["solo_threads_vs_solo"] for t in data["trials"].values())
    lines += ["", f"- A packed step is the unpacked step up to float32 rounding (matrix products of another shape sum in "
              f"another order). Over {data['steps']} steps training amplifies rounding: packed curves differ from the "
              f"unpacked ones by up to {worst_packed:.1e}, and the same trial alone at 2 threads instead of 1 by up to "
              f"{worst_threads:.1e}. Packing changes a trial no more than the thread count of an unpacked run does; "
              "the tests check 1e-4 through the real search over a few steps, where rounding has not grown.", ""]
    return lines
