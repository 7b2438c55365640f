"""Trials sharing one GPU: the same search with one trial per GPU and with two (`tune.resources.gpus: 0.5`).

    python -m benchmarks.gpu_share --model DIR [--trials 4] [--steps 200] [--out FILE]

Runs `python -m embinject.tune` twice on a small injection search (fourier encoder, built-in data, no
early stopping, so both runs train the same trials for the same steps): once with `gpus: 1` (Ray runs
one trial at a time on a one-GPU machine) and once with `gpus: 0.5` (two at a time). Reports each
run's wall time, the trials that finished, the summed trial time over the wall time (how many trials
ran at once, on average) and `speedup` = wall(gpus 1) / wall(gpus 0.5). Writes
benchmarks/results/gpu_share.json, or --out. Needs a CUDA device; the tests never run it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from embinject.fsutil import atomic_write_text

from .shape_model import model_label

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"

SEARCH = """\
model: {model}
method: injection
data: {{path: "builtin:python-docs", seq_len: {seq}, train_samples: 1024, val_samples: 64}}
adapter: {{embedding_model: fourier, embed_source: context, context_tokens: 8, inject_tokens: 1, prefix_len: 4}}
train: {{batch_size: {batch}, eval_batch_size: 64, max_steps: {steps}, eval_every: {eval_every}, patience: 0, seed: 0}}
search:
  train.lr: {{loguniform: [3.0e-4, 1.0e-2]}}
  adapter.mlp_width: {{choice: [64, 256, 512]}}
tune:
  name: gpu-share
  num_samples: {trials}
  max_concurrent_trials: 2
  search_alg: random
  seed: 0
  scheduler: {{type: none}}
  resources: {{cpus: {cpus}, gpus: {gpus}}}
  storage_path: {storage}
mlflow: {{experiment: gpu-share, register_as: null}}
"""


def run_search(args, gpus: float) -> dict:
    storage = Path(tempfile.mkdtemp(prefix=f"embinject-gpu-share-{gpus}-"))
    search = storage / "search.yaml"
    search.write_text(
        SEARCH.format(
            model=args.model,
            seq=args.seq,
            batch=args.batch,
            steps=args.steps,
            eval_every=max(1, args.steps // 4),
            trials=args.trials,
            cpus=args.cpus,
            gpus=gpus,
            storage=storage / "runs",
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
    }
    t0 = time.time()
    print(f"search with gpus {gpus:g} per trial", flush=True)
    # its output goes to ours
    proc = subprocess.run([sys.executable, "-m", "embinject.tune", str(search)], cwd=ROOT, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"gpus {gpus:g}: the search failed (exit {proc.returncode})")
    summary = next((storage / "runs").rglob("summary.csv"))
    rows = list(csv.DictReader(summary.open()))
    ok = [r for r in rows if r["status"] == "ok"]
    busy = sum(float(r["seconds"]) for r in rows)
    return {
        "gpus_per_trial": gpus,
        "wall_s": wall,
        "trials": len(rows),
        "trials_ok": len(ok),
        "trial_seconds_sum": busy,
        "mean_trials_at_once": busy / wall,
        "best_val_perplexity": min(float(r["best_val_perplexity"]) for r in ok) if ok else None,
        "steps": [int(r["steps"]) for r in rows],
    }


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a model directory (or bundled:smollm2-135m)")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--cpus", type=int, default=2, help="CPUs per trial")
    p.add_argument("--out", type=Path, default=OUT / "gpu_share.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: benchmarks.gpu_share needs a CUDA device; none is visible", file=sys.stderr)
        return 2
    runs = [run_search(args, g) for g in (1, 0.5)]
    for r in runs:
        print(json.dumps(r), flush=True)
    whole, half = runs
    result = {
        "benchmark": "gpu_share",
        "model": model_label(args.model),
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "trials": args.trials,
        "cpus_per_trial": args.cpus,
        "runs": runs,
        "speedup": whole["wall_s"] / half["wall_s"],
        "device_name": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(
        f"two trials per GPU: x{result['speedup']:.2f} trials per hour against one "
        f"({half['mean_trials_at_once']:.2f} trials at once on average)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
