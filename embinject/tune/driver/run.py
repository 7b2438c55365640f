"""The search driver: `run_search(search)` checks every place it will write, warms the shared caches,
starts or joins Ray, runs the Tuner with the searcher, scheduler and MLflow callback, and finishes with
the summary and the champion. It is the one place a search starts; `--resume` continues the newest one."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import sys
import time
import warnings
from pathlib import Path

from ...errors import prog
from ...fsutil import atomic_write_text, check_writable, sweep_scratch
from ...models import cache_root
from ...space import SearchFile
from ...tracking import (
    check_tracking_uri,
    dataset_record,
    quiet_mlflow,
    runs_table_url,
    source_tags,
    tracker_for,
)
from .folder import (
    check_same_pack,
    check_same_space,
    new_search_dir,
    newest_search_dir,
    record_pack,
    record_space,
    removed_unless_started,
    search_lock,
)
from .cluster import (
    check_cluster_resources,
    check_local_resources,
    connect,
    forget_ray_session,
    record_ray_session,
    stop_ray_leftovers,
    warm_caches,
)
from .results import finish_search, summarize, trial_ids
from .pack_plan import needs_probe, plan_pack, stop_hosts
from .progress import imports_line, stage_line
from .signals import GracefulStop
from .study import close_study, journal_path, study_name
from .outcome import SearchOutcome
from .search_run import SearchRun
from .tuner import make_tuner, pack_plan_for, restores_ray_state, trial_function
from .warm import read_warm_start


class AlreadyFinished(Exception):
    """--resume of a search that has finished: nothing to do. `problem`: what is still wrong with it (records MLflow
    has not received, a registration MLflow refused), for the command's one error line and exit 1."""

    def __init__(self, message: str, problem: str | None = None):
        super().__init__(message)
        self.problem = problem


def check_places(search: SearchFile, tracking_uri: str) -> None:
    """Every place the search will write, before any work."""
    if "://" not in search.tune.storage_path:
        check_writable(Path(search.tune.storage_path), "tune.storage_path")
    check_writable(cache_root(), "EMBINJECT_CACHE")
    check_tracking_uri(tracking_uri)


@dataclasses.dataclass(frozen=True)
class BudgetEnd:
    """`tune.time_budget_s` ended the search: the budget, the trials planned, started, and cut mid-training."""

    seconds: float
    planned: int
    started: int
    cut: int

    def line(self, any_finished: bool) -> str:
        budget = f"tune.time_budget_s ({self.seconds:g} s) ran out"
        if any_finished:
            return f"{budget}: {self.started} of {self.planned} trials started, {self.cut} of them cut mid-training"
        # not a failure of any trial: the budget was too short for one to finish, so the fix is the budget
        ran = (
            f"before any trial started ({self.planned} planned)"
            if not self.started
            else f"before any trial finished: {self.started} of {self.planned} trials started, {self.cut} of them cut "
            "mid-training"
        )
        return (
            f"{budget} {ran}; no result, nothing registered: raise tune.time_budget_s (or remove it), or lower "
            "train.max_steps, so that a trial can finish within it"
        )


def ended_by_the_search(
    tracker, search: SearchFile, known: set[str], seconds: float
) -> tuple[frozenset, BudgetEnd | None]:
    """Trials that Ray stopped mid-training because the search itself ended (`tune.time_budget_s`): they end KILLED
    in MLflow, `cut` in summary.csv, and one line says so, rather than staying RUNNING or passing as stopped by ASHA.
    `known`: the trials in Ray's results. A trial that started just before a kill, before Ray's saved state named it,
    is not among them after --resume (Optuna proposed another in its place): it ends KILLED as `lost_at_kill`."""
    started = tracker.started_trials()
    unended = [t for t in started if t not in tracker.state["ended"]]
    lost = [t for t in unended if t not in known]
    for trial_id in lost:
        tracker.trial_finished(trial_id, "KILLED", {"stopped_by": "lost_at_kill"})
    if lost:
        named, runs, place = (
            ("them", "their MLflow runs end", "other trials in their place")
            if len(lost) > 1
            else ("it", "its MLflow run ends", "another trial in its place")
        )
        print(
            f"trial{'s' * (len(lost) > 1)} {', '.join(lost)} started just before the search was killed and Ray's saved "
            f"state did not name {named}: {runs} KILLED (stopped_by lost_at_kill); the search ran {place}",
            flush=True,
        )
    cut = frozenset(t for t in unended if t in known)
    budget = search.tune.time_budget_s
    reason = "time_budget" if budget and seconds >= budget else "search_end"
    for trial_id in sorted(cut):
        tracker.trial_finished(trial_id, "KILLED", {"stopped_by": reason})
    if reason != "time_budget":
        return cut, None
    # started: what the trials' own start said (Ray's results also hold trials it created but never started)
    return cut, BudgetEnd(budget, search.tune.num_samples, len(set(started) & known), len(cut))


