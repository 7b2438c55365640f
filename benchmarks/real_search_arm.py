"""One arm of the real packed-against-unpacked search (benchmarks.real_search): its search file, run as a user
runs it, and its numbers read from the search's folder."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from embinject.tracking import TIME_SPLIT, WALL
from embinject.tracking.tracker import search_metrics

ROOT = Path(__file__).resolve().parents[1]
SEARCHED = ("train.lr", "adapter.inject_tokens", "adapter.prefix_len", "adapter.mlp_width")


def search_spec(args, model: str, arm: str, storage: Path) -> dict:
    """The search file of one arm: injection.yaml's searched keys (encoders limited to --encoders), the given sizes,
    a seeded random sampler, and the arm's placement (`placement`)."""
    space = yaml.safe_load((ROOT / "search_spaces" / "injection.yaml").read_text())["search"]
    searched = {k: space[k] for k in SEARCHED}
    searched["adapter.embedding_model"] = {"choice": list(args.encoders)}
    scheduler = (
        {"type": "none"}
        if args.asha is None
        else {"type": "asha", "grace_period": args.asha, "max_t": args.steps, "reduction_factor": 3}
    )
    return {
        "model": model,
        "method": "injection",
        "data": {
            "path": args.data,
            "seq_len": args.seq_len,
            "train_samples": args.train_samples,
            "val_samples": args.val_samples,
        },
        "adapter": {
            "embed_source": "previous",
            "inject_tokens": 8,
            "prefix_len": 2,
            "mlp_width": 512,
            "embedding_model": args.encoders[0],
        },
        "train": {
            "lr": 1.0e-3,
            "batch_size": args.batch,
            "eval_batch_size": 64,
            "max_steps": args.steps,
            "eval_every": args.eval_every,
            "patience": 0,
            "eval_windows": None,
            "device": args.device,
            "dtype": args.dtype,
            "progress": False,
        },
        "search": searched,
        "tune": {
            "name": "arm-" + arm.replace(".", "_"),
            "num_samples": args.trials,
            "search_alg": "random",
            "seed": args.seed,
            "scheduler": scheduler,
            "storage_path": str(storage),
            **placement(args, arm),
        },
        "mlflow": {"experiment": "packed-search-real", "register_as": None},
    }


def placement(args, arm: str) -> dict:
    """Where an arm's trials run: `tune.pack`, how many at once, and each trial's share of the device."""
    gpu = args.device == "cuda"
    if arm == "packed":  # a pack takes a whole GPU, or on CPUs its lane's cores: its K members ask for a K-th each
        return {
            "pack": args.pack,
            "max_concurrent_trials": args.pack * args.lanes,
            "resources": {"cpus": args.cpus / args.lanes, "gpus": 1.0 if gpu else 0.0},
        }
    share = 1.0 if arm == "one" else float(arm)
    at_once = round(1 / share)
    return {
        "pack": "off",
        "max_concurrent_trials": at_once,
        "resources": {"cpus": args.cpus / at_once, "gpus": share if gpu else 0.0},
    }


def number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def time_split(rows: list[dict]) -> dict:
    """summary.csv's time split summed over the trials, and each category's share of their summed wall time."""
    timed = [r for r in rows if number(r.get(WALL))]
    wall = sum(number(r[WALL]) for r in timed)
    seconds = {k: sum(number(r.get(k)) or 0.0 for r in timed) for k in TIME_SPLIT}
    seconds["other"] = max(0.0, wall - sum(seconds.values()))
    return {
        "trials_wall_s": wall,
        "seconds": seconds,
        "share": {k: v / wall if wall else None for k, v in seconds.items()},
    }


def waiting_split(exp_dir: Path) -> dict:
    """The trials' waiting, split by their last results: from Ray queuing a trial to its process starting (placement:
    a process found or started), and after that start, joining a pack (a new host loads the LM first); and how many
    trial processes and pack hosts served the trials."""
    last = []
    for f in exp_dir.glob("trial_*/result.json"):
        lines = f.read_text().splitlines()
        if lines:
            last.append(json.loads(lines[-1]))
    joining = sum(float(r.get("spent_waiting", 0.0)) for r in last)
    waiting = sum(float(r.get("seconds_waiting", 0.0)) for r in last)
    return {
        "placement_s": max(0.0, waiting - joining),
        "joining_s": joining,
        "trial_processes": len({r["pid"] for r in last if "pid" in r}),
        "pack_hosts": len({r["pack_pid"] for r in last if "pack_pid" in r}),
    }


def run_arm(args, model: str, arm: str, work: Path, env: dict) -> dict:
    """One arm's search, run as a user runs it; its numbers from the search's folder."""
    storage = work / arm
    storage.mkdir(parents=True)
    spec = search_spec(args, model, arm, storage)
    path = storage / "search.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    t0 = time.perf_counter()
    with (storage / "search.log").open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "embinject.tune", str(path)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=args.timeout,
        )
    command_s = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (storage / "search.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"arm {arm}: the search failed (exit {proc.returncode}); its log ends:\n{tail}")
    exp_dir = next(p for p in storage.iterdir() if p.is_dir() and p.name.startswith(spec["tune"]["name"] + "-"))
    with (exp_dir / "summary.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    metrics = search_metrics(exp_dir)
    ok = [r for r in rows if r["status"] == "ok"]
    tune = spec["tune"]
    row = {
        "arm": arm,
        "trials_at_once": tune["max_concurrent_trials"],
        "pack": tune["pack"],
        "cpus_per_trial": tune["resources"]["cpus"],
        "gpus_per_trial": tune["resources"]["gpus"],
        "search_s": metrics["search_seconds"],
        "warm_cache_s": metrics["warm_cache_seconds"],
        "command_s": command_s,
        # the search less its cache warming (which found the caches warm): Ray's start, the trials, the finish
        "tuner_s": metrics["search_seconds"] - metrics["warm_cache_seconds"],
        "trials": len(rows),
        "trials_ok": len(ok),
        "trials_stopped_early": int(metrics["trials_stopped_early"]),
        "total_steps": int(metrics["total_steps"]),
        "best_val_perplexity": metrics.get("best_val_perplexity"),
        "trials_per_hour": len(rows) / metrics["search_seconds"] * 3600,
        "time_split": time_split(rows),
        "waiting_split": waiting_split(exp_dir),
        "trial_values": sorted(json.dumps({k: r[k] for k in SEARCHED + ("adapter.embedding_model",)}) for r in rows),
        "prefix_tokens": [int(r["adapter.prefix_len"]) + int(r["adapter.inject_tokens"]) for r in rows],
    }
    split = row["time_split"]["share"]
    print(
        f"{arm}: search {row['search_s']:.1f} s (command {command_s:.1f} s), {row['total_steps']} steps, best "
        f"{row['best_val_perplexity']:.4f}; steps {100 * split['seconds_steps']:.0f}%, rendezvous "
        f"{100 * split['seconds_rendezvous']:.0f}%, eval {100 * split['seconds_eval']:.0f}%, setup "
        f"{100 * split['seconds_setup']:.0f}%",
        flush=True,
    )
    return row
