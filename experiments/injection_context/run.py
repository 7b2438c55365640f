"""How much of unseen preceding text can a few injected vectors carry? The main embedding-injection study.

    python -m experiments.injection_context.run --data ../shared/data/wikipedia_en_sample
    python -m experiments.injection_context.run --data ../shared/data/fineweb_edu_sample --arms headline

The sentence encoder reads the 64 tokens that precede a window (`embed_source: previous`); the frozen
LM reads k vectors made from them and is scored on the window. Every arm is scored on exactly the
same test tokens: the frozen LM alone (baseline), the LM reading the preceding text itself as
ordinary tokens (the last m of them: the text upper bound and its own compression curve), a static
prefix of matched length, injection with k = 1, 2, 4, 8 vectors, the shuffled-embedding and
constant-input controls, and the `fourier` and `lm-mean` encoders.

Splits: every 10th training document is the validation split (early stopping, learning-rate
search); the corpus's own validation file is the test split, which nothing is selected on. Each
method's learning rate comes from an `embinject.tune` search (lr_search.yaml); every trained arm runs
for several seeds, each in its own process (`train_arm.py`: peak memory is that arm's, and it starts
without Ray), and writes one record under runs/<corpus>/ - an interrupted study continues where it
stopped. RESULTS.md reports seed-level 95% intervals (Student's t over per-seed statistics, arms
paired by seed and window) and draws a verdict only where the interval excludes zero over at least 5
seeds (fewer: "suggestive").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from embinject.config import Config
from embinject.config_files import load_config
from embinject.errors import ConfigError
from embinject.tracking import flatten
from embinject.train import resolve_device
from embinject.train.precision import resolve_dtype
from experiments.injection_context.arms import (
    ARM_SETS,
    ARMS,
    CURVE,
    HEADLINE,
    HERE,
    IGNORED_SETTINGS,
    LR_RULE_GRID,
    SEEDS,
    WINDOW,
    lr_group,
)
from experiments.injection_context.describe import shared_chunk_mlp
from experiments.injection_context.report import write_report
from experiments.injection_context.rates import bracket, learning_rate, lr_at_budget, lr_source, seed_records
from experiments.injection_context.train_arm import (
    arm_config,
    base_overrides,
    diverged_path,
    extra_dir,
    lr_check_path,
    missing_references,
    record_path,
    study_data,
)

LR_CHECK_ARMS = {"prompt": "static-4", "injection": "inject-4"}


def lr_check_jobs(lrs: dict[str, float]) -> list[tuple[str, float]]:
    """--lr-check: each method's 4-vector arm, seed 0, at half and twice its rate (two significant digits), so a
    series trained longer than its learning-rate search says whether the searched rate still suits that budget."""
    return [(LR_CHECK_ARMS[m], float(f"{lr * f:.2g}")) for m, lr in lrs.items() if m in LR_CHECK_ARMS for f in (0.5, 2)]


def rule_rate(runs: Path, arm: str) -> float | None:
    """The rate `--lr-at-budget` found for an arm at its own budget, which its runs then train with; None where no such
    search has run."""
    path = runs / f"lr_at_budget_{arm}.json"
    return json.loads(path.read_text()).get("lr") if path.is_file() else None


def check_records_match(args, runs: Path, arms: list[str], data_dir: Path, lrs: dict[str, float]) -> None:
    """A record is reused only if it was run with the settings this call asks for: records of another budget (say
    `--set train.max_epochs=3`) would otherwise be mixed silently into one table. Another series goes to
    another --out."""
    import dataclasses

    defaults = flatten(dataclasses.asdict(Config()))
    for arm in arms:
        wanted = None
        for seed in args.seeds:
            path = record_path(runs, arm, seed)
            if not path.is_file():
                continue
            if wanted is None:
                lr = rule_rate(runs, arm) or lrs[lr_group(arm)]
                wanted = flatten(dataclasses.asdict(arm_config(args, arm, data_dir, lr)))
            record = json.loads(path.read_text())
            had = flatten(record["config"])
            # A record from before a key existed ran with that key's default, which keeps the earlier behaviour; but
            # before adapter.ablation, a record named its control in its own field (the same treatment)
            had.setdefault("adapter.ablation", record.get("control") or "none")
            had = {**defaults, **had}
            for key in sorted(set(wanted) | set(had)):
                if key not in IGNORED_SETTINGS and wanted.get(key) != had.get(key):
                    raise ConfigError(
                        f"{path}: run with {key}={had.get(key)!r}, but this call asks for {wanted.get(key)!r}; "
                        "runs with other settings belong in another --out folder (a separate series), or "
                        "delete that record to run it again"
                    )


def series_precision(args, data_dir: Path) -> str:
    """The precision this call trains at: `train.dtype` resolved on this machine (`auto`: bfloat16 only where the CPU
    or GPU has fast bf16)."""
    cfg = load_config(args.config, base_overrides(args, data_dir))
    return resolve_dtype(cfg.train.dtype, resolve_device(cfg.train.device))


def check_chunk_layout(runs: Path, arms: list[str]) -> None:
    """A chunk arm's records from before each chunk had its position's own rows of the MLP (one MLP shared by the
    chunks) are another design: a seed trained now would mix the two in one arm."""
    for arm in arms:
        for path, record in seed_records(runs, arm):
            if shared_chunk_mlp([record]):
                raise ConfigError(
                    f"{path}: trained with one MLP shared by its chunks, before each chunk had its position's "
                    "own rows; this version's runs would mix two designs in one arm: train it in another --out "
                    "folder, or delete its records to train it again"
                )


def check_precision(args, runs: Path, arms: list[str], data_dir: Path) -> str:
    """Every seed of an arm at one training precision: runs of another precision follow another trajectory from the
    same seed, so one arm's seeds would mix two set-ups. `auto` differs between machines (bfloat16 only with fast
    bf16), so the resolved precision is what the records keep and what is compared. Arms of different precisions
    can sit in one series; the report names them and marks the comparisons between them."""
    precision = series_precision(args, data_dir)
    for arm in arms:
        for path, record in seed_records(runs, arm):
            had = record.get("dtype", precision)  # records from before the field: not known
            if had != precision:
                raise ConfigError(
                    f"{path}: trained in {had}, but this call trains in {precision} (train.dtype on this "
                    f"machine); give --set train.dtype={had} to train {arm}'s other seeds as that one "
                    "(bfloat16 is several times slower on a CPU without bf16 instructions), or train it in "
                    "another --out folder"
                )
    return precision


def spawn(args, arm: str, seed: int | None = None, lr: float | None = None, lr_check: bool = False) -> int:
    cmd = [
        sys.executable,
        "-m",
        "experiments.injection_context.train_arm",
        "--data",
        str(args.data),
        "--config",
        args.config,
        "--out",
        str(args.out),
        "--arm",
        arm,
        "--threads",
        str(args.threads),
    ]
    cmd += [] if seed is None else ["--seed", str(seed), "--lr", repr(lr)]
    cmd += ["--lr-check"] if lr_check else []
    for o in args.overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, env=env, cwd=HERE.parent.parent)
    if done.returncode != 0:
        print(f"{arm} seed {seed} failed (exit {done.returncode}); the other runs go on", file=sys.stderr, flush=True)
    return done.returncode


def drive(args) -> int:
    from experiments.common import log_result

    data_dir, _ = study_data(args.data)
    runs = args.out / "runs" / args.data.name
    arms = ARM_SETS.get(args.arms[0], args.arms) if len(args.arms) == 1 else args.arms
    groups = list(dict.fromkeys(lr_group(a) for a in arms))  # a method's or a design's learning-rate search
    if args.lr_from:  # before anything is written under --out
        for g in groups:
            if not (runs / f"lr_search_{g}.json").is_file():
                lr_source(args, runs, g)
    for extra in {extra_dir(args.data, a) for a in arms} - {None}:  # checked and written once, before any run
        study_data(args.data, extra)
    runs.mkdir(parents=True, exist_ok=True)
    check_chunk_layout(runs, arms)
    precision = check_precision(args, runs, arms, data_dir)  # before any search, which trains at it too
    lrs = {g: learning_rate(args, g, data_dir, runs, precision, arms) for g in groups}
    for m in lrs:
        if (runs / f"lr_search_{m}.json").is_file():
            bracket(args, m, data_dir, runs)
    check_records_match(args, runs, arms, data_dir, lrs)
    # Every seed of the headline arms first, then the `window` comparison, the compression curve, the rest: a study
    # stopped early has whole comparisons rather than one seed of everything.
    tiers = [[a for a in arms if a in t] for t in (HEADLINE, WINDOW, CURVE)]
    tiers.append([a for a in arms if a not in HEADLINE + WINDOW + CURVE])
    todo = [
        (a, s)
        for tier in tiers
        for s in args.seeds
        for a in tier
        if not record_path(runs, a, s).is_file() and not diverged_path(runs, a, s).is_file()
    ]
    if missing_references(runs):
        todo.insert(0, ("reference", None))  # evaluation only and quick; every table of the report needs it
    if args.lr_check:
        todo += [
            ("lr-check", job)
            for job in lr_check_jobs(lrs)
            if not lr_check_path(args.out, args.data.name, *job).is_file()
        ]
    print(f"{len(todo)} runs to do; learning rates {lrs}", flush=True)

    def one(job):
        arm, seed = job
        if arm == "lr-check":
            check_arm, check_lr = seed  # an lr-check job is ("lr-check", (arm, lr)), trained at seed 0
            spawn(args, check_arm, 0, check_lr, lr_check=True)
            return
        if arm == "reference":
            if missing_references(runs):  # another process may have written them meanwhile
                spawn(args, "reference")
            return
        lr = rule_rate(runs, arm) or lrs[lr_group(arm)]  # its search at its own budget, where one has run
        if spawn(args, arm, seed, lr) == 0 and args.mlflow and record_path(runs, arm, seed).is_file():  # not diverged
            r = json.loads(record_path(runs, arm, seed).read_text())
            log_result(
                args.mlflow,
                "experiment-injection-context",
                f"{args.data.name} | {arm} | seed {seed}",
                {"corpus": args.data.name, "arm": arm, "seed": seed, "lr": r["lr"]},
                metrics={"val_perplexity": r["val_perplexity"], "steps": r["steps"], "peak_rss_mb": r["peak_rss_mb"]},
            )

    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(one, todo))
    return 0


def rule_searches(args) -> None:
    """`--lr-at-budget`: each named arm's search under the learning-rate rule, one after another."""
    data_dir, _ = study_data(args.data)
    runs = args.out / "runs" / args.data.name
    for extra in {extra_dir(args.data, a) for a in args.lr_at_budget} - {None}:  # checked before anything is written
        study_data(args.data, extra)
    runs.mkdir(parents=True, exist_ok=True)
    precision = check_precision(args, runs, args.lr_at_budget, data_dir)
    for arm in args.lr_at_budget:
        lr_at_budget(args, arm, runs, precision)


