"""Does a search warm-started from a finished search on another corpus find a good adapter sooner than a cold one?

    python -m benchmarks.warm_start [--data ../shared/data] [--seeds 0 1 2] [--trials 24] [--steps 20]
                                    [--storage DIR] [--summarise-only]

On the space of benchmarks.search_efficiency (learning rate, prefix length, MLP width, encoder) with the
bundled SmolLM2-135M, for each corpus (Wikipedia, FineWeb-Edu) and seed: random search without early
stopping (the reference), a cold TPE + ASHA search, and the same search warm-started (`tune.warm_start`)
from the cold search of the same seed on the other corpus. As search_efficiency measures it: the share of
random search's steps a search needs to come within 1% of random search's final best. Steps, not seconds,
so the result does not depend on what else the machine runs.

Finished searches are kept in benchmarks/results/warm_start_runs/ (their curves) and under --storage (their
folders, which the warm searches start from; default: the cache directory's benchmarks/warm_start; the records
name them relative to it); a rerun skips what is there, so the hours it takes on a CPU
can be spread over several runs. benchmarks/results/warm_start.json is rewritten after every search.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from embinject.fsutil import atomic_write_text
from embinject.models import cache_root
from embinject.space import load_search_file

from .search_efficiency import SPACE, run_search, trace

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
RUNS = OUT / "warm_start_runs"
CORPORA = {"wikipedia": "wikipedia_en_sample", "fineweb": "fineweb_edu_sample"}
KINDS = ("random", "cold", "warm")


def settings(kind: str, corpus: str, args) -> dict:
    return {
        "space": SPACE,
        "corpus": CORPORA[corpus],
        "trials": args.trials,
        "steps": args.steps,
        "startup_trials": args.startup_trials,
        "kind": kind,
    }


def other(corpus: str) -> str:
    return next(c for c in CORPORA if c != corpus)


def finished(kind: str, corpus: str, seed: int, args) -> dict | None:
    path = args.runs / f"{corpus}-{kind}-seed{seed}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("settings") != settings(kind, corpus, args):
        return None
    if (
        kind == "cold"
        and not args.summarise_only
        and not (args.storage / record["experiment_dir"] / "summary.csv").is_file()
    ):
        return None  # a warm search starts from its folder: run it again where that is gone
    return record


def run(kind: str, corpus: str, seed: int, args, source: dict | None = None) -> dict:
    storage = args.storage / f"{corpus}-{kind}-seed{seed}"
    overrides = [
        SPACE,
        f"data.path={args.data / CORPORA[corpus]}",
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
        f"tune.name={corpus}-{kind}",
    ]
    if kind == "random":
        overrides += ["tune.search_alg=random", "tune.scheduler.type=none"]
    else:
        overrides += [
            f"tune.scheduler.max_t={args.steps}",
            f"tune.scheduler.grace_period={args.steps // 4}",
            "tune.scheduler.reduction_factor=2",
            f"tune.startup_trials={args.startup_trials}",
        ]
    if kind == "warm":
        overrides.append(f"tune.warm_start=[{args.storage / source['experiment_dir']}]")
    t0 = time.time()
    outcome = run_search(load_search_file(ROOT / "search_spaces" / "quickstart.yaml", overrides), verbose=0)
    curve = trace(outcome)
    record = {
        "kind": kind,
        "corpus": corpus,
        "seed": seed,
        "settings": settings(kind, corpus, args),
        "experiment_dir": str(outcome.experiment_dir.relative_to(args.storage)),
        "warm_start_from": source["experiment_dir"] if source else None,
        "wall_s": time.time() - t0,
        "total_steps": curve[-1][0] if curve else 0,
        "final_best": curve[-1][1] if curve else None,
        "curve": curve,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.runs.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.runs / f"{corpus}-{kind}-seed{seed}.json", json.dumps(record, indent=1))
    return record


def summarise(runs: list[dict], args) -> dict:
    """Each cold and warm search against the random search of its corpus and seed."""
    by = {(r["corpus"], r["kind"], r["seed"]): r for r in runs}
    per_search = []
    for (corpus, kind, seed), r in sorted(by.items()):
        ref = by.get((corpus, "random", seed))
        if kind == "random" or ref is None:
            continue
        target = 1.01 * ref["final_best"]
        reached = next((steps for steps, best in r["curve"] if best <= target), None)
        per_search.append(
            {
                "corpus": corpus,
                "seed": seed,
                "kind": kind,
                "random_final_best": ref["final_best"],
                "random_steps": ref["total_steps"],
                "final_best": r["final_best"],
                "steps": r["total_steps"],
                "steps_to_within_1pct": reached,
                "fraction_of_random_steps": None if reached is None else reached / ref["total_steps"],
            }
        )

    # pairs where both the cold and the warm search of a corpus and seed finished: the medians compare only those
    paired = sorted(
        {(s["corpus"], s["seed"]) for s in per_search if s["kind"] == "warm"}
        & {(s["corpus"], s["seed"]) for s in per_search if s["kind"] == "cold"}
    )

    def median(kind: str):
        values = [
            s["fraction_of_random_steps"] if s["fraction_of_random_steps"] is not None else float("inf")
            for s in per_search
            if s["kind"] == kind and (s["corpus"], s["seed"]) in paired
        ]
        return statistics.median(values) if values else None

    missing = [f"{c}-{k}-seed{s}" for s in args.seeds for c in CORPORA for k in KINDS if (c, k, s) not in by]
    return {
        "benchmark": "warm_start",
        "trials": args.trials,
        "steps_per_trial": args.steps,
        "startup_trials": args.startup_trials,
        "seeds": args.seeds,
        "corpora": CORPORA,
        "median_fraction_warm": median("warm"),
        "median_fraction_cold": median("cold"),
        "paired": [f"{c} seed {s}" for c, s in paired],
        "per_search": per_search,
        "missing": missing,
        "runs": runs,
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the shared data folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--startup-trials", type=int, default=3, help="TPE's random start-up trials (tune.startup_trials)")
    p.add_argument(
        "--storage",
        type=Path,
        default=cache_root() / "benchmarks" / "warm_start",
        help="where the searches' folders go",
    )
    p.add_argument("--out", type=Path, default=OUT / "warm_start.json")
    p.add_argument("--runs", type=Path, default=RUNS, help="where finished searches' curves are kept and resumed from")
    p.add_argument("--summarise-only", action="store_true", help="rewrite the summary from the kept searches; run none")
    args = p.parse_args(argv)
    args.data, args.storage = args.data.resolve(), args.storage.resolve()
    runs = []
    for seed in args.seeds:  # seed by seed, so an interrupted benchmark already compares whole seeds
        done: dict[tuple, dict] = {}
        for kind in KINDS:
            for corpus in CORPORA:
                record = finished(kind, corpus, seed, args)
                if record is None and not args.summarise_only:
                    source = done.get(("cold", other(corpus))) if kind == "warm" else None
                    if kind == "warm" and source is None:
                        continue  # the other corpus's cold search did not finish
                    record = run(kind, corpus, seed, args, source)
                    print(
                        f"{corpus} {kind} seed {seed}: best {record['final_best']:.3f} "
                        f"after {record['total_steps']} steps",
                        flush=True,
                    )
                    runs.append(record)
                    atomic_write_text(args.out, json.dumps(summarise(runs, args), indent=1))
                elif record is not None:
                    runs.append(record)
                if record is not None:
                    done[(kind, corpus)] = record
    summary = summarise(runs, args)
    atomic_write_text(args.out, json.dumps(summary, indent=1))
    print(
        f"median share of random search's steps: warm {summary['median_fraction_warm']}, "
        f"cold {summary['median_fraction_cold']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
