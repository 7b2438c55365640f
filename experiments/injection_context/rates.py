"""The injection study's learning rates, each chosen by an `embinject.tune` search (lr_search.yaml): per method at
the study's budget, bracketed where a best lies at the grid's edge, and by the rule's searches at each arm's own budget
(`run.py --lr-at-budget ARM`). `run.py` asks here before it trains an arm.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from embinject.errors import ConfigError
from embinject.fsutil import atomic_write_text
from embinject.space import load_search_file
from embinject.tune.driver.run import run_search
from embinject.tune.driver.outcome import SearchOutcome
from experiments.injection_context.arms import (
    ARMS,
    HERE,
    LR_RULE_GRID,
    budget_of,
    extra_corpus,
    lr_edge,
    lr_group,
    lr_shape,
)
from experiments.injection_context.describe import bracket_verdict
from experiments.injection_context.train_arm import arm_config, base_overrides, extra_dir, study_data

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
    search = load_search_file(
        file,
        base_overrides(args, data_dir, search=True)
        + [
            f"method={method}",
            *[f"{k}={v}" for k, v in shape.items()],
            f"tune.name={name}",
            f"mlflow.tracking_uri={args.mlflow}",
            "mlflow.experiment=experiment-injection-context-lr",
            *extra,
        ],
    )
    outcome = run_search(search, verbose=0)
    if outcome.interrupted or outcome.best is None:
        raise SystemExit(f"error: the learning-rate search {name} did not finish; see {outcome.experiment_dir}")
    return outcome


def searched_trials(outcome: SearchOutcome) -> list[dict]:
    import csv

    with open(outcome.experiment_dir / "summary.csv") as fh:
        return [
            {"lr": float(r["train.lr"]), "val_perplexity": float(r["best_val_perplexity"]), "steps": int(r["steps"])}
            for r in csv.DictReader(fh)
            if r["best_val_perplexity"]
        ]


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
        raise ConfigError(
            f"{group}: its arms' records trained at {len(rates)} learning rates ({', '.join(map(str, sorted(rates)))}, "
            f"e.g. {rates[max(rates)]}); delete the records of one rate to train the others as them"
        )
    return next(iter(rates), None)


def learning_rate(args, group: str, data_dir: Path, runs: Path, precision: str, arms: list[str] = ()) -> float:
    """The best learning rate of a small search over the validation split for a method or a design (recorded, so it
    runs once); for a group with no search but with recorded seeds, the rate they trained at."""
    record = runs / f"lr_search_{group}.json"
    if (
        not record.is_file() and args.lr_from
    ):  # another series' search, copied so this series' records say where it came from
        source = lr_source(args, runs, group)
        atomic_write_text(
            record, json.dumps({**json.loads(source.read_text()), "from": os.path.relpath(source, args.out)}, indent=1)
        )
    if record.is_file():
        return json.loads(record.read_text())["lr"]
    if (lr := recorded_rate(runs, group, arms)) is not None:
        print(
            f"[{runs.name}] {group}: no search of its own; its arms continue at the rate their recorded seeds trained "
            f"at, {lr:.3g}",
            flush=True,
        )
        return lr
    print(
        f"[{runs.name}] {group}: searching its learning rate through embinject.tune (the runs wait for it)", flush=True
    )
    outcome = lr_search(args, group, data_dir, runs, f"lr-{runs.name}-{group}")
    lr = float(outcome.best["train.lr"])
    trials = searched_trials(outcome)
    atomic_write_text(record, json.dumps({"method": group, "lr": lr, "trials": trials, "dtype": precision}, indent=1))
    print(
        f"[{runs.name}] {group}: lr {lr:.3g} ("
        + ", ".join(f"{t['lr']:.2g}: {t['val_perplexity']:.2f}" for t in trials)
        + " validation perplexity)",
        flush=True,
    )
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
    print(
        f"[{runs.name}] {group}: its rate is the {edge} tried; one more trial at {lr:.3g} checks beyond it", flush=True
    )
    outcome = lr_search(
        args,
        group,
        data_dir,
        runs,
        f"lr-{runs.name}-{group}-bracket",
        [
            "tune.num_samples=1",
            f"tune.points_to_evaluate=[{{train.lr: {lr!r}}}]",
            "tune.scheduler.type=none",
            f"tune.resources.cpus={max(1, min(os.cpu_count() or 1, args.workers * args.threads))}",
        ],
    )  # the one trial: every core
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
    raw["tune"] = {
        "num_samples": len(lrs),
        "max_concurrent_trials": args.workers,
        "search_alg": "random",
        "seed": 0,
        "points_to_evaluate": [{"train.lr": lr} for lr in lrs],
        "scheduler": {"type": "none"},
        "resources": {"cpus": args.threads, "gpus": 0},
        "storage_path": str(args.out / "tune"),
    }
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
        overrides = [
            o
            for o in base_overrides(args, data_dir, search=True)
            if not o.startswith("tune.") or o.startswith("tune.storage_path=")
        ]
        search = load_search_file(
            file,
            overrides
            + [
                f"tune.name=lr-at-budget-{runs.name}-{arm}-{len(record['trials'])}",
                f"mlflow.tracking_uri={args.mlflow}",
                "mlflow.experiment=experiment-injection-context-lr",
            ],
        )
        print(f"[{runs.name}] {arm}: its rate at its own budget, trying {', '.join(map(str, todo))}", flush=True)
        outcome = run_search(search, verbose=0)
        if outcome.interrupted or outcome.best is None:
            raise SystemExit(f"error: the learning-rate search for {arm} did not finish; see {outcome.experiment_dir}")
        cfg = arm_config(args, arm, data_dir, todo[0])
        record.update(
            budget=budget_of(cfg.to_dict(), extra_corpus(arm)),
            dtype=precision,
            grid=list(LR_RULE_GRID),
            trials=record["trials"] + searched_trials(outcome),
        )
        record["lr"] = min(record["trials"], key=lambda t: t["val_perplexity"])["lr"]
        atomic_write_text(path, json.dumps(record, indent=1))
    tried = ", ".join(
        f"{t['lr']:.3g}: {t['val_perplexity']:.2f}" for t in sorted(record["trials"], key=lambda t: t["lr"])
    )
    print(f"[{runs.name}] {arm}: lr {record['lr']:.3g} at its own budget ({tried})", flush=True)
    return record


# ---------------------------------------------------------------- driver


def seed_records(runs: Path, arm: str) -> list[tuple[Path, dict]]:
    """Every recorded seed of an arm, whichever seeds this call asks for: a new seed joins them."""
    return [(path, json.loads(path.read_text())) for path in sorted(runs.glob(f"{arm}__seed*.json"))]
