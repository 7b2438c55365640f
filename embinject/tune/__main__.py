"""Search adapters with Ray Tune:
`python -m embinject.tune SEARCH.yaml [--set k=v] [--address A] [--resume] [--dry-run]`.

The command only: arguments, the dry run, and the lines a search ends with. The search is the Python API's
(`embinject.api.run`, as `embinject.search` runs it), which returns the driver's typed `SearchOutcome`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..arguments import before_imports, tune_parser

if __name__ == "__main__":  # `--help`, a mistyped option and the first line, before the imports below (seconds)
    before_imports("tune")

from .. import api
from ..errors import ConfigError, disk_full, handle_sigterm, interrupt_exit_code, warn
from ..space import SearchFile, load_search_spec
from ..tracking import tracking_uri_default
from .driver.budget import budget_warnings, objectives_line
from .driver.cluster import cluster_needs, local_shortfalls
from .driver.run import AlreadyFinished, registration_problem
from .driver.outcome import SearchOutcome
from .driver.pack_plan import plan_pack
from .driver.warm import read_warm_start

# The search ran as asked, but its time budget ended it before any trial finished: no failure and no bad input (1 and
# 2), and no result either (not 0), so that a script can tell "raise the budget" from a search that failed.
BUDGET_RAN_OUT = 3


def _print_dry_run(search: SearchFile, address: str | None, promote: bool = False) -> None:
    t = search.tune
    print(f"search file: {search.path}")
    print(
        f"base: model={search.config.model} method={search.config.method} data={search.config.data.path} "
        f"seq_len={search.config.data.seq_len} max_steps={search.config.train.max_steps}"
    )
    print("space:")
    print("\n".join(search.describe()) or "  (no searched parameters)")
    sched = (
        "none"
        if t.scheduler.type == "none"
        else (
            f"ASHA on optimizer steps (max_t={t.scheduler.max_t}, grace_period={t.scheduler.grace_period}, "
            f"reduction_factor={t.scheduler.reduction_factor:g})"
        )
    )
    guided = f", TPE-guided after {t.random_trials_first} random trials" if t.search_alg == "optuna" else ""
    print(
        f"search: {t.search_alg} (seed {t.seed}{guided}), {len(t.points_to_evaluate)} starting points; "
        f"scheduler: {sched}"
    )
    print(objectives_line(search))
    budget = t.num_samples * (search.config.train.max_steps or t.scheduler.max_t or 0)  # a trial ends at max_steps
    print(
        f"budget: {t.num_samples} trials, at most {budget} optimizer steps in all, "
        f"{t.max_concurrent_trials} at a time" + (f", {t.time_budget_s:g} s time budget" if t.time_budget_s else "")
    )
    plan = plan_pack(search)
    whole = " and a whole GPU" if t.resources.gpus else ""
    share = (
        ""
        if plan.size == 1
        else f" (a pack of {plan.size} shares one trial's CPUs{whole}: "
        f"{plan.cpus_each(t.resources.cpus):g} CPU, {plan.gpus_each(t.resources.gpus):g} GPU each)"
    )
    print(
        f"resources per trial: {t.resources.cpus:g} CPU, {t.resources.gpus:g} GPU{share}; cluster: {address or 'local'}"
    )
    print(f"packing: {plan.why}")
    for line in read_warm_start(search).lines():
        print(line)
    alias = "by --promote" if promote else "if it beats the version holding it"
    registers = (
        f"registers '{search.mlflow.register_as}' (alias champion {alias})"
        if search.mlflow.register_as
        else "registers nothing"
    )
    print(
        f"storage: {Path(t.storage_path).resolve()}; "
        f"mlflow: {search.mlflow.tracking_uri or 'sqlite beside the results'} "
        f"experiment '{search.mlflow.experiment}', {registers}"
    )
    lacking = local_shortfalls(search, address)
    for line in budget_warnings(search) + ([cluster_needs(search)] if lacking else []):
        warn(line)


def _print_kept(outcome: SearchOutcome) -> None:
    if outcome.kept_records:
        print(
            f"MLflow at {outcome.tracking_uri} could not be reached: {outcome.kept_records} records are kept in "
            f"{outcome.experiment_dir}/mlflow_journal.jsonl and are logged by --resume once it is back",
            file=sys.stderr,
        )


def _resume_command(args) -> list[str]:
    again = ["python", "-m", "embinject.tune", args.search_file, "--resume"]
    flags = ["--no-register"] * args.no_register + ["--promote"] * args.promote
    return again + [f"--set={o}" for o in args.overrides] + flags + (["--address", args.address] * bool(args.address))


def main(argv: list[str] | None = None) -> int:
    args = tune_parser().parse_args(argv)
    handle_sigterm()  # before the search starts, SIGTERM is handled like Ctrl-C
    try:
        search = load_search_spec(args.search_file, args.overrides + ["mlflow.register_as=null"] * args.no_register)
        if args.dry_run:  # a preview also of a search this machine cannot run: what it lacks is a warning there
            _print_dry_run(search, args.address, args.promote)
            return 0
        outcome = api.run(search, args.resume, address=args.address, promote=args.promote, verbose=args.verbose).outcome
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except AlreadyFinished as exc:
        print(exc)
        if exc.problem:
            print(f"error: {exc.problem}", file=sys.stderr)
            return 1
        return 0
    except KeyboardInterrupt as exc:
        print("interrupted before the search started; nothing written", file=sys.stderr)
        return interrupt_exit_code(exc)
    except Exception as exc:
        full = disk_full(exc)
        if full is None:
            raise
        print(
            f"error: no space left on the device holding {full.filename or 'tune.storage_path'}; the search "
            "stopped with its finished trials and checkpoints kept. Free some space, then resume with: "
            f"{shlex.join(_resume_command(args))}",
            file=sys.stderr,
        )
        return 1
    return _print_outcome(outcome, search, args)


def _print_outcome(outcome: dict, search: SearchFile, args: argparse.Namespace) -> int:
    """The search's closing lines (its best trial, where its records and models are); the command's exit status."""
    print()
    if outcome.interrupted:
        print(
            f"search interrupted ({outcome.interrupted.name}): nothing registered; finished trials and the running "
            f"trials' last checkpoints are kept in {outcome.experiment_dir}",
            file=sys.stderr,
        )
        print(f"resume with: {shlex.join(_resume_command(args))}", file=sys.stderr)
        return 128 + outcome.interrupted
    _print_kept(outcome)
    if outcome.best is None:
        return _print_no_result(outcome)
    _print_best(search, outcome)
    _print_where(outcome)
    if outcome.registration.refused:
        print(f"error: {registration_problem(outcome.registration.refused, outcome.experiment_dir)}", file=sys.stderr)
        return 1
    return 0


def _print_no_result(outcome: SearchOutcome) -> int:
    if outcome.budget_note:
        print(f"{outcome.budget_note}; see {outcome.experiment_dir}/summary.csv")
        return BUDGET_RAN_OUT
    print(
        f"no trial finished without failing ({outcome.counts.failed} failed, {outcome.counts.diverged} diverged); "
        f"see {outcome.experiment_dir}/summary.csv"
    )
    return 1


def _print_best(search: SearchFile, outcome: SearchOutcome) -> None:
    """The best trial, the champion adapter and its registration, the Pareto front, and the notes on the search."""
    best, registered = outcome.best, outcome.registration
    params = {k: v for k, v in best.items() if k in {p.key for p in search.params} and v is not None}
    print(
        f"best trial {best['trial_id']}: val_perplexity {best['best_val_perplexity']:.3f} "
        f"(frozen baseline {best['baseline_perplexity']:.3f}) after {best['steps']} steps"
    )
    print(f"  params: {json.dumps(params)}")
    alias = ", alias champion" if registered.champion_moved else ""  # the line below says why not
    print(
        f"best adapter: {outcome.champion}"
        + (f" (registered as {registered.name} version {registered.version}{alias})" if registered.version else "")
    )
    if registered.line:
        print(registered.line)
    if outcome.pareto_front:
        names = [o["metric"] for o in search.tune.objectives]
        goals = ", ".join(f"{o['metric']} {o['mode']}" for o in search.tune.objectives)
        print(f"Pareto front ({len(outcome.pareto_front)} trials; {goals}):")
        for r in sorted(outcome.pareto_front, key=lambda r: r[names[0]]):
            print("  " + r["trial_id"] + ": " + ", ".join(f"{n} {r[n]:.6g}" for n in names))
    for note in (outcome.warm_note, outcome.budget_note):
        if note:
            print(note)
    c = outcome.counts
    print(
        f"trials: {c.trials} ({c.stopped_early} stopped early, {c.failed} failed, {c.diverged} diverged"
        + (f", {c.cut} cut by the time budget" if c.cut else "")
        + (f", {c.lost} lost when the search was killed" if c.lost else "")
        + f"); summary: {outcome.experiment_dir}/summary.csv"
    )
    print(f"  where its time went: embinject report {shlex.quote(str(outcome.experiment_dir))}")


def _print_where(outcome: SearchOutcome) -> None:
    """Where to look next: the Optuna study, the MLflow runs, and how to use the registered champion."""
    if outcome.optuna_study:
        journal, name = shlex.quote(str(outcome.optuna_journal)), shlex.quote(outcome.optuna_study)
        print(
            f"optuna: study {outcome.optuna_study}; open with: optuna-dashboard {journal} "
            "(pip install optuna-dashboard)"
        )
        print(f"  or: optuna trials --storage {journal} --study-name {name}")
    uri = outcome.tracking_uri
    if outcome.parent_run_id is None or outcome.kept_records:
        print(
            f"mlflow: experiment '{outcome.experiment}' at {uri} has not received this search's records yet (see "
            "above); --resume logs them"
        )
    else:
        served = uri.startswith(("http://", "https://"))
        print(
            f"mlflow: experiment '{outcome.experiment}', run {outcome.parent_run_id}"
            + ("" if served else f"; open with: mlflow ui --backend-store-uri {shlex.quote(uri)}")
        )
        print(f"  runs table: {outcome.runs_url}")
    registered = outcome.registration
    if registered.version:
        # as printed, from this directory: the store is named unless it is the one the commands default to
        store = "" if uri == tracking_uri_default() else f" --tracking-uri {shlex.quote(uri)}"
        model_uri = f"models:/{registered.name}" + (
            "@champion" if registered.champion_moved else f"/{registered.version}"
        )
        print(
            f"  use it: embinject generate --adapter {shlex.quote(model_uri)}{store} --prompt TEXT, "
            f"or mlflow.pyfunc.load_model({model_uri!r}) with that tracking and registry URI"
        )


if __name__ == "__main__":
    sys.exit(main())
