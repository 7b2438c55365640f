"""Generate benchmarks/RESULTS.md from the JSON files in benchmarks/results/ (no typed-in numbers).

    python -m benchmarks.report
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from embinject.fsutil import atomic_write_text
from .report_compile import compile_section
from .report_packing import pack_exactness_section, packed_search_section, packing_section
from .report_search import efficiency_section, many_trials_section, warm_start_section

HERE = Path(__file__).resolve().parent


def step_table(data: dict) -> list[str]:
    lines = ["| method | side | s/step | tokens/s | GFLOP/s | % of fp32 matmul peak | speed vs PEFT (fp32) |",
             "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['side']} | failed: {r['error']} | | | | |")
            continue
        speed = f"x{r['speedup_vs_peft']:.2f}" if "speedup_vs_peft" in r else ("1.00 (reference)" if r["side"] == "peft" else "no PEFT side in this run")
        side = r["side"].replace("peft", "peft (prompt tuning, same prefix length)") if r["method"] == "injection" else r["side"]
        digits = 3 if r["median_s"] < 1 else 2
        lines.append(f"| {r['method']} | {side} | {r['median_s']:.{digits}f} | {r['tokens_per_s']:.0f} | {r['gflops']:.0f} | "
                     f"{100 * r['peak_fraction']:.0f}% | {speed} |")
    return lines


def step_section(data: dict) -> list[str]:
    lines = ["## step: training-step throughput vs PEFT", "",
             f"`python -m benchmarks.step{' --bf16' if data.get('bf16') else ''}` on {data['time']}: `{data['model']}`, batch "
             f"{data['batch']} x {data['seq_len']} tokens, prefix {data['prefix']}, {data['threads']} threads, median of "
             f"{data['reps']} interleaved steps (after one warm-up each). Machine: {data['machine']}, torch {data['torch']}.",
             f"Large fp32 matmul in the same run: {data['matmul_peak_gflops']:.0f} GFLOP/s.", ""] + step_table(data)
    rows = {(r["method"], r["side"]): r for r in data["rows"] if "median_s" in r}
    lines += ["", "### Targets", ""]
    for m in ("prompt", "injection"):
        peft = rows.get((m, "peft"))  # PEFT prompt tuning timed in the same interleaved loop as this method's sides
        if peft is None:
            if (m, "embinject") in rows:
                lines.append(f"- {m} vs PEFT prompt tuning: not measured side by side in this run (run `python -m benchmarks.step` again)")
            continue
        for side in ("embinject", "embinject+bf16"):
            r = rows.get((m, side))
            if r:
                ratio = peft["median_s"] / r["median_s"]
                lines.append(f"- {m} ({side}) vs PEFT prompt tuning (fp32, same loop): x{ratio:.2f} tokens/s "
                             f"(target x1.25: {'met' if ratio >= 1.25 else f'missed by {1.25 - ratio:.2f}'})")
    fp32 = [r for (m, s), r in rows.items() if s == "embinject"]
    if fp32:
        worst = min(r["peak_fraction"] for r in fp32)
        lines.append(f"- achieved FLOP/s of embinject's fp32 steps: at least {100 * worst:.0f}% of the matmul peak "
                     f"(target 80%: {'met' if worst >= 0.8 else 'missed'})")
    fractions = [100 * r["peak_fraction"] for (m, s), r in rows.items() if s in ("embinject", "peft")]
    lines += ["", f"The fp32 steps of both sides run at {min(fractions):.0f}-{max(fractions):.0f}% of the matmul peak, so a "
              "same-precision gain over PEFT can only come",
              "from doing less work: embinject projects only scored positions through the LM head, which saves little at",
              f"{data['seq_len']} tokens per window."]
    # bf16 gain of each side over its own fp32 step, in this run
    gains = {side: [rows[(m, side)]["median_s"] / r["median_s"] for (m, s), r in rows.items()
                    if s == side + "+bf16" and (m, side) in rows] for side in ("embinject", "peft")}
    ours, theirs = gains["embinject"], gains["peft"]
    if ours:
        lines[-1] += (f" bf16 autocast (`train.dtype: auto` where the CPU has AVX512-BF16 or AMX) makes embinject's step x{min(ours):.2f}"
                      f"-x{max(ours):.2f} faster than its fp32 step in this run")
        if theirs:
            lines[-1] += f"; PEFT's step under the same autocast gains x{min(theirs):.2f}-x{max(theirs):.2f},"
            lines.append("so the bf16 gain is a setting either side can use, not an advantage of the trainer.")
        else:
            lines[-1] += "."
    lines.append("")
    return lines


def memory_section(data: dict) -> list[str]:
    lines = ["## memory: concurrent trials on one node", "",
             f"`python -m benchmarks.memory` on {data['time']} ({data['steps']} prompt-tuning steps per process, "
             "bundled SmolLM2-135M, batch 8 x 64, one thread each). PSS splits pages shared between processes, so the summed "
             "PSS is what the node spends; RSS - PSS is what the processes share.", "",
             "| processes | gradient checkpointing | peak summed PSS (MB) | peak summed RSS (MB) | shared at the PSS peak (MB) | vs one process, same setting | vs one process without checkpointing | median step (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        ratio = f"x{r['ratio_to_one']:.2f}" if "ratio_to_one" in r else ""
        plain = f"x{r['ratio_to_one_plain']:.2f}" if "ratio_to_one_plain" in r else ""
        step = f"{r['median_step_s']:.2f}" if "median_step_s" in r else ""
        lines.append(f"| {r['processes']} | {'yes' if r.get('gradient_checkpointing') else 'no'} | {r['peak_pss_mb']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['shared_at_peak_mb']:.0f} | {ratio} | {plain} | {step} |")
    two = [r for r in data["rows"] if r["processes"] == 2]
    best = min(two, key=lambda r: r["ratio_to_one"])
    lines += ["", f"- Target: two concurrent trials at most x1.3 the memory of one: measured x{two[0]['ratio_to_one']:.2f} as trials run "
              f"by default; best x{best['ratio_to_one']:.2f} ({'with' if best.get('gradient_checkpointing') else 'without'} "
              f"gradient checkpointing): {'met' if best['ratio_to_one'] <= 1.3 else 'missed'}. The frozen weights are shared in "
              "every case: transformers memory-maps the cached safetensors checkpoint, so all processes read the same page-cache "
              "pages. What each trial holds privately is the autograd activations of a 30-layer backward pass and the runtime; "
              "`train.gradient_checkpointing` keeps only each layer's input and recomputes the rest during backward.", ""]
    two_ckpt = [r for r in two if r.get("gradient_checkpointing") and "ratio_to_one_plain" in r]
    if two_ckpt:
        r = two_ckpt[0]
        lines += [f"- Two trials with `train.gradient_checkpointing: true` take x{r['ratio_to_one_plain']:.2f} the memory of one trial "
                  f"run without it ({r['peak_pss_mb']:.0f} MB against {data['rows'][0]['peak_pss_mb']:.0f} MB): on a memory-bound node "
                  "that is how to fit twice the trials, at the step-time price below.", ""]
    plain_step = [r for r in data["rows"] if r["processes"] == 1 and not r.get("gradient_checkpointing")]
    ckpt_step = [r for r in data["rows"] if r["processes"] == 1 and r.get("gradient_checkpointing")]
    if plain_step and ckpt_step and "median_step_s" in plain_step[0]:
        lines += [f"- Price of checkpointing: a step takes x{ckpt_step[0]['median_step_s'] / plain_step[0]['median_step_s']:.2f} "
                  "the time (one process).", ""]
    return lines


def overhead_section(data: dict) -> list[str]:
    m = data["median"]
    wall = m["wall_s"]
    share = m["non_step_share"]
    verdict = "met" if share < 0.10 else f"missed by {100 * (share - 0.10):.1f} points"
    subset = (f" Intermediate evaluations scored {data['eval_windows']} of the validation windows (`train.eval_windows`)."
              if data.get("eval_windows") else "")
    lines = ["## trial_overhead: where a trial's time goes", "",
             f"`python -m benchmarks.trial_overhead` on {data['time']}: {len(data['trials'])} trials of the quickstart search, "
             f"{data['steps_per_trial']} steps each, one at a time, no early stopping. Medians over trials; wall time as the "
             "driver saw it (MLflow child run start to end).", "",
             "| part | seconds | share of trial wall |", "|---|---|---|"]
    for key, label in (("process_start_s", "trial process start until the trainable runs (actor, imports)"),
                       ("startup_in_trainable_s", "start-up inside the trainable (model, cached data/embeddings, adapter)"),
                       ("training_steps_s", "training steps"), ("evaluation_s", "evaluations"),
                       ("other_s", "reporting, checkpoints, MLflow, teardown")):
        lines.append(f"| {label} | {m[key]:.2f} | {100 * m[key] / wall:.1f}% |")
    lines += [f"| **trial wall** | {wall:.2f} | 100% |", "",
              f"- Time from trial start to its first step: {m['time_to_first_step_s']:.2f} s.",
              f"- Share of trial wall that is not training steps: {100 * m['non_step_share']:.1f}% (target under 10%, "
              f"evaluations included: {verdict}).{subset}",
              *([] if share < 0.10 else [
                  f"- Why: evaluations are {100 * m['evaluation_s'] / wall:.1f}% of the trial, everything else that is not a "
                  f"step {100 * (share * wall - m['evaluation_s']) / wall:.1f}%. Under 10% needs the evaluations to cost at most "
                  f"{0.10 * wall - (share * wall - m['evaluation_s']):.1f} s per trial instead of {m['evaluation_s']:.1f} s: fewer "
                  "evaluations, or fewer windows per intermediate evaluation (`train.eval_windows`), and both change the "
                  "scores ASHA and early stopping decide on (eval_subset measures how much)."]),
              f"- The whole search took {data['search_wall_s']:.1f} s, of which {data['warm_cache_s'] or 0:.1f} s were the "
              "shared cache warm-up done once in the driver (model conversion check, windows, embeddings, baseline).", ""]
    return lines


def peer_section(data: dict) -> list[str]:
    ours, hf, asha = data["embinject"], data["hf_trainer_ray_peft"], data.get("embinject_asha")
    ours32, hf_vocab = data.get("embinject_float32"), data.get("hf_trainer_ray_peft_vocab_init")
    speed = data["speedup"]
    reps = data.get("repeats", 1)

    def spread(run: dict, key: str, fmt: str) -> str:
        values = run.get(key)
        return "" if not values or len(values) < 2 else " (" + ", ".join(format(v, fmt) for v in values) + ")"

    def row(name: str, stopping: str, run: dict) -> str:
        return (f"| {name} | {stopping} | {run['wall_s']:.1f}{spread(run, 'walls_s', '.1f')} | "
                f"{run['best_val_perplexity']:.3f}{spread(run, 'best_val_perplexities', '.2f')} | {run['best_params']} |")

    lines = ["## peer: the same search through Trainer.hyperparameter_search", "",
             f"`python -m benchmarks.peer` on {data['time']}: prompt tuning over learning rate and prompt length, "
             f"{data['trials']} trials of {data['steps']} steps (batch {data['batch']} x {data['seq_len']} tokens, "
             f"{data['train_windows']} training / {data['val_windows']} validation windows), 1 CPU per trial, 2 at a time; "
             f"every arm {reps} time(s), interleaved: median wall clock (each repeat in brackets) and the best perplexity of "
             "the median run (each repeat's in brackets).", "",
             "| search | early stopping | wall clock (s) | best val perplexity | best params |", "|---|---|---|---|---|",
             row("`embinject tune` as users run it (`train.dtype: auto`)", "none (same work as HF)", ours),
             row("`Trainer.hyperparameter_search(backend=\"ray\")` + PEFT, defaults (float32, RANDOM init)", "none", hf)]
    if ours32:
        lines.append(row("`embinject tune` at float32 (same precision as HF)", "none", ours32))
    if hf_vocab:
        lines.append(row("`Trainer.hyperparameter_search` + PEFT with SAMPLE_VOCAB init (embinject's kind)", "none", hf_vocab))
    if asha:
        lines.append(row("`embinject tune` as users run it", "ASHA, evaluations every quarter", asha))
    met = speed >= 1.5
    lines += ["", f"- Equal work, each side as users run it by default: x{speed:.2f} the speed of the HF search "
              f"(target x1.5: {'met' if met else f'missed by {1.5 - speed:.2f}'})."]
    if ours32:
        walls = lambda run: run.get("walls_s") or [run["wall_s"]]  # noqa: E731
        apart = min(walls(hf)) > max(walls(ours32)) or max(walls(hf)) < min(walls(ours32))
        lines.append(f"- Same precision (float32 on both sides): x{data['speedup_same_precision']:.2f}; the repeats' wall "
                     f"clocks {'do not overlap' if apart else 'overlap'} ({min(walls(ours32)):.1f}-{max(walls(ours32)):.1f} s "
                     f"against {min(walls(hf)):.1f}-{max(walls(hf)):.1f} s), so "
                     + ("the two trainers differ at equal precision too." if apart else
                        "at equal precision neither is shown faster, and the gain at equal work comes with bf16 autocast "
                        "where the CPU has bf16 instructions, which embinject runs by default and the HF Trainer only when "
                        "asked (`bf16=True`)."))
    if hf_vocab:
        lines.append(f"- With the same kind of prompt initialisation on both sides, HF's best perplexity is "
                     f"{hf_vocab['best_val_perplexity']:.2f} against embinject's {ours['best_val_perplexity']:.2f}; with HF's "
                     f"default (RANDOM) init it is {hf['best_val_perplexity']:.2f}. Each is one search's best, repeated "
                     f"{data.get('repeats', 1)} time(s) with the same draws, not an interval over seeds: with the same "
                     "init the two searches end "
                     + ("within 1% of each other" if abs(hf_vocab["best_val_perplexity"] / ours["best_val_perplexity"] - 1) <= 0.01
                        else f"{100 * abs(hf_vocab['best_val_perplexity'] / ours['best_val_perplexity'] - 1):.1f}% apart")
                     + f", against {100 * abs(hf['best_val_perplexity'] / ours['best_val_perplexity'] - 1):.0f}% apart with HF's "
                     "default init.")
    if asha:
        reached = asha.get("seconds_to_hf_best")
        to_best = data.get("speedup_to_hf_best")
        lines.append(f"- With its default early stopping the whole embinject search is x{data['speedup_asha']:.2f} faster; it first "
                     f"reached the HF search's best perplexity after "
                     + (f"{reached:.1f} s, x{to_best:.2f} sooner than the HF search finished." if reached is not None else "never."))
    lines.append("")
    return lines


def gpu_section(results: Path) -> list[str]:
    """The rows `benchmarks/gpu_rows.sh` measured on a lent GPU machine (none of the tests needs one)."""
    files = {n: results / f"{n}.json" for n in ("step_gpu", "step_gpu_large", "packing_gpu", "gpu_share")}
    data = {n: json.loads(f.read_text()) for n, f in files.items() if f.is_file()}
    if not data:
        return []
    first = next(iter(data.values()))
    lines = ["## GPU rows", "",
             f"`bash benchmarks/gpu_rows.sh` on a lent {first['device_name']} ({first['machine']}, torch "
             f"{data.get('step_gpu', {}).get('torch', first.get('torch', '?'))}). The bundled weights (a 98 MB GGUF) do not fit "
             "one call to that machine (64 MiB), so these rows are timed on `benchmarks.shape_model`: the bundled SmolLM2-135M's architecture and tokenizer "
             "with random weights. Time per step depends on shapes, not values; the perplexities of such a model mean nothing "
             "and none is reported. GPU timings synchronise the device before and after each timed step.", ""]
    for name in ("step_gpu", "step_gpu_large"):
        d = data.get(name)
        if d:
            lines += [f"### step on the GPU: batch {d['batch']} x {d['seq_len']}, prefix {d['prefix']}", "",
                      f"`python -m benchmarks.step --device cuda --bf16 --batch {d['batch']} --seq {d['seq_len']}`, median of "
                      f"{d['reps']} interleaved steps; the device's fp32 matmul (8192^3, no TF32) in the same run: "
                      f"{d['matmul_peak_gflops'] / 1000:.1f} TFLOP/s.", ""] + step_table(d) + [""]
    small, large = data.get("step_gpu"), data.get("step_gpu_large")
    if small and large:
        frac = lambda d: max(r["peak_fraction"] for r in d["rows"] if r.get("side") == "embinject")  # noqa: E731

        def bf16_gain(d: dict) -> str:
            rows = {(r["method"], r["side"]): r["median_s"] for r in d["rows"] if "median_s" in r}
            g = [t / rows[(m, "embinject+bf16")] for (m, side), t in rows.items() if side == "embinject" and (m, "embinject+bf16") in rows]
            return f"x{min(g):.2f}-x{max(g):.2f}" if g else "not measured"

        lines += [f"- At the CPU benchmark's shape (batch {small['batch']} x {small['seq_len']}) an fp32 step reaches at most "
                  f"{100 * frac(small):.0f}% of the GPU's fp32 matmul rate, so arithmetic is not what limits it, and under bf16 "
                  f"autocast a step runs at {bf16_gain(small)} the fp32 speed. At batch {large['batch']} x {large['seq_len']} an fp32 step "
                  f"reaches {100 * frac(large):.0f}% and under bf16 autocast (what `train.dtype: auto` picks on this GPU) "
                  f"it runs at {bf16_gain(large)} the fp32 speed.", ""]
    d = data.get("packing_gpu")
    if d:
        lines += [f"### packing on the GPU: batch {d['batch']} x {d['seq']} per trial", "",
                  f"`python -m benchmarks.packing --device cuda`, median of {d['reps']}.", "",
                  "| K trials | K separate steps (s) | one packed step (s) | packed speed-up | max gradient difference |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['k']} | {r['sequential_s']:.3f} | {r['packed_s']:.3f} | x{r['speedup']:.2f} | {r['max_grad_diff']:.1e} |"
                  for r in d["rows"]]
        best = max(d["rows"], key=lambda r: r["speedup"])
        one = next((r for r in d["rows"] if r["k"] == 1), None)
        share = data.get("gpu_share")
        lines += ["", f"- Packing small trials into one batch is worth x{best['speedup']:.2f} at K={best['k']} here"
                  + (f" (one packed step of {best['k']} trials takes x{best['packed_s'] / one['sequential_s']:.2f} the time of "
                     "one trial's step)" if one else "")
                  + ". The gradient differences are float32 rounding of a larger reduction. A search packs trials with "
                  "`tune.pack` (the packed search below)" + (f"; two trials per GPU gave x{share['speedup']:.2f} (below)." if share else "."), ""]
    d = data.get("gpu_share")
    if d:
        lines += ["### two trials per GPU (`tune.resources.gpus: 0.5`)", "",
                  f"`python -m benchmarks.gpu_share` on a lent {d.get('device_name', 'GPU')} ({d['time']}, torch "
                  f"{d.get('torch', '?')}; not necessarily the card of the rows above): the same {d['trials']}-trial injection "
                  "search (fourier encoder, batch "
                  f"{d['batch']} x {d['seq']}, {d['steps']} steps, no early stopping, {d['cpus_per_trial']} CPUs per trial) with one "
                  "trial per GPU and with two; wall time includes Ray's start and the MLflow records.", "",
                  "| GPUs per trial | wall (s) | trials ok | summed trial time (s) | trials at once, on average |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['gpus_per_trial']:g} | {r['wall_s']:.1f} | {r['trials_ok']}/{r['trials']} | {r['trial_seconds_sum']:.1f} | "
                  f"{r['mean_trials_at_once']:.2f} |" for r in d["runs"]]
        same = len({round(r["best_val_perplexity"], 6) for r in d["runs"]}) == 1
        finished = all(r["trials_ok"] == r["trials"] for r in d["runs"])
        shared = d["runs"][-1]
        lines += ["", f"- With {shared['gpus_per_trial']:g} GPU per trial, {shared['trials_ok']} of {shared['trials']} trials "
                  f"finished ({'all' if finished else 'not all'} in both runs), and the best trial's validation perplexity is "
                  f"{'identical' if same else 'not identical'} in the two runs (one run each). Wall time "
                  f"x{d['speedup']:.2f} {'in favour of' if d['speedup'] > 1 else 'against'} sharing at this size. On average "
                  f"{shared['mean_trials_at_once']:.2f} trials ran at once: Ray's start and each trial's start-up are part of "
                  "the wall time, so this is a check of the CUDA path and a lower bound, not the throughput of long trials.", ""]
    return lines


def quickstart_section(data: dict) -> list[str]:
    b, a = data["runs"]
    verdict = "met" if data["speedup"] >= 2 else f"missed: x{data['speedup']:.2f} of the x2.00 asked"
    ppl = abs(data["best_ppl_change"]) <= 0.01
    lines = ["## quickstart: `make tune` before and after", "",
             f"`python -m benchmarks.quickstart` on {data['time']}: the quickstart search at {data['before_commit'][:7]} "
             f"(before the trials-per-hour work) and at {data['after_commit']}, one after the other, each with its own "
             f"empty cache, same trials and budget. Machine: {data['machine']}.", "",
             "| run | wall (s) | trials | stopped early | best val perplexity | frozen baseline |", "|---|---|---|---|---|---|"]
    for r in (b, a):
        lines.append(f"| {r['label']} | {r['wall_s']:.1f} | {r['trials']} | {r['stopped_early']} | "
                     f"{r['best_val_perplexity']:.3f} | {r['baseline_perplexity']:.3f} |")
    lines += ["", f"- speedup x{data['speedup']:.2f} (target: half the wall time, x2: {verdict}).",
              f"- best validation perplexity changed by {100 * data['best_ppl_change']:+.2f}% "
              f"(target within 1%: {'met' if ppl else 'missed'})."]
    overhead, precision = (HERE / "results" / "trial_overhead.json"), (HERE / "results" / "precision.json")
    if data["speedup"] < 2 and overhead.is_file() and precision.is_file():
        steps = json.loads(overhead.read_text())["median"]
        rows = json.loads(precision.read_text())["rows"]
        step_gain = statistics.median(r["step_speedup"] for r in rows if r["method"] == "injection")
        lines.append(f"- Why the speedup is short of x2: training steps are {100 * steps['training_steps_s'] / steps['wall_s']:.0f}% "
                     f"of a quickstart trial (trial_overhead below) and bf16 autocast makes them x{step_gain:.2f} faster on this "
                     "host (precision below, injection, median over its seeds); the rest of the gain is cheaper evaluations and start-ups and "
                     f"early stopping ({b['stopped_early']} then {a['stopped_early']} of {a['trials']} trials stopped). With the "
                     "same trials and steps, x2 needs steps twice as fast, which this CPU's bf16 does not give.")
    if not ppl:
        lines.append("- Why the best perplexity moved: the two searches train under different precision (float32 before, "
                     "bf16 after), so every trial's trajectory differs and TPE, which samples from the results so far, "
                     "draws different trials after its first ones; the single search per side does not separate that "
                     "from a systematic cost of bf16 (see precision).")
    return lines + [""]


def precision_section(data: dict) -> list[str]:
    seeds = data.get("seeds", [0])
    lines = ["## precision: `train.dtype: auto` against float32, each method", "",
             f"`python -m benchmarks.precision` on {data['time']}: quickstart data and settings on the bundled model, "
             f"{data['steps']} steps, {data['threads']} thread(s), seed(s) {', '.join(map(str, seeds))}; `auto` meant "
             f"{data['auto_means']} on this machine ({data['machine']}).", "",
             "| method | seed | float32 val perplexity | auto val perplexity | change | float32 training (s) | auto training (s) | step speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        f, a = r["float32"], r["auto"]
        lines.append(f"| {r['method']} | {r.get('seed', 0)} | {f['val_perplexity']:.3f} | {a['val_perplexity']:.3f} | "
                     f"{100 * r['ppl_change']:+.2f}% | {f['train_seconds']:.1f} | {a['train_seconds']:.1f} | x{r['step_speedup']:.2f} |")
    methods = list(dict.fromkeys(r["method"] for r in data["rows"]))
    lines.append("")
    verdicts: dict[str, list[str]] = {"met": [], "missed": [], "not settled": []}
    for method in methods:
        rows = [r for r in data["rows"] if r["method"] == method]
        changes = [r["ppl_change"] for r in rows]
        mean, lo, hi = mean_interval(changes)
        f32 = [r["float32"]["val_perplexity"] for r in rows]
        spread = (f"; float32's own spread over these seeds: {100 * (max(f32) / min(f32) - 1):.2f}%" if len(rows) > 1 else "")
        interval = "" if lo is None else f", 95% interval [{100 * lo:+.2f}%, {100 * hi:+.2f}%]"
        lines.append(f"- {method}: mean change under `auto` {100 * mean:+.2f}%{interval} over {len(rows)} seed(s) "
                     f"({', '.join(f'{100 * c:+.2f}%' for c in changes)}){spread}.")
        if lo is None:
            verdicts["met" if abs(mean) <= 0.01 else "not settled"].append(method)
        else:  # within 1% when the whole interval is; missed only when the whole interval is beyond it
            verdicts["met" if -0.01 <= lo and hi <= 0.01 else "missed" if lo > 0.01 or hi < -0.01 else "not settled"].append(method)
    parts = [f"{v} for {', '.join(ms)}" for v, ms in verdicts.items() if ms]
    lines.append(f"- Target (validation perplexity within 1% of float32): {'; '.join(parts)}"
                 + (" (each method's interval over its seeds against ±1%)." if len(seeds) > 1 else "."))
    if verdicts["not settled"] or verdicts["missed"]:
        base = max(abs(r["auto"]["baseline_perplexity"] / r["float32"]["baseline_perplexity"] - 1) for r in data["rows"])
        lines.append(f"- Why: scoring alone differs by at most {100 * base:.2f}% between the precisions (the frozen baseline, "
                     "same windows), so the rest is training: bf16 steps take a different trajectory. Where float32's own "
                     "results spread over seeds by more than the change, more seeds are needed to bound it within 1%."
                     + (" One seed per method does not tell that trajectory noise from a systematic cost." if len(seeds) < 2 else ""))
    return lines + [""]


def mean_interval(values: list[float]) -> tuple[float, float | None, float | None]:
    """Mean and its two-sided 95% Student-t interval (None for a single value)."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def eval_subset_section(data: dict) -> list[str]:
    lines = ["## eval_subset: do cheap intermediate evaluations decide as full ones do?", "",
             f"`python -m benchmarks.eval_subset` on {data['time']}: {data['trials']} quickstart trials on {Path(data.get('data', '')).name or 'the built-in docs'}, {data['steps']} steps, "
             f"no early stopping; each evaluation (every {data['rungs'][0]['step']} steps) scored on {data['subset']} of {data['val_windows']} validation "
             f"windows (`train.eval_windows`) and on all of them (`train.eval_audit`).", "",
             "| step | trials | Spearman (subset vs all) | ASHA's kept half identical | same best trial | median relative difference |",
             "|---|---|---|---|---|---|"]
    for r in data["rungs"]:
        lines.append(f"| {r['step']} | {r['trials']} | {r['spearman']:.3f} | {100 * r['same_half_kept']:.0f}% | "
                     f"{'yes' if r['same_best'] else 'no'} | {100 * r['median_abs_rel_diff']:.2f}% |")
    times = {t["which"]: t for t in data["eval_times"]}
    if {"subset", "all"} <= set(times):
        ratio = times["all"]["seconds"] / times["subset"]["seconds"]
        lines += ["", f"- One evaluation: {times['subset']['seconds']:.2f} s on {times['subset']['windows']} windows against "
                  f"{times['all']['seconds']:.2f} s on {times['all']['windows']} (x{ratio:.2f} cheaper)."]
    lowest = min(r["spearman"] for r in data["rungs"]) if data["rungs"] else float("nan")
    lines += [f"- Lowest rank correlation over rungs: {lowest:.3f}.", ""]
    return lines