def main(argv=None) -> int:
    from experiments.common import default_tracking_uri

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="a shared corpus folder with train.jsonl and validation.jsonl")
    p.add_argument("--config", default=str(HERE / "config.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--arms", nargs="+", default=["all"], help=f"arm names or a set: {', '.join(ARM_SETS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--workers", type=int, default=2, help="runs at once, each in its own process")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--mlflow", default=None, help="tracking URI (default: sqlite:///<out>/mlflow.db)")
    p.add_argument("--render-only", action="store_true", help="write RESULTS.md from the records under <out>/runs")
    p.add_argument(
        "--lr-from",
        type=Path,
        help="take the learning rates from the searches of the series in this --out "
        "(a series trained longer than those searches ran goes with --lr-check)",
    )
    p.add_argument(
        "--lr-at-budget",
        nargs="+",
        metavar="ARM",
        default=[],
        help="search these arms' learning rates at the budget each is reported at (its own windows, epochs "
        "and "
        "early stopping; every trial to the end, scored on the whole validation split; "
        f"{', '.join(map(str, LR_RULE_GRID))} "
        "and one step beyond the best on each side), recorded as runs/<corpus>/lr_at_budget_<arm>.json; the "
        "arms' runs then train at that rate. Runs the searches only (no arm's seeds)",
    )
    p.add_argument(
        "--lr-check",
        action="store_true",
        help="also train seed 0 of static-4 and inject-4 at half and twice "
        "their method's rate (records under <out>/lr_check/)",
    )
    args = p.parse_args(argv)
    args.data = args.data.resolve() if args.data else None
    args.out = args.out.resolve()
    args.lr_from = args.lr_from.resolve() if args.lr_from else None
    args.mlflow = args.mlflow or default_tracking_uri(args.out)
    unknown = [a for a in args.lr_at_budget if a not in ARMS]
    if unknown:
        p.error(f"--lr-at-budget: unknown arm {unknown[0]} (arms: {', '.join(ARMS)})")
    unknown = [a for a in args.arms if a not in ARMS and a not in ARM_SETS]
    if unknown:
        p.error(f"--arms: unknown arm {unknown[0]} (arms: {', '.join(ARMS)}; sets: {', '.join(ARM_SETS)})")
    try:  # bad input: one line, exit 2, nothing written
        if not args.render_only:
            if args.data is None:
                p.error("--data is required unless --render-only")
            if args.lr_at_budget:
                rule_searches(args)
            else:
                drive(args)  # checks --data before it writes anything
        print(f"wrote {write_report(args.out)}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