def registration_problem(refused: str, exp_dir: Path) -> str:
    """The line for a champion MLflow would not register: what it said, and where the adapter is all the same."""
    return (
        f"{refused}; nothing was registered. The champion is {exp_dir / 'champion'} (as an MLflow model: "
        f"{exp_dir / 'champion_model'}); register it by hand with mlflow.register_model"
    )


def _quiet_libraries() -> None:
    """Ray, Optuna and MLflow as a search wants them: the classic live trial table, no experimental warnings, no
    progress bars, and a tracking server that goes away failing fast (the journal keeps the records)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic live trial table, with our columns
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # saving the champion model: no progress bars
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import optuna  # lazy, as Ray below

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet_mlflow("ERROR")  # a search reports tracking problems itself
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_search(
    search: SearchFile, address: str | None = None, resume: bool = False, verbose: int = 1, promote: bool = False
) -> SearchOutcome:
    """The search (`resume`: the newest one of its name, continued), from its checks to its champion. Bad input, a
    finished search to resume (`AlreadyFinished`) and a place it cannot write are answered before Ray starts."""
    _quiet_libraries()
    check_local_resources(search, address)
    run = SearchRun(search, address, resume, verbose, promote, pack=None if needs_probe(search) else plan_pack(search))
    check_places(search, run.tracking_uri)
    if not resume:
        # before any work: a missing folder is answered at once
        run = dataclasses.replace(run, warm=read_warm_start(search))
        for line in run.warm.lines():
            print(line, flush=True)
        return _search_in(None, run)
    exp_dir = newest_search_dir(run.storage.expanduser().resolve(), search.tune.name)
    with search_lock(exp_dir):
        check_same_space(exp_dir, search)
        run = dataclasses.replace(run, restoring=restores_ray_state(exp_dir))
        if run.pack is not None and run.restoring:  # else once the probe measured it, with Ray up
            check_same_pack(exp_dir, search, run.pack.size)
        refuse_finished(run, exp_dir)
        if not run.restoring and search.tune.warm_start:  # stopped before Ray saved any state: start from them again
            run = dataclasses.replace(run, warm=read_warm_start(search))
        return _search_in(exp_dir, run)


def refuse_finished(run: SearchRun, exp_dir: Path) -> None:
    """--resume of a finished search: its kept MLflow records sent, then `AlreadyFinished` saying what is still
    wrong."""
    tracker = tracker_for(run.tracking_uri, run.search.mlflow.experiment, exp_dir, run.artifact_root)
    if not tracker.state.get("finished"):
        return
    kept = tracker.pending
    if kept:
        tracker.sync(force=True)
    sent, left = kept - tracker.pending, tracker.pending
    problems = (
        [
            f"{left} MLflow records are still kept in {tracker.journal}: MLflow at {run.tracking_uri} did not take "
            "them (see above); --resume sends them once it does"
        ]
        if left
        else []
    )
    if tracker.state.get("registration_refused"):
        problems.append(registration_problem(tracker.state["registration_refused"], exp_dir))
    said = tracker.state.get("champion_line") if sent else None  # the end, registration included, was kept
    raise AlreadyFinished(
        f"search {exp_dir.name} has already finished; nothing to resume"
        + (f" ({sent} kept MLflow records sent)" if sent else "")
        + (f"\n{said}" if said else ""),
        "; ".join(problems) or None,
    )


def _search_in(exp_dir: Path | None, run: SearchRun) -> SearchOutcome:
    """The search in `exp_dir` (--resume, its lock held), or in a folder claimed once the caches are warm and Ray
    runs."""
    import ray  # lazy: Ray Tune takes seconds to import, and bad input or --dry-run is answered before it

    imports_line()
    search, address = run.search, run.address
    env = {
        k: os.environ[k]
        for k in (
            "EMBINJECT_CACHE",
            "HF_HOME",
            "HF_HUB_OFFLINE",
            "HF_DATASETS_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "TOKENIZERS_PARALLELISM",
        )
        if k in os.environ
    }
    if "://" not in search.tune.storage_path:
        for line in stop_ray_leftovers(run.storage.expanduser().resolve()):
            print(line, flush=True)
    t0 = time.time()
    session = None
    if address:
        connect(address, env, run.verbose)  # before the warm-up: an unreachable cluster is found at once
    else:
        warm_caches(search)  # before starting a local Ray: bad data is found without starting anything
    try:
        if address:
            check_cluster_resources(search)
            warm_caches(search)
        else:
            session = connect(None, env, run.verbose)
        warm_seconds = time.time() - t0
        with contextlib.ExitStack() as claimed:
            if exp_dir is None:
                exp_dir = new_search_dir(run.storage.expanduser().resolve(), search.tune.name)
                claimed.enter_context(removed_unless_started(exp_dir))
                claimed.enter_context(search_lock(exp_dir))
                atomic_write_text(exp_dir / "search.yaml", search.text)
                record_space(exp_dir, search)
            if session is not None:
                record_ray_session(exp_dir, session)
            return _run_tuner(exp_dir, run, warm_seconds, t0)
    finally:
        ray.shutdown()
        forget_ray_session(exp_dir)
        # what this host's trials left when Ray stopped them (a cluster's other nodes: their next trial)
        sweep_scratch()


def _start_tracker(run: SearchRun, exp_dir: Path):
    """The search's MLflow tracker, its parent run started (or found again on --resume)."""
    search = run.search
    tracker = tracker_for(run.tracking_uri, search.mlflow.experiment, exp_dir, run.artifact_root)
    tracker.start(
        exp_dir.name,
        {
            "search": {p.key: p.describe() for p in search.params},
            "tune": dataclasses.asdict(search.tune),
            "base": search.base,
        },
        exp_dir / "search.yaml",
        {
            "search_file": search.source,
            "experiment_dir": str(exp_dir),
            **run.warm.tags(search.tune.warm_start),
            **source_tags(f"{prog('tune')} {shlex.join(sys.argv[1:])}"),
        },
        dataset_record(search.config),
    )
    return tracker