def token_cache_section(data: dict) -> list[str]:
    """token_cache: the encoders' states kept in the cache against computed on the fly."""
    lines = ["## token_cache: encoder states cached or computed on the fly", "",
             f"`python -m benchmarks.token_cache`: the states injection reads for {data['windows']:,} windows of "
             f"{data['tokens_per_window']} preceding tokens (Wikipedia), {data['threads']} torch threads. Computing them is "
             "what an uncached trial pays once and an on-the-fly design every epoch; reading them back is what a cached one pays.", "",
             "| encoder and pooling | shape | on disk | compute | write | read back | compute / read |", "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['setup']} | {' x '.join(map(str, r['shape']))} ({r['dtype'].replace('torch.', '')}) | {r['mb']:.1f} MB | "
                     f"{r['compute_s']:.1f} s | {r['write_s']:.3f} s | {r['read_s']:.4f} s | x{r['compute_s'] / max(r['read_s'], 1e-6):,.0f} |")
    return lines + [""]


def priority_section(data: dict) -> list[str]:
    rows = data["rows"]
    idle = rows[0]["wall_s"]
    lines = ["## trial_priority: a search beside other busy processes", "",
             f"`python -m benchmarks.trial_priority` on {data['time']}: the same {data['trials']}-trial search on the tiny model "
             f"(two trials at a time, ASHA), idle and beside {rows[1]['busy_processes']} spinning processes, {data['cpus']} CPUs.", "",
             "| arm | trials ran at nice | search wall | x idle | slowest trial start-up |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {', '.join(map(str, r['trial_nice']))} | {r['wall_s']:.1f} s | x{r['wall_s'] / idle:.2f} | "
                     f"{r['max_startup_s']:.1f} s |")
    lines += ["", f"- Ray's default worker priority against the command's, both beside the busy processes: "
              f"x{rows[2]['wall_s'] / rows[1]['wall_s']:.2f} the wall time.", ""]
    return lines


def main() -> int:
    results = HERE / "results"
    lines = ["# Benchmarks", "", "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json`; "
             "every number was measured by the benchmark named in its section.", ""]
    step = results / "step.json"
    if step.is_file():
        lines += step_section(json.loads(step.read_text()))
    for name, section in (("quickstart", quickstart_section), ("precision", precision_section),
                          ("trial_overhead", overhead_section),
                          ("eval_subset", eval_subset_section), ("memory", memory_section), ("peer", peer_section),
                          ("search_efficiency", efficiency_section), ("warm_start", warm_start_section),
                          ("many_trials", many_trials_section), ("packing", packing_section),
                          ("pack_exactness", pack_exactness_section), ("compile", compile_section),
                          ("token_cache", token_cache_section), ("trial_priority", priority_section)):
        f = results / f"{name}.json"
        if f.is_file():
            lines += section(json.loads(f.read_text()))
    lines += gpu_section(results)
    lines += packed_search_section(results)
    atomic_write_text(HERE / "RESULTS.md", "\n".join(lines))
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
