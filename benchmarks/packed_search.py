"""Packed trials against one trial per device and fractional devices: the same injection search, trained three ways.

    python -m benchmarks.packed_search [--device cpu|cuda] [--model NAME|tiny:WIDTHxLAYERS] [--trials 32] [--steps 30]
                                       [--arms one 0.5 0.25 0.1 packed] [--pack 8] [--data DIR] [--out FILE]
    python -m benchmarks.packed_search --search [--eval-every N] [--asha GRACE] [--note TEXT] ...   (the real search)

`--model tiny:WIDTHxLAYERS`: the tests' random Llama at that size (benchmarks.tiny_model), made for the run; its
perplexities mean nothing. `--search`: each arm is the real search (`python -m embinject.tune`: Ray, Optuna's seeded
random sampler, MLflow), packed against unpacked, with the step-level ceiling at the same K and their quotient
(benchmarks.real_search says how). Without it, the engine alone:

The trials: `--trials` configurations drawn by a seeded random sampler from the space of
search_spaces/injection.yaml (learning rate, injected vectors, prefix length, MLP width; encoders limited to those
that need no download), on the bundled SmolLM2-135M (real weights), `--steps` steps each, no early stopping, so every
arm trains the same configurations for the same steps. The arms place them as a search would:
- `one`: one trial per device, one after another in one worker process (Ray with `gpus: 1` and a warm worker);
- `0.5`, `0.25`, `0.1`: fractional devices, 2, 4 or 10 worker processes at once, each with its own copy of the
  frozen LM, each training its share of the trials one after another (Ray with `gpus: 0.5` ...);
- `packed`: one process holding one frozen LM, `--pack` trials training at once in packed steps
  (`embinject.train.packing`, what `tune.pack` runs inside a search); a finished trial's place goes to the next one.
Every arm runs `embinject.train.train` in fresh processes and its wall time includes their start. Reports trials per
hour, peak device memory (summed over an arm's processes) and the best validation perplexity of each arm; writes
benchmarks/results/packed_search.json (CPU) or packed_search_gpu.json (CUDA), or --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from embinject.config_files import load_config
from embinject.fsutil import atomic_write_text
from embinject.space import load_search_file
from embinject.train import prepare, shared_lm, train
from embinject.train.packing import PackedSteps, StepPack
from embinject.train.precision import autocast_dtype

from .real_search import run_search_arms
from .shape_model import model_label
from .tiny_model import resolve_model, tiny_spec

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
SEARCHED = ("train.lr", "adapter.inject_tokens", "adapter.prefix_len", "adapter.mlp_width", "adapter.embedding_model")


def sample_trials(n: int, seed: int, encoders: list[str]) -> list[dict]:
    """`n` configurations of injection.yaml's space from a seeded random sampler (the same for every arm)."""
    search = load_search_file(ROOT / "search_spaces" / "injection.yaml")
    rng = random.Random(seed)
    trials = []
    for _ in range(n):
        trial = {}
        for p in search.params:
            if p.key not in SEARCHED:
                continue
            if p.key == "adapter.embedding_model":
                trial[p.key] = rng.choice(encoders)
            elif p.kind == "choice":
                trial[p.key] = rng.choice(p.args)
            elif p.kind == "loguniform":
                trial[p.key] = math.exp(rng.uniform(math.log(p.args[0]), math.log(p.args[1])))
            elif p.kind == "randint":
                trial[p.key] = rng.randint(p.args[0], p.args[1])
        trials.append(trial)
    return trials


def base_overrides(args) -> list[str]:
    return [
        f"model={args.model_path}",
        "method=injection",
        f"data.path={args.data}",
        f"data.seq_len={args.seq_len}",
        f"data.train_samples={args.train_samples}",
        f"data.val_samples={args.val_samples}",
        "adapter.embed_source=previous",
        f"train.batch_size={args.batch}",
        "train.eval_batch_size=64",
        f"train.max_steps={args.steps}",
        f"train.eval_every={args.steps}",
        "train.patience=0",
        f"train.device={args.device}",
        f"train.dtype={args.dtype}",
        "train.progress=false",
        "train.eval_windows=null",
    ]


