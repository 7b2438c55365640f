"""The search driver: `run_search(search)` checks every place it will write, warms the shared caches,
starts or joins Ray, runs the Tuner with the searcher, scheduler and MLflow callback, and finishes with
the summary and the champion. It is the one place a search starts; `--resume` continues the newest one."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shlex
import signal
import sys
import time
import warnings
from pathlib import Path

from ...errors import first_line, prog
from ...fsutil import atomic_write_text, check_writable, sweep_scratch
from ...models import cache_root
from ...space import SearchFile, apply_params
from ...tracking import (
    check_tracking_uri,
    dataset_record,
    default_tracking_uri,
    quiet_mlflow,
    runs_table_url,
    source_tags,
    tracker_for,
)
from .callback import mlflow_callback, short_key
from .folder import (
    check_same_pack,
    check_same_space,
    new_search_dir,
    newest_search_dir,
    record_pack,
    record_space,
    recorded_pack_size,
    removed_unless_started,
    restore_superseded_checkpoints,
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
from .searcher import make_scheduler, make_searcher
from ..worker import member
from ..worker.pack_host import packed_trainable
from ..worker.pack_names import PackPlan, lanes
from .pack_plan import auto_cap, lanes_used, needs_probe, packable_methods, plan_pack, prestart_hosts, stop_hosts
from ..worker.probe import largest_trial, probe_pack
from .progress import imports_line, stage_line, trial_table
from .signals import GracefulStop
from .study import close_study, journal_path, study_name
from ..worker.trainable import trainable
from .outcome import SearchOutcome
from .warm import WarmStart, read_warm_start


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


@dataclasses.dataclass(frozen=True)
class SearchRun:
    """One search call and its plans, each made once before any work: the search file, where and how it runs, how
    `tune.pack` resolves (`pack`: None where `auto` on GPUs measures the largest trial's memory first, once Ray is up),
    whether --resume hands Ray its saved state (`restoring`), and the earlier searches it starts from (`warm`)."""

    search: SearchFile
    address: str | None = None
    resume: bool = False
    verbose: int = 1
    promote: bool = (
        False  # the champion takes the registered model's alias `champion` whether or not it beats its holder
    )
    pack: PackPlan | None = None
    restoring: bool = False
    warm: WarmStart = dataclasses.field(default_factory=WarmStart)

    @property
    def storage(self) -> Path:
        return Path(self.search.tune.storage_path)

    @property
    def tracking_uri(self) -> str:
        return self.search.mlflow.tracking_uri or default_tracking_uri(self.storage)

    @property
    def artifact_root(self) -> Path:
        return self.storage / "mlartifacts"


def pack_plan_for(run: SearchRun, exp_dir: Path) -> PackPlan:
    """`tune.pack` for this search, its hosts named after `exp_dir`: the plan made before Ray started, or, for `auto`,
    one from the probe (a packed step's speed, and on GPUs the memory) in one process with one trial's resources,
    except where --resume restores trials Ray created in packs of the size the probe chose then."""
    import ray  # lazy, as in _search_in

    key = hashlib.sha256(str(exp_dir).encode()).hexdigest()[:10]
    if run.pack is not None:
        return dataclasses.replace(run.pack, key=key)
    search = run.search
    if run.restoring:
        size = recorded_pack_size(exp_dir)
        if size is not None:
            return PackPlan(
                size,
                f"tune.pack auto: {'every trial alone' if size == 1 else f'packs of {size}'}, as the "
                "probe found when the search started",
                key,
            )
    r = search.tune.resources
    device = "cuda" if r.gpus > 0 else "cpu"
    worst = {**largest_trial(search), "method": packable_methods(search)[0]}
    task = ray.remote(num_cpus=r.cpus, num_gpus=1 if r.gpus > 0 else 0, max_calls=1)(probe_pack)
    try:
        probe = ray.get(task.remote(dict(search.base), worst, device, auto_cap(search), max(1, int(r.cpus))))
    except Exception as exc:  # every trial then trains alone, and the search's "packing:" line says why
        return PackPlan(1, f"tune.pack auto: the probe failed ({first_line(exc)}); every trial trains alone", key)
    if device == "cpu":  # a pack computes on one trial's CPUs; unpacked, as many trials as the CPUs hold run at once
        cpus = ray.cluster_resources().get("CPU", 1)
        probe["at_once"] = min(search.tune.max_concurrent_trials, lanes(cpus, r.cpus))
        probe["packs"] = lanes_used(search, probe["k"], cpus)
    return plan_pack(search, probe, key)


def trial_function(search: SearchFile, plan: PackPlan):
    """What Ray runs for each trial, with the resources it asks for: packed or alone, as `plan` says (a packed search
    on CPUs starts its hosts now, see `prestart_hosts`)."""
    from ray import tune  # lazy, as in _search_in

    r = search.tune.resources
    base = dict(search.base)
    if r.gpus == 0:
        base = apply_params(base, {"train.device": "cpu"})  # never touch a GPU Ray did not assign
    if plan.size > 1 or search.tune.pack == "auto":  # what the probe found, also where trials then train alone
        print(f"packing: {plan.why}", flush=True)
    if plan.size <= 1:
        return tune.with_resources(tune.with_parameters(trainable, base=base), {"cpu": r.cpus, "gpu": r.gpus})
    plan = prestart_hosts(plan, search, base)
    # where the driver started the hosts and every trial packs, a trial's process only relays (and imports no torch)
    every = set(packable_methods(search)) == search.choices("method", {search.config.method})
    fn = member.packed_trainable if plan.starter and every else packed_trainable
    return tune.with_resources(tune.with_parameters(fn, base=base, plan=plan), plan.resources(r.cpus, r.gpus))


def restores_ray_state(exp_dir: Path) -> bool:
    """Whether --resume hands Ray a saved state (its trials keep their trainable), or Ray saved none and starts anew."""
    from ray import tune  # lazy, as in _search_in

    return tune.Tuner.can_restore(str(exp_dir))


def _quiet_libraries() -> None:
    """Ray, Optuna and MLflow as a search wants them: the classic live trial table, no experimental warnings, no
    progress bars, and a tracking server that goes away failing fast (the journal keeps the records)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic live trial table, with our columns
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault(
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"
    )  # saving the champion model: no progress bars
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
        run = dataclasses.replace(
            run, warm=read_warm_start(search)
        )  # before any work: a missing folder is answered at once
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
    """--resume of a finished search: its kept MLflow records sent, then `AlreadyFinished` saying what is still wrong."""
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
    """The search in `exp_dir` (--resume, its lock held), or in a folder claimed once the caches are warm and Ray runs."""
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
        sweep_scratch()  # what this host's trials left when Ray stopped them (a cluster's other nodes: their next trial)


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


def _run_config(run: SearchRun, exp_dir: Path):
    """Where Ray keeps the search, its MLflow callback, checkpoints and failures, and the live trial table."""
    from ray import tune  # lazy, as in _search_in

    search = run.search
    # Ray's best-trial line looks every column up in the trial's config, so conditional
    # parameters (absent from some trials) stay out of the live table; MLflow has them all.
    unconditional = [p.key for p in search.params if p.kind != "fixed" and not p.when]
    # Values longer than a column are cut by Ray with a memory address appended (unstable names), so
    # columns are as wide as the longest searched value (hub ids included), within reason.
    longest = max(
        [len(str(v)) for p in search.params if p.key in unconditional and p.kind == "choice" for v in p.args] + [20]
    )
    reporter = trial_table(
        {k: short_key(k) for k in unconditional},
        {"step": "step", "val_perplexity": "val_ppl", "best_val_perplexity": "best_ppl", "tokens_per_second": "tok/s"},
        min(longest, 60),
        exp_dir,
    )
    return tune.RunConfig(
        name=exp_dir.name,
        storage_path=str(exp_dir.parent),
        verbose=run.verbose,
        callbacks=[
            mlflow_callback(
                run.tracking_uri,
                search.mlflow.experiment,
                exp_dir,
                run.artifact_root,
                [p.key for p in search.params if p.kind != "fixed"],
            )
        ],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=search.tune.max_failures),
        progress_reporter=reporter,
    )


def _tuner(run: SearchRun, exp_dir: Path, fn):
    """Ray's Tuner: restored from its saved state on --resume, or a new one with the searcher and the scheduler."""
    from ray import tune  # lazy, as in _search_in

    search = run.search
    if run.restoring:
        if search.tune.warm_start:
            print(
                "warm start: kept from the search's start (Optuna's study goes on in its journal, optuna.journal)",
                flush=True,
            )
        for line in restore_superseded_checkpoints(exp_dir):
            print(line, flush=True)
        return tune.Tuner.restore(str(exp_dir), trainable=fn, resume_unfinished=True, resume_errored=True)
    if run.resume:  # stopped before Ray saved any state: the earlier searches, read again, are said again
        for line in run.warm.lines():
            print(line, flush=True)
    t = search.tune
    return tune.Tuner(
        fn,
        run_config=_run_config(run, exp_dir),
        tune_config=tune.TuneConfig(
            metric=t.metric,
            mode=t.mode,
            search_alg=make_searcher(search, exp_dir, run.warm),
            scheduler=make_scheduler(search),
            num_samples=t.num_samples,
            time_budget_s=t.time_budget_s,
            reuse_actors=t.reuse_actors,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
    )


def _run_tuner(exp_dir: Path, run: SearchRun, warm_seconds: float, t0: float) -> SearchOutcome:
    search = run.search
    plan = pack_plan_for(run, exp_dir)
    if not run.restoring:
        record_pack(exp_dir, search, plan.size)
    elif run.pack is None:  # measured only now: checked only now
        check_same_pack(exp_dir, search, plan.size)
    tracker = _start_tracker(run, exp_dir)
    tuner = _tuner(run, exp_dir, trial_function(search, plan))
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
