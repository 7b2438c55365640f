"""The real search, packed against unpacked: `python -m benchmarks.packed_search --search ...` (see that module).

Each arm is one `python -m embinject.tune` search (a local Ray that the search starts, Optuna's random sampler with a
fixed seed, a local MLflow SQLite store), the same search file but for where its trials run:
- `one`: one trial at a time with the whole device (a GPU, or every CPU core), `tune.pack: off`;
- `0.5`, `0.25`, `0.1`: 2, 4 or 10 trials at a time, each with that share of the device, `tune.pack: off`;
- `packed`: `tune.pack: K`, K trials at a time sharing one frozen LM on the whole device.
The seeded random sampler proposes the same trials in every arm (checked: `same_trials`). Per arm: the search's own wall
time (`search_seconds`, what `embinject report` prints), the command's, steps trained, the best validation perplexity,
and where the trials' time went (summary.csv's time split, summed over trials, with shares of their summed wall time).
Then one packed step of K trials against K separate steps on the same model (`benchmarks.packing`, the step-level
ceiling), and `packing_efficiency`: the search-level speedup over the fastest unpacked arm divided by that ceiling.
A run is keyed by its settings in benchmarks/results/packed_search_real.json (or _gpu.json, or --out); a run with the
same settings replaces it, others are kept, so the 30-step, 300-step and ASHA rows live in one file.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from embinject.fsutil import atomic_write_text
from embinject.space import load_search_file
from embinject.tune.driver.cluster import warm_caches
from embinject.tune.driver.pack_plan import packable_methods
from embinject.tune.worker.probe import largest_trial, probe_pack

from .real_search_arm import run_arm, search_spec
from .shape_model import model_label
from .tiny_model import tiny_spec

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
KEY = ("model", "device", "dtype", "trials", "steps", "eval_every", "batch", "seq_len", "pack", "scheduler", "lanes")


def step_ceiling(args, model: str, prefix: int, work: Path, env: dict) -> dict:
    """One packed step of K trials against K separate steps on the same model (benchmarks.packing), with the threads
    each of the packed arm's hosts has."""
    out = work / "packing.json"
    threads = {"OMP_NUM_THREADS": str(lane_cpus(args))} if args.device == "cpu" else {}
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.packing",
        "--model",
        model,
        "--k",
        str(args.pack),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq_len),
        "--prefix",
        str(prefix),
        "--reps",
        str(args.ceiling_reps),
        "--device",
        args.device,
        "--out",
        str(out),
    ]
    subprocess.run(cmd, cwd=ROOT, env={**env, **threads}, check=True, timeout=args.timeout)
    step = json.loads(out.read_text())["rows"][0]
    return {
        "k": step["k"],
        "prefix": prefix,
        "threads": json.loads(out.read_text())["threads"],
        "reps": args.ceiling_reps,
        "sequential_s": step["sequential_s"],
        "packed_s": step["packed_s"],
        "speedup": step["speedup"],
    }


