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
from embinject.fsutil import atomic_write_text
from embinject.space import load_search_file
from embinject.tracking import flatten
from embinject.train import resolve_device
from embinject.train.precision import resolve_dtype
from embinject.tune.driver.run import run_search
from embinject.tune.driver.outcome import SearchOutcome
from experiments.injection_context.arms import (ARM_SETS, ARMS, CURVE, HEADLINE, HERE, IGNORED_SETTINGS, LR_RULE_GRID,
                                               SEEDS, WINDOW, budget_of, extra_corpus, lr_edge, lr_group, lr_shape)
from experiments.injection_context.describe import bracket_verdict, shared_chunk_mlp
from experiments.injection_context.report import write_report
from experiments.injection_context.train_arm import (arm_config, base_overrides, diverged_path, extra_dir, lr_check_path, missing_references,
                                                    record_path, study_data)

# ---------------------------------------------------------------- learning rates, chosen by embinject.tune

def lr_search(args, group: str, data_dir: Path, runs: Path, name: str, extra: list[str] = ()) -> dict:
    """Run lr_search.yaml through embinject.tune on the validation split for a method's or a design's arm
    (`arms.lr_shape`); returns the search's outcome."""
    import yaml

    raw = yaml.safe_load(Path(args.config).read_text())
    for section, values in yaml.safe_load((HERE / "lr_search.yaml").read_text()).items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) and section in raw else values
    method, shape = lr_shape(group)
    file = runs / f"lr_search_{group}.yaml"
    atomic_write_text(file, yaml.safe_dump(raw, sort_keys=False))
    search = load_search_file(file, base_overrides(args, data_dir, search=True) + [
        f"method={method}", *[f"{k}={v}" for k, v in shape.items()], f"tune.name={name}",
        f"mlflow.tracking_uri={args.mlflow}", "mlflow.experiment=experiment-injection-context-lr", *extra])
    outcome = run_search(search, verbose=0)
    if outcome.interrupted or outcome.best is None:
        raise SystemExit(f"error: the learning-rate search {name} did not finish; see {outcome.experiment_dir}")
    return outcome


def searched_trials(outcome: SearchOutcome) -> list[dict]:
    import csv

    with open(outcome.experiment_dir / "summary.csv") as fh:
        return [{"lr": float(r["train.lr"]), "val_perplexity": float(r["best_val_perplexity"]), "steps": int(r["steps"])}
                for r in csv.DictReader(fh) if r["best_val_perplexity"]]


def lr_source(args, runs: Path, method: str) -> Path:
    """--lr-from: the other series' learning-rate search for `method` on this corpus."""
    source = args.lr_from / "runs" / runs.name / f"lr_search_{method}.json"
    if not source.is_file():
        raise ConfigError(f"--lr-from: {source} not found (run that series' learning-rate search first)")
    return source


def recorded_rate(runs: Path, group: str, arms: list[str]) -> float | None:
    """The one rate the recorded seeds of `group`'s arms trained at, or None where none is recorded. A control whose
    seeds were trained at its design's rate, before controls had searches of their own, keeps that rate for its
    other seeds: a new search would give them another, and one arm would mix two set-ups."""
    rates = {record["lr"]: path for a in arms if lr_group(a) == group for path, record in seed_records(runs, a)}
    if len(rates) > 1:
        raise ConfigError(f"{group}: its arms' records trained at {len(rates)} learning rates ({', '.join(map(str, sorted(rates)))}, "
                          f"e.g. {rates[max(rates)]}); delete the records of one rate to train the others as them")
    return next(iter(rates), None)


def learning_rate(args, group: str, data_dir: Path, runs: Path, precision: str, arms: list[str] = ()) -> float:
    """The best learning rate of a small search over the validation split for a method or a design (recorded, so it
    runs once); for a group with no search but with recorded seeds, the rate they trained at."""
    record = runs / f"lr_search_{group}.json"
    if not record.is_file() and args.lr_from:  # another series' search, copied so this series' records say where it came from
        source = lr_source(args, runs, group)
        atomic_write_text(record, json.dumps({**json.loads(source.read_text()), "from": os.path.relpath(source, args.out)}, indent=1))
    if record.is_file():
        return json.loads(record.read_text())["lr"]
    if (lr := recorded_rate(runs, group, arms)) is not None:
        print(f"[{runs.name}] {group}: no search of its own; its arms continue at the rate their recorded seeds trained at, "
              f"{lr:.3g}", flush=True)
        return lr
    print(f"[{runs.name}] {group}: searching its learning rate through embinject.tune (the runs wait for it)", flush=True)
    outcome = lr_search(args, group, data_dir, runs, f"lr-{runs.name}-{group}")
    lr = float(outcome.best["train.lr"])
    trials = searched_trials(outcome)
    atomic_write_text(record, json.dumps({"method": group, "lr": lr, "trials": trials, "dtype": precision},
                                         indent=1))
    print(f"[{runs.name}] {group}: lr {lr:.3g} (" + ", ".join(f"{t['lr']:.2g}: {t['val_perplexity']:.2f}" for t in trials)
          + " validation perplexity)", flush=True)
    return lr


