"""benchmarks/RESULTS.md's sections on the step itself: its speed on this machine, its memory, and the rows
`benchmarks/gpu_rows.sh` measured on a lent GPU (`python -m benchmarks.report` puts them together)."""

from __future__ import annotations

import json
from pathlib import Path


def step_table(data: dict) -> list[str]:
    lines = [
        "| method | side | s/step | tokens/s | GFLOP/s | % of fp32 matmul peak | speed vs PEFT (fp32) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['side']} | failed: {r['error']} | | | | |")
            continue
        speed = (
            f"x{r['speedup_vs_peft']:.2f}"
            if "speedup_vs_peft" in r
            else ("1.00 (reference)" if r["side"] == "peft" else "no PEFT side in this run")
        )
        side = (
            r["side"].replace("peft", "peft (prompt tuning, same prefix length)")
            if r["method"] == "injection"
            else r["side"]
        )
        digits = 3 if r["median_s"] < 1 else 2
        lines.append(
            f"| {r['method']} | {side} | {r['median_s']:.{digits}f} | {r['tokens_per_s']:.0f} | {r['gflops']:.0f} | "
            f"{100 * r['peak_fraction']:.0f}% | {speed} |"
        )
    return lines


def step_section(data: dict) -> list[str]:
    lines = [
        "## step: training-step throughput vs PEFT",
        "",
        f"`python -m benchmarks.step{' --bf16' if data.get('bf16') else ''}` on {data['time']}: `{data['model']}`, "
        f"batch {data['batch']} x {data['seq_len']} tokens, prefix {data['prefix']}, {data['threads']} threads, median "
        f"of {data['reps']} interleaved steps (after one warm-up each). Machine: {data['machine']}, torch "
        f"{data['torch']}.",
        f"Large fp32 matmul in the same run: {data['matmul_peak_gflops']:.0f} GFLOP/s.",
        "",
    ] + step_table(data)
    rows = {(r["method"], r["side"]): r for r in data["rows"] if "median_s" in r}
    lines += ["", "### Targets", ""]
    for m in ("prompt", "injection"):
        peft = rows.get((m, "peft"))  # PEFT prompt tuning timed in the same interleaved loop as this method's sides
        if peft is None:
            if (m, "embinject") in rows:
                lines.append(
                    f"- {m} vs PEFT prompt tuning: not measured side by side in this run "
                    "(run `python -m benchmarks.step` again)"
                )
            continue
        for side in ("embinject", "embinject+bf16"):
            r = rows.get((m, side))
            if r:
                ratio = peft["median_s"] / r["median_s"]
                lines.append(
                    f"- {m} ({side}) vs PEFT prompt tuning (fp32, same loop): x{ratio:.2f} tokens/s "
                    f"(target x1.25: {'met' if ratio >= 1.25 else f'missed by {1.25 - ratio:.2f}'})"
                )
    fp32 = [r for (m, s), r in rows.items() if s == "embinject"]
    if fp32:
        worst = min(r["peak_fraction"] for r in fp32)
        lines.append(
            f"- achieved FLOP/s of embinject's fp32 steps: at least {100 * worst:.0f}% of the matmul peak "
            f"(target 80%: {'met' if worst >= 0.8 else 'missed'})"
        )
    fractions = [100 * r["peak_fraction"] for (m, s), r in rows.items() if s in ("embinject", "peft")]
    lines += [
        "",
        f"The fp32 steps of both sides run at {min(fractions):.0f}-{max(fractions):.0f}% of the matmul peak, so a "
        "same-precision gain over PEFT can only come",
        "from doing less work: embinject projects only scored positions through the LM head, which saves little at",
        f"{data['seq_len']} tokens per window.",
    ]
    # bf16 gain of each side over its own fp32 step, in this run
    gains = {
        side: [
            rows[(m, side)]["median_s"] / r["median_s"]
            for (m, s), r in rows.items()
            if s == side + "+bf16" and (m, side) in rows
        ]
        for side in ("embinject", "peft")
    }
    ours, theirs = gains["embinject"], gains["peft"]
    if ours:
        lines[-1] += (
            " bf16 autocast (`train.dtype: auto` where the CPU has AVX512-BF16 or AMX) makes embinject's step "
            f"x{min(ours):.2f}-x{max(ours):.2f} faster than its fp32 step in this run"
        )
        if theirs:
            lines[-1] += f"; PEFT's step under the same autocast gains x{min(theirs):.2f}-x{max(theirs):.2f},"
            lines.append("so the bf16 gain is a setting either side can use, not an advantage of the trainer.")
        else:
            lines[-1] += "."
    lines.append("")
    return lines


