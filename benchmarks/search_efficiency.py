"""Does TPE + ASHA find a good adapter with fewer training steps than random search?

    python -m benchmarks.search_efficiency [--seeds 0 1 2] [--trials 24] [--steps 20] [--startup-trials 3]
                                          [--kinds tpe_asha tpe_mv_asha tpe_mv_asha_rf1.5] [--summarise-only]

On one fixed space (learning rate, prefix length, MLP width, encoder) and a small real task (the
bundled SmolLM2-135M on CPython's docs), runs random search without early stopping and each other
strategy in KINDS (random search with ASHA, TPE with ASHA, multivariate TPE, a lower reduction factor),
for each seed, and traces the best validation perplexity against the cumulative number of training
steps spent (every trial's evaluations, in the order they happened). Reports how many steps each
strategy needs to come within 1% of random search's final best. Steps, not seconds, are the measure, so
the result does not depend on what else the machine runs.

Each finished search is kept in benchmarks/results/search_efficiency_runs/ with the settings it ran
under, and a rerun with the same settings skips it: the whole benchmark takes hours on a CPU and can be
interrupted and resumed. benchmarks/results/search_efficiency.json is rewritten after every search
from the searches finished so far; seeds still missing a search are listed there, not compared.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from embinject.fsutil import atomic_write_text
from embinject.space import load_search_file
from embinject.tune.driver.run import run_search as run_any_search
from embinject.tune.driver.outcome import SearchOutcome

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
RUNS = OUT / "search_efficiency_runs"
SPACE = (
    "search={train.lr: {loguniform: [3.0e-4, 1.0e-2]}, adapter.prefix_len: {randint: [1, 8]}, "
    "adapter.mlp_width: {choice: [64, 256, 512]}, "
    "adapter.embedding_model: {choice: [bundled:all-minilm-l6-v2, fourier, lm-mean]}}"
)


def run_search(search, **kwargs) -> SearchOutcome:
    """A search run to its end, or SystemExit naming what ended it otherwise: a search cut short by Ctrl-C or SIGTERM
    ends "gracefully" with fewer trials, one whose trials all failed ends with none, and a benchmark that recorded
    either would compare a truncated search."""
    outcome = run_any_search(search, **kwargs)
    if outcome.interrupted is not None:
        raise SystemExit(
            f"search {outcome.experiment_dir.name} was stopped by {outcome.interrupted.name}: nothing "
            "recorded for it (a rerun starts it again)"
        )
    if outcome.best is None:  # e.g. Ray's processes killed under it: every trial failed
        raise SystemExit(
            f"search {outcome.experiment_dir.name}: no trial finished ({outcome.experiment_dir / 'summary.csv'}"
            " says why); nothing recorded for it"
        )
    return outcome


def trace(outcome: SearchOutcome) -> list[tuple[int, float]]:
    """(cumulative steps, best val perplexity so far) after every evaluation of the search."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(outcome.tracking_uri)
    exp = client.get_experiment_by_name(outcome.experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    points = []
    for r in runs:
        last_step = 0
        for m in sorted(client.get_metric_history(r.info.run_id, "val_perplexity"), key=lambda m: m.step):
            points.append((m.timestamp, m.step - last_step, m.value))
            last_step = m.step
    curve, spent, best = [], 0, float("inf")
    for _, steps, value in sorted(points):
        spent += steps
        best = min(best, value)
        curve.append((spent, best))
    return curve


# strategy -> (multivariate TPE, ASHA reduction factor); "random" is random search without early stopping
# random search + ASHA separates what early stopping saves from what TPE's guidance adds
KINDS = {
    "random_asha": ("random", False, 2),
    "tpe_asha": ("tpe", False, 2),
    "tpe_mv_asha": ("tpe", True, 2),
    "tpe_mv_asha_rf1.5": ("tpe", True, 1.5),
}


def strategy(kind: str) -> dict:
    sampler, multivariate, rf = KINDS[kind]
    return {
        "multivariate": multivariate,
        "reduction_factor": rf,
        **({"sampler": "random"} if sampler == "random" else {}),
    }


def settings(kind: str, args) -> dict:
    """What a finished search must have run under to be reused."""
    return {
        "space": SPACE,
        "trials": args.trials,
        "steps": args.steps,
        "startup_trials": args.startup_trials,
        **({} if kind == "random" else strategy(kind)),
    }


def finished(kind: str, seed: int, args) -> dict | None:
    path = args.runs / f"{kind}-seed{seed}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("settings") == settings(kind, args) else None


def run(kind: str, seed: int, args) -> dict:
    storage = tempfile.mkdtemp(prefix=f"embinject-eff-{kind}-")
    sched, sampler = ["tune.scheduler.type=none"], "random"
    if kind != "random":
        sampler, multivariate, rf = KINDS[kind]
        sched = [
            f"tune.scheduler.max_t={args.steps}",
            f"tune.scheduler.grace_period={args.steps // 4}",
            f"tune.scheduler.reduction_factor={rf}",
            f"tune.startup_trials={args.startup_trials}",
            f"tune.multivariate={str(multivariate).lower()}",
        ]
    search = load_search_file(
        ROOT / "search_spaces" / "quickstart.yaml",
        [
            SPACE,
            f"tune.search_alg={'random' if sampler == 'random' else 'optuna'}",
            f"tune.seed={seed}",
            f"tune.num_samples={args.trials}",
            "tune.points_to_evaluate=[]",
            "tune.time_budget_s=null",
            f"train.max_steps={args.steps}",
            f"train.eval_every={args.steps // 4}",
            "train.patience=0",
            "data.train_samples=256",
            "data.val_samples=32",
            f"tune.storage_path={storage}",
            "mlflow.register_as=null",
            *sched,
        ],
    )
    t0 = time.time()
    outcome = run_search(search, verbose=0)
    curve = trace(outcome)
    record = {
        "kind": kind,
        "seed": seed,
        "settings": settings(kind, args),
        "wall_s": time.time() - t0,
        "total_steps": curve[-1][0] if curve else 0,
        "final_best": curve[-1][1] if curve else None,
        "curve": curve,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.runs.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.runs / f"{kind}-seed{seed}.json", json.dumps(record, indent=1))
    return record


def summarise(runs: list[dict], args) -> dict:
    """Compare each strategy with random search on the seeds where both searches have finished."""
    by = {(r["kind"], r["seed"]): r for r in runs}
    per_seed = []
    for seed in args.seeds:
        a = by.get(("random", seed))
        for kind in args.kinds:
            b = by.get((kind, seed))
            if a is None or b is None:
                continue
            target = 1.01 * a["final_best"]
            reached = next((steps for steps, best in b["curve"] if best <= target), None)
            # when random search drew its best
            random_reached = next(steps for steps, best in a["curve"] if best <= target)
            per_seed.append(
                {
                    "seed": seed,
                    "kind": kind,
                    "random_final_best": a["final_best"],
                    "random_steps": a["total_steps"],
                    "random_steps_to_within_1pct": random_reached,
                    "final_best": b["final_best"],
                    "steps": b["total_steps"],
                    "steps_to_within_1pct": reached,
                    "fraction_of_random_steps": None if reached is None else reached / a["total_steps"],
                }
            )
    median = {
        kind: statistics.median(
            s["fraction_of_random_steps"] if s["fraction_of_random_steps"] is not None else float("inf")
            for s in per_seed
            if s["kind"] == kind
        )
        for kind in args.kinds
        if any(s["kind"] == kind for s in per_seed)
    }
    missing = [
        f"{kind} seed {seed}" for seed in args.seeds for kind in ("random", *args.kinds) if (kind, seed) not in by
    ]
    return {
        "benchmark": "search_efficiency",
        "trials": args.trials,
        "steps_per_trial": args.steps,
        "startup_trials": args.startup_trials,
        "seeds": args.seeds,
        "kinds": {
            k: {"sampler": KINDS[k][0], "multivariate": KINDS[k][1], "reduction_factor": KINDS[k][2]}
            for k in args.kinds
        },
        "runs": runs,
        "per_seed": per_seed,
        "median_fraction": median,
        "missing": missing,
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--startup-trials", type=int, default=3, help="TPE's random start-up trials (tune.startup_trials)")
    p.add_argument("--out", type=Path, default=OUT / "search_efficiency.json")
    p.add_argument(
        "--kinds", nargs="+", default=list(KINDS), choices=list(KINDS), help="strategies to compare with random search"
    )
    p.add_argument("--runs", type=Path, default=RUNS, help="where finished searches are kept and resumed from")
    p.add_argument("--summarise-only", action="store_true", help="rewrite the summary from the kept searches; run none")
    args = p.parse_args(argv)
    runs = []
    for seed in args.seeds:  # seed by seed, so an interrupted benchmark already compares whole seeds
        for kind in ("random", *args.kinds):
            record = finished(kind, seed, args)
            if record is None and args.summarise_only:
                continue
            fresh = record is None
            if fresh:
                record = run(kind, seed, args)
                print(
                    f"{kind} seed {seed}: best {record['final_best']:.3f} after {record['total_steps']} steps",
                    flush=True,
                )
            runs.append(record)
            if fresh:  # an interrupted benchmark still leaves a summary of everything finished so far
                atomic_write_text(args.out, json.dumps(summarise(runs, args), indent=1))
    summary = summarise(runs, args)
    atomic_write_text(args.out, json.dumps(summary, indent=1))
    for s in summary["per_seed"]:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