def bracket(args, group: str, data_dir: Path, runs: Path) -> None:
    """When the chosen learning rate is the largest (smallest) the search tried, train one more full-epoch trial at
    twice (half) that rate, so the record says whether the optimum was bracketed. The chosen rate stays what the
    arms were trained with; the report shows the check's outcome."""
    path = runs / f"lr_search_{group}.json"
    record = json.loads(path.read_text())
    edge = lr_edge(record)
    if "bracket" in record or edge is None:
        return
    lr = record["lr"] * (2 if edge == "largest" else 0.5)
    print(f"[{runs.name}] {group}: its rate is the {edge} tried; one more trial at {lr:.3g} checks beyond it", flush=True)
    outcome = lr_search(args, group, data_dir, runs, f"lr-{runs.name}-{group}-bracket",
                        ["tune.num_samples=1", f"tune.points_to_evaluate=[{{train.lr: {lr!r}}}]", "tune.scheduler.type=none",
                         f"tune.resources.cpus={max(1, min(os.cpu_count() or 1, args.workers * args.threads))}"])  # the one trial: every core
    record["bracket"] = searched_trials(outcome)
    atomic_write_text(path, json.dumps(record, indent=1))
    print(f"[{runs.name}] {group}: {bracket_verdict(record)}", flush=True)


# ---------------------------------------------------------------- the learning-rate rule: each arm at its own budget

def rule_search_settings(args, arm: str, data_dir: Path, lrs: list[float]) -> dict:
    """The search file of one round of `--lr-at-budget`: the arm's own config (its windows, epochs, early stopping;
    controls with their input), every trial run to the end (no scheduler) and scored on the whole validation split
    (a trial that ends reports its kept adapter on every validation window), one trial per rate."""
    import yaml

    raw = yaml.safe_load(Path(args.config).read_text())
    method, shape, control, _ = ARMS[arm]
    raw["method"] = method
    for key, value in {**shape, **({"adapter.ablation": control} if control else {})}.items():
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = value
    raw["search"] = {"train.lr": {"choice": list(lrs)}}
    raw["tune"] = {"num_samples": len(lrs), "max_concurrent_trials": args.workers, "search_alg": "random", "seed": 0,
                   "points_to_evaluate": [{"train.lr": lr} for lr in lrs], "scheduler": {"type": "none"},
                   "resources": {"cpus": args.threads, "gpus": 0}, "storage_path": str(args.out / "tune")}
    return raw


MOST_BEYOND = 4  # steps beyond the grid a rule search takes at most (16x): a best still at the edge is reported so


def next_rates(trials: list[dict]) -> list[float]:
    """The rule's rates still to try: LR_RULE_GRID, then one step beyond the best on each side (a factor of 2 below
    the smallest or above the largest rate tried, where the best is that rate) until the best has a neighbour on
    both sides, or MOST_BEYOND steps were taken (the report then shows the best at the edge of the rates tried)."""
    tried = {round(t["lr"], 12) for t in trials}
    missing = [lr for lr in LR_RULE_GRID if round(lr, 12) not in tried]
    if missing or not trials:
        return missing or list(LR_RULE_GRID)
    if len(tried) - len(LR_RULE_GRID) >= MOST_BEYOND:
        return []
    best = min(trials, key=lambda t: t["val_perplexity"])["lr"]
    if best <= min(tried):
        return [float(f"{best / 2:.3g}")]
    if best >= max(tried):
        return [float(f"{best * 2:.3g}")]
    return []


def lr_at_budget(args, arm: str, runs: Path, precision: str) -> dict:
    """`--lr-at-budget ARM`: the arm's learning rate searched at the budget it is reported at, under the rule of
    `arms.LR_RULE_GRID`, through embinject.tune; the record (runs/<corpus>/lr_at_budget_<arm>.json) grows after each
    round, so a stopped search continues where it stopped, and the report shows its table."""
    import yaml

    path = runs / f"lr_at_budget_{arm}.json"
    record = json.loads(path.read_text()) if path.is_file() else {"arm": arm, "trials": []}
    data_dir, _ = study_data(args.data, extra_dir(args.data, arm))
    while todo := next_rates(record["trials"]):
        raw = rule_search_settings(args, arm, data_dir, todo)
        file = runs / f"lr_at_budget_{arm}.yaml"
        atomic_write_text(file, yaml.safe_dump(raw, sort_keys=False))
        # the rule fixes the trials (every rate to the end): --set tune.* values meant for the pruned searches stay out
        overrides = [o for o in base_overrides(args, data_dir, search=True)
                     if not o.startswith("tune.") or o.startswith("tune.storage_path=")]
        search = load_search_file(file, overrides + [
            f"tune.name=lr-at-budget-{runs.name}-{arm}-{len(record['trials'])}", f"mlflow.tracking_uri={args.mlflow}",
            "mlflow.experiment=experiment-injection-context-lr"])
        print(f"[{runs.name}] {arm}: its rate at its own budget, trying {', '.join(map(str, todo))}", flush=True)
        outcome = run_search(search, verbose=0)
        if outcome.interrupted or outcome.best is None:
            raise SystemExit(f"error: the learning-rate search for {arm} did not finish; see {outcome.experiment_dir}")
        cfg = arm_config(args, arm, data_dir, todo[0])
        record.update(budget=budget_of(cfg.to_dict(), extra_corpus(arm)), dtype=precision, grid=list(LR_RULE_GRID),
                      trials=record["trials"] + searched_trials(outcome))
        record["lr"] = min(record["trials"], key=lambda t: t["val_perplexity"])["lr"]
        atomic_write_text(path, json.dumps(record, indent=1))
    tried = ", ".join(f"{t['lr']:.3g}: {t['val_perplexity']:.2f}" for t in sorted(record["trials"], key=lambda t: t["lr"]))
    print(f"[{runs.name}] {arm}: lr {record['lr']:.3g} at its own budget ({tried})", flush=True)
    return record


