"""A search beside other busy processes: trials at the command's priority against Ray's default (nice +15).

    python -m benchmarks.trial_priority [--busy 2] [--trials 6]

Runs the same short search on the tiny model (`python -m embinject.tune`, a local Ray that it starts) three
ways: on an idle machine; beside `--busy` processes that spin at the command's priority, as embinject runs
trials (workers at nice 0 relative to the command); and beside the same processes with Ray's default worker
priority (`RAY_worker_niceness=15`). Reports each search's wall time, the priority its trials ran at (from
their result.json), and the ratios. Writes benchmarks/results/trial_priority.json. Needs an otherwise idle
machine: anything else running is more contention than the benchmark says.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.tiny_model import make_tiny_model
from embinject.fsutil import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
ARMS = {
    "idle": (False, None),
    "busy, trials at the command's priority": (True, None),
    "busy, Ray's default worker priority": (True, "15"),
}


def search_file(work: Path, model: Path, trials: int) -> Path:
    spec = {
        "model": str(model),
        "method": "injection",
        "data": {"path": "builtin:python-docs", "seq_len": 32, "train_samples": 96, "val_samples": 24},
        "adapter": {"embedding_model": "fourier", "fourier_features": 16, "context_tokens": 8, "prefix_len": 2},
        "train": {"batch_size": 8, "max_steps": 12, "eval_every": 3, "patience": 0},
        "search": {"train.lr": {"loguniform": [1.0e-4, 5.0e-2]}, "adapter.mlp_width": {"choice": [16, 32]}},
        "tune": {
            "name": "priority",
            "num_samples": trials,
            "max_concurrent_trials": 2,
            "seed": 0,
            "pack": "off",
            "scheduler": {"type": "asha", "grace_period": 3, "reduction_factor": 2},
            "resources": {"cpus": 1, "gpus": 0},
            "storage_path": str(work / "runs"),
        },
        "mlflow": {"experiment": "priority", "register_as": None},
    }
    path = work / "search.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_arm(work: Path, model: Path, trials: int, busy: int, niceness: str | None) -> dict:
    work.mkdir(parents=True)
    path = search_file(work, model, trials)
    env = {k: v for k, v in os.environ.items() if k != "RAY_worker_niceness"}
    env.update(OMP_NUM_THREADS="1", **({"RAY_worker_niceness": niceness} if niceness else {}))
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "embinject.tune", str(path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        wall = time.perf_counter() - t0
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    if proc.returncode != 0:
        raise SystemExit(f"the search failed:\n{proc.stderr[-3000:]}")
    first = [json.loads(t.read_text().splitlines()[0]) for t in (work / "runs").glob("*/trial_*/result.json")]
    return {
        "wall_s": wall,
        "trials": len(first),
        "trial_nice": sorted({r["nice"] for r in first}),
        "max_startup_s": max(r["startup_seconds"] for r in first),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy processes beside the search")
    p.add_argument("--trials", type=int, default=6)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="embinject-priority-"))
    model = make_tiny_model(work / "tiny")
    rows = []
    for i, (arm, (busy, niceness)) in enumerate(ARMS.items()):
        row = {
            "arm": arm,
            "busy_processes": args.busy if busy else 0,
            "ray_worker_niceness": niceness,
            **run_arm(work / f"arm{i}", model, args.trials, args.busy if busy else 0, niceness),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {
        "benchmark": "trial_priority",
        "rows": rows,
        "trials": args.trials,
        "command_nice": os.nice(0),
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    OUT.mkdir(exist_ok=True)
    atomic_write_text(OUT / "trial_priority.json", json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