def trial_cfg(base: list[str], trial: dict):
    return load_config(None, base + [f"{k}={v}" for k, v in trial.items()])


def peak_memory_mb(device: str) -> float:
    """PyTorch's peak allocation on a GPU; on a CPU, the process's peak resident set (the LM included)."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def work(spec: dict) -> dict:
    """One worker process: its trials alone one after another, or `pack` of them at once in packed steps."""
    torch.set_num_threads(spec["threads"])
    base, trials, k = spec["base"], spec["trials"], spec["pack"]
    results: dict[int, float] = {}
    if k <= 1:
        for i, trial in trials:
            results[i] = train(trial_cfg(base, trial))[0]["val_perplexity"]
        return {"val_perplexity": results, "peak_memory_mb": peak_memory_mb(spec["device"])}
    cfg0 = trial_cfg(base, trials[0][1])
    shared_lm(cfg0.model, cfg0.train.device)
    pack, lock = StepPack(cfg0.train.device, autocast_dtype(cfg0.train.dtype, cfg0.train.device)), threading.Lock()
    todo: queue.Queue = queue.Queue()
    for item in trials:
        todo.put(item)

    def member() -> None:
        while True:
            try:
                i, trial = todo.get_nowait()
            except queue.Empty:
                return
            pack.join(str(i))
            try:
                results[i] = train(trial_cfg(base, trial), steps=PackedSteps(pack, str(i), lock))[0]["val_perplexity"]
            finally:
                pack.leave(str(i))

    threads = [threading.Thread(target=member) for _ in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "val_perplexity": results,
        "peak_memory_mb": peak_memory_mb(spec["device"]),
        "mean_pack": pack.rows_packed / max(pack.steps, 1),
        "packed_steps": pack.steps,
    }


def run_arm(arm: str, args, base: list[str], trials: list[dict]) -> dict:
    """The trials placed as `arm` says, in fresh worker processes; wall time from their start to the last one's end."""
    indexed = list(enumerate(trials))
    if arm == "packed":
        shares, pack = [indexed], args.pack
    else:
        n = 1 if arm == "one" else round(1 / float(arm))
        shares, pack = [indexed[j::n] for j in range(n)], 1
    threads = max(1, args.cpus // len(shares))
    tmp = Path(tempfile.mkdtemp(prefix="packed-search-"))
    procs = []
    t0 = time.perf_counter()
    for j, share in enumerate(shares):
        spec = tmp / f"w{j}.json"
        spec.write_text(
            json.dumps({"base": base, "trials": share, "pack": pack, "threads": threads, "device": args.device})
        )
        procs.append(
            subprocess.Popen([sys.executable, "-m", "benchmarks.packed_search", "--worker", str(spec)], cwd=ROOT)
        )
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"arm {arm}: a worker failed (exit codes {codes})")
    outs = [json.loads((tmp / f"w{j}.json.out").read_text()) for j in range(len(shares))]
    ppl = {int(i): v for o in outs for i, v in o["val_perplexity"].items()}
    row = {
        "arm": arm,
        "processes": len(shares),
        "trials_per_pack": pack,
        "threads_per_process": threads,
        "wall_s": wall,
        "trials_per_hour": len(trials) / wall * 3600,
        "peak_memory_mb": sum(o["peak_memory_mb"] for o in outs),
        "best_val_perplexity": min(ppl.values()),
        "val_perplexity": [ppl[i] for i in range(len(trials))],
    }
    if arm == "packed":
        row["mean_pack"] = outs[0]["mean_pack"]
    print(
        f"{arm}: {wall:.1f} s, {row['trials_per_hour']:.0f} trials/h, best {row['best_val_perplexity']:.4f}, "
        f"peak {row['peak_memory_mb']:.0f} MiB",
        flush=True,
    )
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model", default="bundled:smollm2-135m")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "wikipedia_en_sample"))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", help="train.dtype (injection.yaml trains in float32)")
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--train-samples", type=int, default=1024)
    p.add_argument("--val-samples", type=int, default=128)
    p.add_argument("--pack", type=int, default=8)
    p.add_argument(
        "--lanes",
        type=int,
        default=1,
        help="--search on CPUs: packs side by side, each on --cpus/LANES "
        "cores (tune.resources.cpus) with --pack members",
    )
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument(
        "--arms",
        nargs="+",
        choices=["one", "0.5", "0.25", "0.1", "packed"],
        help="default: one 0.5 0.25 0.1 packed; with --search on a CPU, 0.5 packed",
    )
    p.add_argument("--encoders", nargs="+", default=["fourier", "lm-mean"])
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.add_argument("--search", action="store_true", help="run the real search in each arm (benchmarks.real_search)")
    p.add_argument("--eval-every", type=int, help="--search: train.eval_every (default: --steps)")
    p.add_argument("--asha", type=int, metavar="GRACE", help="--search: ASHA with this grace period, max_t --steps")
    p.add_argument("--ceiling-reps", type=int, default=10, help="--search: benchmarks.packing's reps (0: no ceiling)")
    p.add_argument("--timeout", type=int, default=7200, help="--search: seconds one arm's search may take")
    p.add_argument("--keep", action="store_true", help="--search: keep the searches' folders (their path is printed)")
    p.add_argument("--note", default="", help="--search: recorded with the run (say if the machine was busy)")
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        atomic_write_text(Path(args.worker + ".out"), json.dumps(work(spec)))
        return 0
    if args.lanes < 1 or args.lanes > 1 and (args.device != "cpu" or not args.search or args.cpus % args.lanes):
        p.error(f"--lanes {args.lanes}: expected 1, or with --search on CPUs a divisor of --cpus ({args.cpus})")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.eval_every = args.eval_every or args.steps
    args.arms = args.arms or (
        ["0.5", "packed"] if args.search and args.device == "cpu" else ["one", "0.5", "0.25", "0.1", "packed"]
    )
    work_dir = Path(tempfile.mkdtemp(prefix="packed-search-"))
    args.model_path = resolve_model(args.model, work_dir)
    if args.search:
        return run_search_arms(args, args.model_path, work_dir)
    base = base_overrides(args)
    trials = sample_trials(args.trials, args.seed, args.encoders)
    for encoder in sorted({t["adapter.embedding_model"] for t in trials}):  # shared work once: windows, embeddings
        cfg = trial_cfg(base, {"adapter.embedding_model": encoder, "train.device": "cpu"})
        prepare(cfg)
    target = args.out or OUT / ("packed_search_gpu.json" if args.device == "cuda" else "packed_search.json")
    rows = []
    for arm in args.arms:  # the file is rewritten after each arm: a run cut short keeps what it measured
        rows.append(run_arm(arm, args, base, trials))
        write_results(target, args, trials, rows)
    return 0


def write_results(target: Path, args, trials: list[dict], rows: list[dict]) -> None:
    by = {r["arm"]: r for r in rows}
    out = {
        "benchmark": "packed_search",
        "model": args.model if tiny_spec(args.model) else model_label(args.model),
        "data": Path(args.data).name,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "dtype": args.dtype,
        "trials": args.trials,
        "steps": args.steps,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "pack": args.pack,
        "cpus": args.cpus,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "trials_config": trials,
        "rows": rows,
    }
    if "packed" in by and "one" in by:
        out["speedup_vs_one_per_device"] = by["packed"]["trials_per_hour"] / by["one"]["trials_per_hour"]
        out["best_ppl_change"] = by["packed"]["best_val_perplexity"] / by["one"]["best_val_perplexity"] - 1
    fractional = [r for r in rows if r["arm"] not in ("one", "packed")]
    if "packed" in by and fractional:
        best = max(fractional, key=lambda r: r["trials_per_hour"])
        out["best_fractional"] = best["arm"]
        out["speedup_vs_best_fractional"] = by["packed"]["trials_per_hour"] / best["trials_per_hour"]
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k.startswith(("speedup", "best_"))}), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