def memory_section(data: dict) -> list[str]:
    lines = [
        "## memory: concurrent trials on one node",
        "",
        f"`python -m benchmarks.memory` on {data['time']} ({data['steps']} prompt-tuning steps per process, "
        "bundled SmolLM2-135M, batch 8 x 64, one thread each). PSS splits pages shared between processes, so the "
        "summed PSS is what the node spends; RSS - PSS is what the processes share.",
        "",
        "| processes | gradient checkpointing | peak summed PSS (MB) | peak summed RSS (MB) | "
        "shared at the PSS peak (MB) | vs one process, same setting | vs one process without checkpointing | "
        "median step (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        ratio = f"x{r['ratio_to_one']:.2f}" if "ratio_to_one" in r else ""
        plain = f"x{r['ratio_to_one_plain']:.2f}" if "ratio_to_one_plain" in r else ""
        step = f"{r['median_step_s']:.2f}" if "median_step_s" in r else ""
        lines.append(
            f"| {r['processes']} | {'yes' if r.get('gradient_checkpointing') else 'no'} | {r['peak_pss_mb']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['shared_at_peak_mb']:.0f} | {ratio} | {plain} | {step} |"
        )
    two = [r for r in data["rows"] if r["processes"] == 2]
    best = min(two, key=lambda r: r["ratio_to_one"])
    lines += [
        "",
        f"- Target: two concurrent trials at most x1.3 the memory of one: measured x{two[0]['ratio_to_one']:.2f} as "
        f"trials run by default; best x{best['ratio_to_one']:.2f} "
        f"({'with' if best.get('gradient_checkpointing') else 'without'} gradient checkpointing): "
        f"{'met' if best['ratio_to_one'] <= 1.3 else 'missed'}. The frozen weights are shared in every case: "
        "transformers memory-maps the cached safetensors checkpoint, so all processes read the same page-cache pages. "
        "What each trial holds privately is the autograd activations of a 30-layer backward pass and the runtime; "
        "`train.gradient_checkpointing` keeps only each layer's input and recomputes the rest during backward.",
        "",
    ]
    two_ckpt = [r for r in two if r.get("gradient_checkpointing") and "ratio_to_one_plain" in r]
    if two_ckpt:
        r = two_ckpt[0]
        lines += [
            f"- Two trials with `train.gradient_checkpointing: true` take x{r['ratio_to_one_plain']:.2f} the memory of "
            f"one trial run without it ({r['peak_pss_mb']:.0f} MB against {data['rows'][0]['peak_pss_mb']:.0f} MB): on "
            "a memory-bound node that is how to fit twice the trials, at the step-time price below.",
            "",
        ]
    plain_step = [r for r in data["rows"] if r["processes"] == 1 and not r.get("gradient_checkpointing")]
    ckpt_step = [r for r in data["rows"] if r["processes"] == 1 and r.get("gradient_checkpointing")]
    if plain_step and ckpt_step and "median_step_s" in plain_step[0]:
        lines += [
            "- Price of checkpointing: a step takes "
            f"x{ckpt_step[0]['median_step_s'] / plain_step[0]['median_step_s']:.2f} the time (one process).",
            "",
        ]
    return lines


def bf16_gain(d: dict) -> str:
    """The range of embinject's bf16 autocast step speed over its fp32 step, across the methods of one run."""
    rows = {(r["method"], r["side"]): r["median_s"] for r in d["rows"] if "median_s" in r}
    g = [
        t / rows[(m, "embinject+bf16")]
        for (m, side), t in rows.items()
        if side == "embinject" and (m, "embinject+bf16") in rows
    ]
    return f"x{min(g):.2f}-x{max(g):.2f}" if g else "not measured"


def peak_fraction(d: dict) -> float:
    """The largest share of the matmul peak one of embinject's fp32 steps reached."""
    return max(r["peak_fraction"] for r in d["rows"] if r.get("side") == "embinject")


def gpu_step_lines(data: dict) -> list[str]:
    """The step tables at both GPU shapes, and what they say about arithmetic and bf16."""
    lines = []
    for name in ("step_gpu", "step_gpu_large"):
        d = data.get(name)
        if d:
            lines += (
                [
                    f"### step on the GPU: batch {d['batch']} x {d['seq_len']}, prefix {d['prefix']}",
                    "",
                    f"`python -m benchmarks.step --device cuda --bf16 --batch {d['batch']} --seq {d['seq_len']}`, "
                    f"median of {d['reps']} interleaved steps; the device's fp32 matmul (8192^3, no TF32) in the same "
                    f"run: {d['matmul_peak_gflops'] / 1000:.1f} TFLOP/s.",
                    "",
                ]
                + step_table(d)
                + [""]
            )
    small, large = data.get("step_gpu"), data.get("step_gpu_large")
    if small and large:
        lines += [
            f"- At the CPU benchmark's shape (batch {small['batch']} x {small['seq_len']}) an fp32 step reaches at "
            f"most {100 * peak_fraction(small):.0f}% of the GPU's fp32 matmul rate, so arithmetic is not what limits "
            f"it, and under bf16 autocast a step runs at {bf16_gain(small)} the fp32 speed. At batch {large['batch']} "
            f"x {large['seq_len']} an fp32 step reaches {100 * peak_fraction(large):.0f}% and under bf16 autocast "
            f"(what `train.dtype: auto` picks on this GPU) it runs at {bf16_gain(large)} the fp32 speed.",
            "",
        ]
    return lines


def gpu_packing_lines(d: dict, share: dict | None) -> list[str]:
    """benchmarks.packing on the GPU (`share`: the two-trials-per-GPU run, mentioned where there is one)."""
    lines = [
        f"### packing on the GPU: batch {d['batch']} x {d['seq']} per trial",
        "",
        f"`python -m benchmarks.packing --device cuda`, median of {d['reps']}.",
        "",
        "| K trials | K separate steps (s) | one packed step (s) | packed speed-up | max gradient difference |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['k']} | {r['sequential_s']:.3f} | {r['packed_s']:.3f} | x{r['speedup']:.2f} | {r['max_grad_diff']:.1e} |"
        for r in d["rows"]
    ]
    best = max(d["rows"], key=lambda r: r["speedup"])
    one = next((r for r in d["rows"] if r["k"] == 1), None)
    lines += [
        "",
        f"- Packing small trials into one batch is worth x{best['speedup']:.2f} at K={best['k']} here"
        + (
            f" (one packed step of {best['k']} trials takes x{best['packed_s'] / one['sequential_s']:.2f} the time of "
            "one trial's step)"
            if one
            else ""
        )
        + ". The gradient differences are float32 rounding of a larger reduction. A search packs trials with "
        "`tune.pack` (the packed search below)"
        + (f"; two trials per GPU gave x{share['speedup']:.2f} (below)." if share else "."),
        "",
    ]
    return lines


def gpu_share_lines(d: dict) -> list[str]:
    """benchmarks.gpu_share: the same search with one trial per GPU and with two."""
    lines = [
        "### two trials per GPU (`tune.resources.gpus: 0.5`)",
        "",
        f"`python -m benchmarks.gpu_share` on a lent {d.get('device_name', 'GPU')} ({d['time']}, torch "
        f"{d.get('torch', '?')}; not necessarily the card of the rows above): the same {d['trials']}-trial injection "
        "search (fourier encoder, batch "
        f"{d['batch']} x {d['seq']}, {d['steps']} steps, no early stopping, {d['cpus_per_trial']} CPUs per trial) with "
        "one trial per GPU and with two; wall time includes Ray's start and the MLflow records.",
        "",
        "| GPUs per trial | wall (s) | trials ok | summed trial time (s) | trials at once, on average |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['gpus_per_trial']:g} | {r['wall_s']:.1f} | {r['trials_ok']}/{r['trials']} | "
        f"{r['trial_seconds_sum']:.1f} | {r['mean_trials_at_once']:.2f} |"
        for r in d["runs"]
    ]
    same = len({round(r["best_val_perplexity"], 6) for r in d["runs"]}) == 1
    finished = all(r["trials_ok"] == r["trials"] for r in d["runs"])
    shared = d["runs"][-1]
    lines += [
        "",
        f"- With {shared['gpus_per_trial']:g} GPU per trial, {shared['trials_ok']} of {shared['trials']} trials "
        f"finished ({'all' if finished else 'not all'} in both runs), and the best trial's validation perplexity is "
        f"{'identical' if same else 'not identical'} in the two runs (one run each). Wall time "
        f"x{d['speedup']:.2f} {'in favour of' if d['speedup'] > 1 else 'against'} sharing at this size. On average "
        f"{shared['mean_trials_at_once']:.2f} trials ran at once: Ray's start and each trial's start-up are part of "
        "the wall time, so this is a check of the CUDA path and a lower bound, not the throughput of long trials.",
        "",
    ]
    return lines


def gpu_section(results: Path) -> list[str]:
    """The rows `benchmarks/gpu_rows.sh` measured on a lent GPU machine (none of the tests needs one)."""
    files = {n: results / f"{n}.json" for n in ("step_gpu", "step_gpu_large", "packing_gpu", "gpu_share")}
    data = {n: json.loads(f.read_text()) for n, f in files.items() if f.is_file()}
    if not data:
        return []
    first = next(iter(data.values()))
    lines = [
        "## GPU rows",
        "",
        f"`bash benchmarks/gpu_rows.sh` on a lent {first['device_name']} ({first['machine']}, torch "
        f"{data.get('step_gpu', {}).get('torch', first.get('torch', '?'))}). The bundled weights (a 98 MB GGUF) do not "
        "fit one call to that machine (64 MiB), so these rows are timed on `benchmarks.shape_model`: the bundled "
        "SmolLM2-135M's architecture and tokenizer with random weights. Time per step depends on shapes, not values; "
        "the perplexities of such a model mean nothing and none is reported. GPU timings synchronise the device before "
        "and after each timed step.",
        "",
    ]
    lines += gpu_step_lines(data)
    if data.get("packing_gpu"):
        lines += gpu_packing_lines(data["packing_gpu"], data.get("gpu_share"))
    if data.get("gpu_share"):
        lines += gpu_share_lines(data["gpu_share"])
    return lines
