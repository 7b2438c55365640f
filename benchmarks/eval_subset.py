"""Do cheap intermediate evaluations make the same early-stopping decisions as full ones?

    python -m benchmarks.eval_subset [--trials 8] [--steps 40] [--val 256] [--subset 64]

Runs a quickstart search (bundled SmolLM2-135M, no early stopping, so every trial reaches every rung)
with `train.eval_windows=SUBSET` and `train.eval_audit=true`: every intermediate evaluation is scored
on the fixed subset (what ASHA and patience act on) and on all validation windows. At each rung it
compares the trials' two rankings: Spearman rank correlation, and how often ASHA's decision with
reduction factor 2 (the better half goes on) is the same. Also times a subset evaluation against a
full one. Writes benchmarks/results/eval_subset.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from embinject.config_files import load_config
from embinject.fsutil import atomic_write_text
from embinject.methods import build_method
from embinject.space import load_search_file
from embinject.train import autocast_dtype, eval_subset, prepare
from embinject.train.evaluation import perplexity

from .search_efficiency import run_search

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else 1.0


def _args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--val", type=int, default=256, help="validation windows (the default data.val_samples)")
    p.add_argument("--subset", type=int, default=64, help="train.eval_windows to measure")
    p.add_argument("--search", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    p.add_argument(
        "--data",
        default=str(ROOT.parent / "shared" / "data" / "wikipedia_en_sample"),
        help="a corpus with at least --val validation windows (the built-in docs give 77 at 32 tokens)",
    )
    return p.parse_args(argv)


def audited_search(args) -> tuple[Path, float]:
    """The search with every intermediate evaluation scored on the subset and on all windows: its folder and wall
    time."""
    storage = Path(tempfile.mkdtemp(prefix="embinject-evalsubset-"))
    search = load_search_file(
        args.search,
        [
            f"tune.storage_path={storage}",
            f"tune.num_samples={args.trials}",
            "tune.scheduler.type=none",
            f"data.path={args.data}",
            f"train.max_steps={args.steps}",
            "train.eval_every=10",
            "train.patience=0",
            f"data.val_samples={args.val}",
            f"train.eval_windows={args.subset}",
            "train.eval_audit=true",
            "tune.time_budget_s=null",
            "mlflow.register_as=null",
        ],
    )
    t0 = time.time()
    outcome = run_search(search, verbose=0)
    return outcome.experiment_dir, time.time() - t0


def rung_pairs(exp_dir: Path) -> dict[int, list[tuple[float, float]]]:
    """Each rung's (subset, all windows) perplexity of every trial, from the trials' results."""
    by_rung: dict[int, list[tuple[float, float]]] = {}
    for trial in sorted(exp_dir.glob("trial_*")):
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        for r in rows:
            if "val_perplexity_full" in r:  # the last evaluation's subset value is kept as val_perplexity_subset
                by_rung.setdefault(int(r["step"]), []).append(
                    (r.get("val_perplexity_subset", r["val_perplexity"]), r["val_perplexity_full"])
                )
    return by_rung


def compare_rungs(by_rung: dict[int, list[tuple[float, float]]]) -> list[dict]:
    """At each rung, how alike the two rankings are and whether ASHA (reduction factor 2) would decide alike."""
    rungs = []
    for step, pairs in sorted(by_rung.items()):
        sub, full = [a for a, _ in pairs], [b for _, b in pairs]
        half = len(pairs) // 2
        top_sub = set(sorted(range(len(pairs)), key=lambda i: sub[i])[:half])
        top_full = set(sorted(range(len(pairs)), key=lambda i: full[i])[:half])
        rungs.append(
            {
                "step": step,
                "trials": len(pairs),
                "spearman": spearman(sub, full),
                "same_half_kept": len(top_sub & top_full) / max(half, 1),
                "same_best": min(range(len(pairs)), key=lambda i: sub[i])
                == min(range(len(pairs)), key=lambda i: full[i]),
                "median_abs_rel_diff": statistics.median(abs(a - b) / b for a, b in pairs),
            }
        )
    return rungs


def time_evaluations(args) -> tuple[list[dict], int]:
    """The cost of one evaluation, subset against all windows, on the bundled model; and the validation windows."""
    cfg = load_config(
        args.search,
        [f"data.val_samples={args.val}", "method=prompt", f"data.path={args.data}"],
        extra_sections=("search", "tune", "mlflow"),
    )
    prep = prepare(cfg)
    method = build_method(cfg, prep.lm.model, prep.encoder_dim, prep.lm.tokenizer)
    amp = autocast_dtype(cfg, prep.device)
    subset, _ = eval_subset(prep.val, args.subset)
    eval_times = []
    for data, name in ((subset, "subset"), (prep.val, "all")):
        perplexity(method, data, cfg.train.eval_batch_size, prep.device, amp)  # warm-up
        t = time.perf_counter()
        for _ in range(2):
            perplexity(method, data, cfg.train.eval_batch_size, prep.device, amp)
        eval_times.append({"windows": len(data["input_ids"]), "which": name, "seconds": (time.perf_counter() - t) / 2})
    return eval_times, len(prep.val["input_ids"])


def main(argv=None) -> int:
    args = _args(argv)
    exp_dir, wall = audited_search(args)
    rungs = compare_rungs(rung_pairs(exp_dir))
    eval_times, val_windows = time_evaluations(args)
    result = {
        "benchmark": "eval_subset",
        "trials": args.trials,
        "steps": args.steps,
        "val_windows": val_windows,
        "data": args.data,
        "subset": args.subset,
        "rungs": rungs,
        "eval_times": eval_times,
        "search_wall_s": wall,
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    OUT.mkdir(exist_ok=True)
    atomic_write_text(OUT / "eval_subset.json", json.dumps(result, indent=1))
    print(json.dumps(rungs, indent=1))
    print(json.dumps(eval_times, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