def _run_tuner(exp_dir: Path, run: SearchRun, warm_seconds: float, t0: float) -> SearchOutcome:
    search = run.search
    plan = pack_plan_for(run, exp_dir)
    if not run.restoring:
        record_pack(exp_dir, search, plan.size)
    elif run.pack is None:  # measured only now: checked only now
        check_same_pack(exp_dir, search, plan.size)
    tracker = _start_tracker(run, exp_dir)
    tuner = make_tuner(run, exp_dir, trial_function(search, plan))
    stage_line("Ray Tune and MLflow set up", time.time() - t0 - warm_seconds)
    stop = GracefulStop()
    try:
        with stop:
            grid = tuner.fit()
    except KeyboardInterrupt:
        stop.signum = stop.signum or signal.SIGINT
    finally:
        stop_hosts(plan)
    if stop.signum is not None:
        signum = signal.Signals(stop.signum)
        tracker.interrupted(signum.name)
        return SearchOutcome(
            exp_dir, tracker.tracking_uri, tracker.experiment, tracker.parent_id, tracker.pending, interrupted=signum
        )
    tracker.proceeding()  # where Ray's saved callback predates `setup` calling it (searches started before it did)
    cut, budget_end = ended_by_the_search(tracker, search, trial_ids(grid), time.time() - t0)
    rows, ranked = summarize(grid, search, exp_dir, cut)
    has_study = close_study(
        exp_dir,
        rows,
        [o["metric"] for o in search.tune.objectives] or [search.tune.metric],
        "time_budget" if budget_end else "search_end",
    )
    outcome = finish_search(
        search,
        tracker,
        rows,
        ranked,
        exp_dir,
        warm_seconds,
        time.time() - t0,
        budget_end.line(any_finished=bool(ranked)) if budget_end else None,
        run.promote,
    )
    return outcome.with_(
        parent_run_id=tracker.parent_id,
        warm_note=run.warm.better_earlier(outcome.best and outcome.best["best_val_perplexity"], search.tune.mode),
        runs_url=runs_table_url(run.tracking_uri, tracker.experiment_id),
        optuna_study=study_name(exp_dir) if has_study else None,
        optuna_journal=journal_path(exp_dir) if has_study else None,
    )
