"""Where a trial's time goes: training steps against everything else.

    python -m benchmarks.trial_overhead [--trials 3] [--steps 40]

Runs a short search of the quickstart file (bundled SmolLM2-135M, one trial at a time, no early
stopping, so every trial does the same work) and splits each trial's wall time, as the driver saw it
(MLflow child run start to end), into: process start (actor, imports) until the trainable runs;
start-up inside it (model load from the cache, windows and embeddings from the cache, baseline
perplexity lookup, adapter build); training steps; evaluations; and the rest (reporting,
checkpoints, MLflow, teardown). Writes benchmarks/results/trial_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from embinject.fsutil import atomic_write_text
from embinject.space import load_search_file

from .search_efficiency import run_search

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    from mlflow.tracking import MlflowClient

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--search", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    args = p.parse_args(argv)
    storage = Path(tempfile.mkdtemp(prefix="embinject-overhead-"))
    search = load_search_file(
        args.search,
        [
            f"tune.storage_path={storage}",
            f"tune.num_samples={args.trials}",
            "tune.max_concurrent_trials=1",
            "tune.scheduler.type=none",
            f"train.max_steps={args.steps}",
            "train.eval_every=10",
            "train.patience=0",
            "tune.points_to_evaluate=[]",
            "tune.time_budget_s=null",
            "mlflow.register_as=null",
        ],
    )
    t0 = time.time()
    outcome = run_search(search, verbose=0)
    search_wall = time.time() - t0
    client = MlflowClient(outcome.tracking_uri)
    exp = client.get_experiment_by_name(outcome.experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    trials = []
    for r in runs:
        m = r.data.metrics
        wall = (r.info.end_time - r.info.start_time) / 1000
        started = datetime.fromisoformat(r.data.tags["trainable_started_at"]).timestamp()  # a tag, logged once
        before = started - r.info.start_time / 1000
        parts = {
            "process_start": before,
            "startup_in_trainable": m["startup_seconds"],
            "training_steps": m["train_seconds"],
            "evaluation": m["eval_seconds"],
        }
        parts["other"] = wall - sum(parts.values())
        trials.append(
            {
                "run_id": r.info.run_id,
                "wall_s": wall,
                **{f"{k}_s": v for k, v in parts.items()},
                "time_to_first_step_s": before + m["startup_seconds"],
                "non_step_share": 1 - m["train_seconds"] / wall,
            }
        )
    med = {k: statistics.median(t[k] for t in trials) for k in trials[0] if k.endswith("_s") or k.endswith("share")}
    result = {
        "benchmark": "trial_overhead",
        "trials": trials,
        "median": med,
        "search_wall_s": search_wall,
        "warm_cache_s": outcome.warm_cache_seconds,
        "steps_per_trial": args.steps,
        "eval_windows": search.config.train.eval_windows,
        "dtype": search.config.train.dtype,
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    OUT.mkdir(exist_ok=True)
    atomic_write_text(OUT / "trial_overhead.json", json.dumps(result, indent=1))
    print(json.dumps(med, indent=1))
    print(
        f"search wall {search_wall:.1f} s for {len(trials)} trials; "
        f"shared cache warm-up {outcome.warm_cache_seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