def lane_cpus(args) -> int:
    """The CPU threads each pack of the packed arm computes on (its lane's share of --cpus)."""
    return max(1, args.cpus // args.lanes)


def search_env(work: Path) -> dict:
    """The arms' environment: this tree first on the path, caches in `work` (the converted bundled models shared with
    the user's cache), no Ray cluster but the one each search starts."""
    cache = work / "cache"
    cache.mkdir()
    user_models = Path(os.environ.get("EMBINJECT_CACHE", Path.home() / ".cache" / "embinject")) / "models"
    user_models.mkdir(parents=True, exist_ok=True)
    (cache / "models").symlink_to(user_models, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        EMBINJECT_CACHE=str(cache),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


@contextlib.contextmanager
def arms_cache(env: dict):
    """This process reads and writes the arms' caches meanwhile (EMBINJECT_CACHE as in `env`)."""
    previous = os.environ.get("EMBINJECT_CACHE")
    os.environ["EMBINJECT_CACHE"] = env["EMBINJECT_CACHE"]
    try:
        yield
    finally:
        os.environ.pop("EMBINJECT_CACHE") if previous is None else os.environ.__setitem__("EMBINJECT_CACHE", previous)


def searched(args, model: str, work: Path, name: str):
    """The arms' search file, loaded (written under `work` as NAME.yaml)."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(search_spec(args, model, "packed", work / name), sort_keys=False))
    return load_search_file(path)


def warm(args, model: str, work: Path, env: dict) -> None:
    """The shared caches (windows, embeddings, baseline) before any arm, so that no arm pays for them and the others
    not."""
    with arms_cache(env):
        warm_caches(searched(args, model, work, "warm"))


def trial_ceiling(args, model: str, work: Path, env: dict, rows: list[dict] | None = None) -> dict:
    """The search's own trials packed: K of its largest trial (as `tune.pack: auto`'s probe trains it: this search's
    method, encoder input and MLP) in one step against K separate steps, with the packed host's threads. Unlike
    benchmarks.packing's prompt trials, each member here also runs its own MLP and optimizer, which no pack shares.
    On a CPU also `placement`: the packed step against the K steps as the fastest unpacked arm places them (its
    trials at once, each on its share of the cores, e.g. 2 processes of 1 thread on 2 cores), which is what a
    packed search competes with (where --lanes packs run side by side, as many packed steps at once); the plain
    ceiling compares with K steps one after another on a pack's cores."""
    threads = torch.get_num_threads()
    unpacked = [r for r in rows or [] if r["arm"] != "packed"]
    reference = min(unpacked, key=lambda r: r["search_s"]) if unpacked else None
    try:
        with arms_cache(env):
            search = searched(args, model, work, "probe")
            worst = {**largest_trial(search), "method": packable_methods(search)[0]}
            probe = probe_pack(dict(search.base), worst, args.device, args.pack, lane_cpus(args))
            placed = None
            if reference is not None and args.device == "cpu":
                each = max(1, round(reference["cpus_per_trial"]))
                alone = probe_pack(dict(search.base), worst, args.device, args.pack, each)
                at_once = reference["trials_at_once"]
                # K x lanes steps as the arm takes them, against `lanes` packed steps side by side
                placed_s = alone["solo_s"] * args.lanes / at_once
                placed = {
                    "arm": reference["arm"],
                    "threads_each": each,
                    "at_once": at_once,
                    "lanes": args.lanes,
                    "separate_s": alone["solo_s"],
                    "placed_s": placed_s,
                    "speedup": placed_s / max(probe["packed_s"], 1e-12),
                }
    finally:
        torch.set_num_threads(threads)
    return {
        "k": probe["k"],
        "threads": lane_cpus(args),
        "trial": worst,
        "sequential_s": probe["solo_s"],
        "packed_s": probe["packed_s"],
        "speedup": probe["speedup"],
        "placement": placed,
    }


def summarise(args, rows: list[dict], ceiling: dict | None, trials: dict | None = None) -> dict:
    """The run's ratios: packed against each unpacked arm, the fastest unpacked arm, and the quotient by the ceiling."""
    by = {r["arm"]: r for r in rows}
    out = {
        "same_trials": len({tuple(r["trial_values"]) for r in rows}) == 1,
        "step_ceiling": ceiling,
        "trial_ceiling": trials,
    }
    packed, unpacked = by.get("packed"), [r for r in rows if r["arm"] != "packed"]
    if packed is None or not unpacked:
        return out
    reference = min(unpacked, key=lambda r: r["search_s"])
    out.update(
        reference_arm=reference["arm"],
        search_speedup=reference["search_s"] / packed["search_s"],
        command_speedup=reference["command_s"] / packed["command_s"],
        tuner_speedup=reference["tuner_s"] / packed["tuner_s"],
        step_rate_speedup=(packed["total_steps"] / packed["search_s"])
        / (reference["total_steps"] / reference["search_s"]),
        best_ppl_rel_diff=packed["best_val_perplexity"] / reference["best_val_perplexity"] - 1,
        speedups={r["arm"]: r["search_s"] / packed["search_s"] for r in unpacked},
    )
    fractional = [r for r in unpacked if r["arm"] != "one"]
    if fractional:
        best = min(fractional, key=lambda r: r["search_s"])
        out.update(best_fractional=best["arm"], speedup_vs_best_fractional=best["search_s"] / packed["search_s"])
    if ceiling:
        out["packing_efficiency"] = out["search_speedup"] / ceiling["speedup"]
    if trials:
        out["packing_efficiency_own_trials"] = out["search_speedup"] / trials["speedup"]
        if trials.get("placement"):
            out["packing_efficiency_placed"] = out["search_speedup"] / trials["placement"]["speedup"]
    return out


def without_note(argv: list[str]) -> list[str]:
    """The command line as a re-run would give it: its own --note, not this one's."""
    out, skip = [], False
    for a in argv:
        if not skip and a != "--note" and not a.startswith("--note="):
            out.append(a)
        skip = a == "--note"
    return out


def settings(args) -> dict:
    scheduler = (
        {"type": "none"}
        if args.asha is None
        else {"type": "asha", "grace_period": args.asha, "max_t": args.steps, "reduction_factor": 3}
    )
    return {
        "model": args.model if tiny_spec(args.model) else model_label(args.model),
        "device": args.device,
        "dtype": args.dtype,
        "trials": args.trials,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "pack": args.pack,
        "scheduler": scheduler,
        **({"lanes": args.lanes} if args.lanes > 1 else {}),
    }  # absent: one pack at a time (the runs before it)


def write_run(target: Path, run: dict) -> None:
    """`run` into the results file, in place of a run of the same settings."""
    data = json.loads(target.read_text()) if target.is_file() else {"benchmark": "packed_search_real", "runs": []}
    data["runs"] = [r for r in data["runs"] if {k: r.get(k) for k in KEY} != {k: run.get(k) for k in KEY}] + [run]
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps(data, indent=1))


def run_search_arms(args, model: str, work: Path) -> int:
    """Every arm's search, the step-level ceiling, and the run written into the results file."""
    env = search_env(work)
    load_start = os.getloadavg()
    warm(args, model, work, env)
    rows = [run_arm(args, model, arm, work, env) for arm in args.arms]
    prefixes = [p for r in rows for p in r["prefix_tokens"]]
    ceiling = (
        step_ceiling(args, model, round(statistics.median(prefixes)), work, env)
        if "packed" in args.arms and args.ceiling_reps
        else None
    )
    trials = trial_ceiling(args, model, work, env, rows) if "packed" in args.arms and args.ceiling_reps else None
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    run = {
        **settings(args),
        "data": Path(args.data).name,
        "device_name": device_name,
        "cpus": args.cpus,
        "train_samples": args.train_samples,
        "val_samples": args.val_samples,
        "encoders": list(args.encoders),
        "seed": args.seed,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average": {"start": load_start[0], "end": os.getloadavg()[0]},
        "note": args.note,
        "command": "python -m benchmarks.packed_search " + shlex.join(without_note(args.argv)),
        "rows": rows,
        **summarise(args, rows, ceiling, trials),
    }
    target = args.out or OUT / ("packed_search_real_gpu.json" if args.device == "cuda" else "packed_search_real.json")
    write_run(target, run)
    print(
        json.dumps(
            {
                k: run.get(k)
                for k in ("search_speedup", "step_ceiling", "packing_efficiency", "best_ppl_rel_diff", "same_trials")
            }
        ),
        flush=True,
    )
    if args.keep:
        print(f"the searches' folders: {work}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0