# ---------------------------------------------------------------- driver

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
    `--set train.max_epochs=3`) would otherwise be mixed silently into one table. Another series goes to another --out."""
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
                    raise ConfigError(f"{path}: run with {key}={had.get(key)!r}, but this call asks for {wanted.get(key)!r}; "
                                      "runs with other settings belong in another --out folder (a separate series), or "
                                      "delete that record to run it again")


def series_precision(args, data_dir: Path) -> str:
    """The precision this call trains at: `train.dtype` resolved on this machine (`auto`: bfloat16 only where the CPU
    or GPU has fast bf16)."""
    cfg = load_config(args.config, base_overrides(args, data_dir))
    return resolve_dtype(cfg.train.dtype, resolve_device(cfg.train.device))


def seed_records(runs: Path, arm: str) -> list[tuple[Path, dict]]:
    """Every recorded seed of an arm, whichever seeds this call asks for: a new seed joins them."""
    return [(path, json.loads(path.read_text())) for path in sorted(runs.glob(f"{arm}__seed*.json"))]


def check_chunk_layout(runs: Path, arms: list[str]) -> None:
    """A chunk arm's records from before each chunk had its position's own rows of the MLP (one MLP shared by the
    chunks) are another design: a seed trained now would mix the two in one arm."""
    for arm in arms:
        for path, record in seed_records(runs, arm):
            if shared_chunk_mlp([record]):
                raise ConfigError(f"{path}: trained with one MLP shared by its chunks, before each chunk had its position's "
                                  "own rows; this version's runs would mix two designs in one arm: train it in another --out "
                                  "folder, or delete its records to train it again")


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
                raise ConfigError(f"{path}: trained in {had}, but this call trains in {precision} (train.dtype on this "
                                  f"machine); give --set train.dtype={had} to train {arm}'s other seeds as that one "
                                  "(bfloat16 is several times slower on a CPU without bf16 instructions), or train it in "
                                  "another --out folder")
    return precision


def spawn(args, arm: str, seed: int | None = None, lr: float | None = None, lr_check: bool = False) -> int:
    cmd = [sys.executable, "-m", "experiments.injection_context.train_arm", "--data", str(args.data), "--config", args.config,
           "--out", str(args.out), "--arm", arm, "--threads", str(args.threads)]
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
    todo = [(a, s) for tier in tiers for s in args.seeds for a in tier
            if not record_path(runs, a, s).is_file() and not diverged_path(runs, a, s).is_file()]
    if missing_references(runs):
        todo.insert(0, ("reference", None))  # evaluation only and quick; every table of the report needs it
    if args.lr_check:
        todo += [("lr-check", job) for job in lr_check_jobs(lrs) if not lr_check_path(args.out, args.data.name, *job).is_file()]
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
            log_result(args.mlflow, "experiment-injection-context", f"{args.data.name} | {arm} | seed {seed}",
                       {"corpus": args.data.name, "arm": arm, "seed": seed, "lr": r["lr"]},
                       metrics={"val_perplexity": r["val_perplexity"], "steps": r["steps"], "peak_rss_mb": r["peak_rss_mb"]})

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
    p.add_argument("--lr-from", type=Path, help="take the learning rates from the searches of the series in this --out "
                   "(a series trained longer than those searches ran goes with --lr-check)")
    p.add_argument("--lr-at-budget", nargs="+", metavar="ARM", default=[],
                   help="search these arms' learning rates at the budget each is reported at (its own windows, epochs "
                   "and "
                   "early stopping; every trial to the end, scored on the whole validation split; "
                   f"{', '.join(map(str, LR_RULE_GRID))} "
                   "and one step beyond the best on each side), recorded as runs/<corpus>/lr_at_budget_<arm>.json; the "
                   "arms' runs then train at that rate. Runs the searches only (no arm's seeds)")
    p.add_argument("--lr-check", action="store_true", help="also train seed 0 of static-4 and inject-4 at half and twice "
                   "their method's rate (records under <out>/lr_check/)")
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
