"""`make tune` before and after: the quickstart search at an earlier commit and at HEAD, in one run.

    python -m benchmarks.quickstart [--before REF] [--order before,after]

Checks REF out into a temporary git worktree and runs `python -m embinject.tune search_spaces/quickstart.yaml`
there and in this checkout, one after the other, each with its own empty cache (the converted model is
shared: converting it is not part of a search), and the same trial count and budget. Writes
benchmarks/results/quickstart.json: wall time of each, `speedup` = before / after, and both best
validation perplexities.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from embinject.fsutil import atomic_write_text
from embinject.models import cache_root, resolve_model_path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
# the last commit before the trials-per-hour work (train.dtype auto, evaluation subsets, warm workers)
BEFORE = "469fe2689443e37460dd32986f0c33a81d6a1f2d"


def run_quickstart(checkout: Path, label: str, shared_models: Path) -> dict:
    cache = Path(tempfile.mkdtemp(prefix=f"embinject-qs-{label}-"))
    (cache / "models").symlink_to(shared_models, target_is_directory=True)
    storage = Path(tempfile.mkdtemp(prefix=f"embinject-qs-runs-{label}-"))
    env = {**os.environ, "EMBINJECT_CACHE": str(cache), "PYTHONPATH": str(checkout), "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "embinject.tune",
        "search_spaces/quickstart.yaml",
        "--set",
        f"tune.storage_path={storage}",
        "--set",
        "mlflow.register_as=null",
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{label}: the search failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    best = re.search(r"val_perplexity ([0-9.]+) \(frozen baseline ([0-9.]+)\)", proc.stdout)
    trials = re.search(r"trials: (\d+) \((\d+) stopped early", proc.stdout)
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(storage, ignore_errors=True)
    return {
        "label": label,
        "wall_s": wall,
        "best_val_perplexity": float(best.group(1)),
        "baseline_perplexity": float(best.group(2)),
        "trials": int(trials.group(1)),
        "stopped_early": int(trials.group(2)),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default=BEFORE, help="the commit to compare against")
    p.add_argument("--order", default="before,after", help="which runs first")
    args = p.parse_args(argv)
    resolve_model_path("bundled:smollm2-135m")  # converted once, outside both timings
    shared = cache_root() / "models"
    worktree = Path(tempfile.mkdtemp(prefix="embinject-before-"))
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(worktree), args.before], cwd=ROOT, check=True, capture_output=True
    )
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    try:
        runs = {}
        for label in args.order.split(","):
            runs[label] = run_quickstart(worktree if label == "before" else ROOT, label, shared)
            print(json.dumps(runs[label]), flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)
    before, after = runs["before"], runs["after"]
    result = {
        "benchmark": "quickstart",
        "before_commit": args.before,
        "after_commit": head,
        "runs": [before, after],
        "speedup": before["wall_s"] / after["wall_s"],
        "best_ppl_change": after["best_val_perplexity"] / before["best_val_perplexity"] - 1,
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    OUT.mkdir(exist_ok=True)
    atomic_write_text(OUT / "quickstart.json", json.dumps(result, indent=1))
    print(
        f"speedup x{result['speedup']:.2f}; best val perplexity {before['best_val_perplexity']:.3f} -> "
        f"{after['best_val_perplexity']:.3f} ({100 * result['best_ppl_change']:+.2f}%)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
