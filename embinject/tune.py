"""Search adapters with Ray Tune: `python -m embinject.tune SEARCH.yaml [--set k=v] [--address A] [--resume] [--dry-run]`.

The trainable is `embinject.train.train` unchanged; Optuna (TPE or random, define-by-run for
conditional parameters) proposes configs, ASHA stops weak trials on optimizer steps (a counter the
trainable reports itself, so it stays monotonic across a resume), and the driver alone logs to MLflow.
This is the only module that imports Ray.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from .config import ConfigError
from .fsutil import atomic_write_text, check_writable, first_line
from .models import cache_root
from .cli import handle_sigterm, interrupt_exit_code, prog
from .space import DefineByRun, SearchFile, apply_params, optuna_value, load_search_file, trial_config
from .tracking import (STATE_FILE, SearchTracker, check_tracking_uri, dataset_record, default_tracking_uri, quiet_mlflow,
                       runs_table_url, source_tags, tracker_for)

CONNECT_TIMEOUT_S = 10.0  # --address: how long to wait for a cluster before saying it cannot be reached


# ---------------------------------------------------------------- the trainable (runs in trial processes)

def trainable(config: dict, base: dict | None = None) -> None:
    import ray
    from ray import tune

    from .train import Diverged, train

    started_at = time.time()  # wall clock, comparable with the driver's record of the trial's start
    cfg = trial_config(base, config)
    cfg.train.progress = False
    if cfg.train.threads is None:  # match torch's threads to the CPUs Ray gave this trial
        cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
        cfg.train.threads = max(1, int(cpus))
    node_id = ray.get_runtime_context().get_node_id()
    work = Path(tempfile.mkdtemp(prefix="embinject-trial-"))
    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume_from = Path(checkpoint.to_directory(str(work / "resume")))

    extra = {"node_id": node_id, "trainable_started_at": started_at, "pid": os.getpid()}

    def report(metrics: dict, write_checkpoint) -> None:
        out = Path(tempfile.mkdtemp(dir=work))
        write_checkpoint(out)
        tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(str(out)))
        shutil.rmtree(out, ignore_errors=True)

    method = None
    try:
        _, method = train(cfg, report=report, resume_from=resume_from)
    except Diverged as exc:
        # A final result without a checkpoint: the last checkpoint keeps the finite best adapter, the
        # scheduler and searcher see a very bad value, and the driver marks the trial failed ("diverged").
        value = exc.value if math.isfinite(exc.value) else float("inf")
        tune.report({"step": exc.step, "val_perplexity": value, "final": True, "diverged": str(exc), **extra})
    finally:
        if method is not None:
            method.release()
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- driver side

def _short(key: str) -> str:
    return key.split(".")[-1]


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, str):
        return value.rsplit("/", 1)[-1].split(":", 1)[-1]  # hub ids and bundled: names by their last part
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def trial_run_name(config: dict, searched: list[str], trial_id: str) -> str:
    """A child run's name, readable at a glance: the method, then each searched value, then the trial id."""
    parts = [_format_value(config["method"])] if "method" in config else []
    parts += [f"{_short(k)}={_format_value(config[k])}" for k in searched if k != "method" and k in config]
    return " ".join(parts + [f"[{trial_id}]"])


def _mlflow_callback(tracking_uri: str, experiment: str, exp_dir: Path, artifact_root: Path, searched: list[str]):
    """A Ray Tune callback (driver side) forwarding trial events to the search's `SearchTracker`. It
    holds only plain settings, so Ray can pickle it with the experiment state and rebuild it on --resume."""
    from ray.tune import Callback

    class MlflowCallback(Callback):
        def __init__(self):
            self.settings = (tracking_uri, experiment, str(exp_dir), str(artifact_root))
            self.searched = list(searched)

        @property
        def tracker(self) -> SearchTracker:
            uri, name, directory, root = self.settings
            return tracker_for(uri, name, Path(directory), Path(root))

        def on_trial_start(self, iteration, trials, trial, **info):
            config = dict(trial.config)
            self.tracker.trial_started(trial.trial_id, trial_run_name(config, self.searched, trial.trial_id), config)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.tracker.trial_result(trial.trial_id, result)

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.tracker.trial_restarted(trial.trial_id)  # its worker died; Ray restarts it from its last checkpoint

        def on_trial_complete(self, iteration, trials, trial, **info):
            last = trial.last_result or {}
            if last.get("diverged"):
                self.tracker.trial_finished(trial.trial_id, "FAILED", {
                    "failure_reason": "diverged", "error": last["diverged"], "steps": last.get("step", 0)})
                return
            finished = bool(last.get("final"))
            self.tracker.trial_finished(trial.trial_id, "FINISHED", {
                "stopped_early": not finished, "stopped_by": "" if finished else "scheduler", "steps": last.get("step", 0)})

        def on_trial_error(self, iteration, trials, trial, **info):
            self.tracker.trial_finished(trial.trial_id, "FAILED", {
                "failure_reason": "error", "error_file": str(trial.error_file or "")})

    return MlflowCallback()


def _check_local_resources(search: SearchFile, address: str | None) -> None:
    r = search.tune.resources
    if address:
        return  # checked against the cluster after connecting
    cpus = os.cpu_count() or 1
    if r.cpus > cpus:
        raise ConfigError(f"tune.resources.cpus: a trial asks for {r.cpus:g} CPUs but this machine has {cpus}")
    if r.gpus > 0:
        import torch

        if torch.cuda.device_count() == 0:
            raise ConfigError(f"tune.resources.gpus: a trial asks for {r.gpus:g} GPU but no GPU is visible here "
                              "(set tune.resources.gpus: 0, or pass --address of a cluster with GPUs)")
        if r.gpus > torch.cuda.device_count():
            raise ConfigError(f"tune.resources.gpus: a trial asks for {r.gpus:g} GPUs but this machine has {torch.cuda.device_count()}")


def _check_cluster_resources(search: SearchFile) -> None:
    import ray

    total = ray.cluster_resources()
    r = search.tune.resources
    if r.cpus > total.get("CPU", 0):
        raise ConfigError(f"tune.resources.cpus: a trial asks for {r.cpus:g} CPUs but the cluster has {total.get('CPU', 0):g}")
    if r.gpus > total.get("GPU", 0):
        raise ConfigError(f"tune.resources.gpus: a trial asks for {r.gpus:g} GPUs but the cluster has {total.get('GPU', 0):g}")


def warm_caches(search: SearchFile) -> None:
    """Shared work once, in the driver: model conversion, tokenised windows, the baseline
    perplexity and each encoder's sentence embeddings land in the disk cache trials read."""
    from . import train as train_mod

    encoders = search.choices("adapter.embedding_model", {None})
    methods = search.choices("method", {search.config.method})
    overrides: list[dict] = [{"method": "baseline"}]
    if "injection" in methods:
        overrides += [{"method": "injection", **({"adapter.embedding_model": e} if e else {})} for e in encoders]
    for extra in overrides:
        cfg = trial_config(search.base, {**extra, "train.device": "cpu"})
        prep = train_mod.prepare(cfg)
        train_mod.baseline_perplexity(prep, cfg)
    train_mod._LM_CACHE.clear()


def optuna_sampler(t):
    """The Optuna sampler `tune.search_alg` (and `tune.multivariate`, `tune.startup_trials`) asks for."""
    import optuna

    if t.search_alg == "random":
        return optuna.samplers.RandomSampler(seed=t.seed)
    with warnings.catch_warnings():  # multivariate and group are marked experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=t.seed, n_startup_trials=t.random_trials_first,
                                          multivariate=t.multivariate, group=t.multivariate)


def _searcher(search: SearchFile):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    t = search.tune
    sampler = optuna_sampler(t)
    metric, mode = t.metric, t.mode
    if t.objectives:  # Optuna's multi-objective sampling: TPE (or random) over all objectives at once
        metric, mode = [o["metric"] for o in t.objectives], [o["mode"] for o in t.objectives]
    alg = OptunaSearch(DefineByRun(search.params, search.base), metric=metric, mode=mode,
                       points_to_evaluate=[{k: optuna_value(v) for k, v in p.items()}
                                           for p in t.points_to_evaluate] or None, sampler=sampler)
    return ConcurrencyLimiter(alg, max_concurrent=t.max_concurrent_trials)


def _scheduler(search: SearchFile):
    from ray.tune.schedulers import ASHAScheduler

    class ASHA(ASHAScheduler):
        """ASHA whose status line shows each rung's cut-off in the metric's own units (Ray's shows the
        negated value when minimising, i.e. negative perplexities)."""

        def debug_string(self) -> str:
            rungs = []
            for bracket in self._brackets:
                for milestone, recorded in reversed(bracket._rungs):
                    cut = bracket.cutoff(recorded)
                    value = "-" if cut is None or not math.isfinite(cut) else f"{self._metric_op * cut:.4g}"
                    rungs.append(f"step {milestone:g}: {value}")
            return (f"ASHA: {self._num_stopped} trials stopped; {self._metric} a trial must beat to go on, "
                    f"per rung: " + ", ".join(rungs))

    s = search.tune.scheduler
    if s.type == "none":
        return None
    return ASHA(time_attr="step", max_t=s.max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def _experiment_dir(search: SearchFile, resume: bool) -> Path:
    """Each run gets `<name>-<timestamp>`; --resume continues the newest one of that name."""
    root = Path(search.tune.storage_path).expanduser().resolve()
    if resume:
        found = sorted(p for p in root.glob(f"{search.tune.name}-*") if (p / STATE_FILE).is_file())
        if not found:
            raise ConfigError(f"--resume: no earlier search named '{search.tune.name}' under {root}")
        return found[-1]
    return root / f"{search.tune.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def objective_value(row: dict, metric: str):
    """A trial's value of an objective: its best validation perplexity, or the metric's last reported value."""
    return row["best_val_perplexity"] if metric == "val_perplexity" else row.get(metric)


def pareto_front(rows: list[dict], objectives: list[dict]) -> list[dict]:
    """The trials no other trial beats on every objective (at least as good on all, better on one)."""
    def key(r):  # smaller is better on every axis
        return [(1 if o["mode"] == "min" else -1) * float(objective_value(r, o["metric"])) for o in objectives]

    usable = [r for r in rows if all(objective_value(r, o["metric"]) is not None for o in objectives)]
    keys = [key(r) for r in usable]
    return [r for r, k in zip(usable, keys)
            if not any(all(a <= b for a, b in zip(other, k)) and other != k for other in keys)]


def summarize(grid, search: SearchFile, exp_dir: Path) -> tuple[list[dict], dict | None]:
    """One row per trial from what Ray Tune persisted (it survives a resume)."""
    searched = search.searched
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        metrics = result.metrics or {}
        history = []
        if df is not None and "val_perplexity" in df:
            curve = df["val_perplexity"]  # on one set of windows throughout: see tracking.curve_value
            if "val_perplexity_subset" in df:
                curve = df["val_perplexity_subset"].fillna(curve)
            history = [[float(s), float(v)] for s, v in zip(df["step"], curve) if v == v]  # v == v drops NaN
        row = {"trial_id": metrics.get("trial_id") or Path(result.path).name.split("_")[-1]}
        row.update({k: result.config.get(k) for k in searched})
        ppls = [h[1] for h in history]
        # A finished trial reports the perplexity of the adapter it keeps, scored on every validation window;
        # a trial stopped by the scheduler has only its intermediate evaluations (perhaps on a subset).
        kept = metrics.get("best_val_perplexity") if metrics.get("final") and not metrics.get("diverged") else None
        row.update({
            "final_val_perplexity": ppls[-1] if ppls else None,
            "best_val_perplexity": kept if kept is not None and math.isfinite(kept) else min(ppls) if ppls else None,
            "baseline_perplexity": metrics.get("baseline_perplexity"),
            "steps": int(metrics.get("step", 0) or 0),
            "evaluations": len(history),
            "stopped_early": bool(history) and not bool(metrics.get("final")) and result.error is None,
            "status": "error" if result.error is not None else "diverged" if metrics.get("diverged") else "ok",
            "seconds": round(float(metrics.get("time_total_s", 0.0) or 0.0), 2),
            "node_id": metrics.get("node_id", ""),
        })
        for o in search.tune.objectives:
            if o["metric"] != "val_perplexity":
                row[o["metric"]] = metrics.get(o["metric"])
        row["_history"] = history
        row["_checkpoint"] = result.checkpoint
        row["_config"] = result.config
        rows.append(row)
    # A failed or diverged trial never becomes the champion, whatever it reached before failing.
    scored = [r for r in rows if r["best_val_perplexity"] is not None and r["status"] == "ok"]
    if search.tune.objectives:
        front = pareto_front(scored, search.tune.objectives)
        for r in rows:
            r["pareto"] = r in front
    pick = min if search.tune.mode == "min" else max
    best = pick(scored, key=lambda r: r["best_val_perplexity"]) if scored else None
    fields = [k for k in rows[0] if not k.startswith("_")] if rows else []
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(exp_dir / "summary.csv", text.getvalue())
    return rows, best


def _champion(best: dict, exp_dir: Path) -> Path | None:
    if best is None or best["_checkpoint"] is None:
        return None
    target = exp_dir / "champion"
    with best["_checkpoint"].as_directory() as ckpt:
        source = Path(ckpt) / "best_adapter"
        if not source.is_dir():
            return None
        staged = exp_dir / ".champion.tmp"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(source, staged)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target


class AlreadyFinished(Exception):
    """--resume of a search that has finished: nothing to do."""


class _TokenAuthOnNotice(logging.Filter):
    """Ray announces on every local start that token authentication is on because a token exists in ~/.ray:
    the secure default, with nothing for the user to do. Ray's warning that authentication is *off* still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _connect(address: str | None, env: dict, verbose: int) -> None:
    """Start or join Ray before any work. A cluster address that does not answer is one ConfigError
    after a bounded wait, not a hang."""
    import ray

    if address and address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
            raise ConfigError(f"--address {address}: cannot reach a Ray cluster there ({reason}); start it with "
                              "`ray start --head` or pass the address `ray start` printed") from None
    token_logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if verbose < 2 and not any(isinstance(f, _TokenAuthOnNotice) for f in token_logger.filters):
        token_logger.addFilter(_TokenAuthOnNotice())
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=verbose >= 2, logging_level="WARNING",
                 runtime_env={"env_vars": env}, ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise ConfigError(f"--address {address}: cannot connect to a Ray cluster ({first_line(exc)})") from None


class _GracefulStop:
    """SIGINT (Ctrl-C) and SIGTERM during `Tuner.fit`: the first asks Ray Tune to stop the way its own
    Ctrl-C handling does (SIGUSR1: running trials stop, the experiment state is saved for --resume); a
    second one stops at once. Remembers which signal came, for the exit code."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _ignore(self, signum, frame):  # until Ray Tune installs its own SIGUSR1 handler
        pass

    def _handle(self, signum, frame):
        first = self.signum is None
        self.signum = self.signum or signum
        if first and signal.getsignal(signal.SIGUSR1) is not self._ignore:
            print("\nstopping: the running trials are saved for --resume (press Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread (run_search called from a thread)
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours forwards to Ray's SIGUSR1 handler instead
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        self._old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._ignore)
        return self

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def _check_places(search: SearchFile, tracking_uri: str) -> None:
    """Every place the search will write, before any work."""
    if "://" not in search.tune.storage_path:
        check_writable(Path(search.tune.storage_path), "tune.storage_path")
    check_writable(cache_root(), "EMBINJECT_CACHE")
    check_tracking_uri(tracking_uri)


def run_search(search: SearchFile, address: str | None = None, resume: bool = False, verbose: int = 1) -> dict:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic live trial table, with our columns
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # A tracking server that goes away must not stall the search: fail fast, the journal keeps the records.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # saving the champion model: no progress bars
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet_mlflow("ERROR")  # a search reports tracking problems itself
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray
    from ray import tune

    _check_local_resources(search, address)
    exp_dir = _experiment_dir(search, resume)
    storage = Path(search.tune.storage_path)
    tracking_uri = search.mlflow.tracking_uri or default_tracking_uri(storage)
    artifact_root = storage / "mlartifacts"
    _check_places(search, tracking_uri)
    if resume:
        tracker = tracker_for(tracking_uri, search.mlflow.experiment, exp_dir, artifact_root)
        if tracker.state.get("finished"):
            kept = tracker.pending
            if kept:
                tracker.sync(force=True)
            raise AlreadyFinished(f"search {exp_dir.name} has already finished; nothing to resume"
                                  + (f" ({kept} kept MLflow records sent)" if kept else ""))

    env = {k: os.environ[k] for k in ("EMBINJECT_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                      "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM") if k in os.environ}
    t0 = time.time()
    if address:
        _connect(address, env, verbose)  # before the warm-up: an unreachable cluster is found at once
    else:
        warm_caches(search)  # before starting a local Ray: bad data is found without starting anything
    try:
        if address:
            _check_cluster_resources(search)
            warm_caches(search)
        else:
            _connect(None, env, verbose)
        warm_seconds = time.time() - t0
        exp_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_text(exp_dir / "search.yaml", search.text)
        tracker = tracker_for(tracking_uri, search.mlflow.experiment, exp_dir, artifact_root)
        tracker.start(exp_dir.name, {"search": {p.key: p.describe() for p in search.params},
                                     "tune": dataclasses.asdict(search.tune),
                                     "base": search.base}, exp_dir / "search.yaml",
                      {"search_file": str(search.path), "experiment_dir": str(exp_dir), **source_tags(f"{prog('tune')} {shlex.join(sys.argv[1:])}")},
                      dataset_record(search.config))
        r = search.tune.resources
        base = dict(search.base)
        if r.gpus == 0:
            base = apply_params(base, {"train.device": "cpu"})  # never touch a GPU Ray did not assign
        fn = tune.with_resources(tune.with_parameters(trainable, base=base), {"cpu": r.cpus, "gpu": r.gpus})
        # Ray's best-trial line looks every column up in the trial's config, so conditional
        # parameters (absent from some trials) stay out of the live table; MLflow has them all.
        unconditional = [p.key for p in search.params if p.kind != "fixed" and not p.when]
        # Values longer than a column are cut by Ray with a memory address appended (unstable names), so
        # columns are as wide as the longest searched value (hub ids included), within reason.
        longest = max([len(str(v)) for p in search.params if p.key in unconditional and p.kind == "choice" for v in p.args]
                      + [20])
        reporter = tune.CLIReporter(
            parameter_columns={k: _short(k) for k in unconditional},
            metric_columns={"step": "step", "val_perplexity": "val_ppl", "best_val_perplexity": "best_ppl",
                            "tokens_per_second": "tok/s"},
            max_report_frequency=15, sort_by_metric=True, max_column_length=min(longest, 60))
        run_config = tune.RunConfig(
            name=exp_dir.name, storage_path=str(exp_dir.parent), verbose=verbose,
            callbacks=[_mlflow_callback(tracking_uri, search.mlflow.experiment, exp_dir, artifact_root,
                                        [p.key for p in search.params if p.kind != "fixed"])],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=search.tune.max_failures), progress_reporter=reporter)
        if resume and tune.Tuner.can_restore(str(exp_dir)):
            tuner = tune.Tuner.restore(str(exp_dir), trainable=fn, resume_unfinished=True, resume_errored=True)
        else:
            t = search.tune
            tuner = tune.Tuner(fn, run_config=run_config, tune_config=tune.TuneConfig(
                metric=t.metric, mode=t.mode, search_alg=_searcher(search), scheduler=_scheduler(search),
                num_samples=t.num_samples, time_budget_s=t.time_budget_s, reuse_actors=t.reuse_actors,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"))
        stop = _GracefulStop()
        try:
            with stop:
                grid = tuner.fit()
        except KeyboardInterrupt:
            stop.signum = stop.signum or signal.SIGINT
        if stop.signum is not None:
            name = signal.Signals(stop.signum).name
            tracker.interrupted(name)
            return {"experiment_dir": str(exp_dir), "interrupted": stop.signum, "signal": name,
                    "parent_run_id": tracker.parent_id, "kept_records": tracker.pending}
        rows, best = summarize(grid, search, exp_dir)
        outcome = _finish(search, tracker, rows, best, exp_dir, warm_seconds, time.time() - t0)
        outcome["parent_run_id"] = tracker.parent_id
        outcome["runs_url"] = runs_table_url(tracking_uri, tracker.experiment_id)
        return outcome
    finally:
        ray.shutdown()


def _finish(search: SearchFile, tracker: SearchTracker, rows: list[dict], best: dict | None, exp_dir: Path,
            warm_seconds: float, total_seconds: float) -> dict:
    from .plots import optuna_plots, perplexity_curves

    baseline = next((r["baseline_perplexity"] for r in rows if r["baseline_perplexity"]), None)
    curves = {f"{r['trial_id']}": ([int(h[0]) for h in r["_history"]], [h[1] for h in r["_history"]]) for r in rows if r["_history"]}
    artifacts = [exp_dir / "summary.csv"]
    if curves:
        artifacts.append(perplexity_curves(curves, exp_dir / "val_perplexity_curves.png", baseline))
        scored = [(r["_config"], r["best_val_perplexity"]) for r in rows if r["best_val_perplexity"] is not None]
        artifacts += optuna_plots(search.params, scored, exp_dir, "minimize" if search.tune.mode == "min" else "maximize")
    objectives = search.tune.objectives
    front = [r for r in rows if r.get("pareto")]
    if objectives and front:
        from .plots import pareto_plot

        names = [o["metric"] for o in objectives[:2]]
        points = [(objective_value(r, names[0]), objective_value(r, names[1]), r["trial_id"]) for r in rows
                  if all(objective_value(r, n) is not None for n in names) and r["status"] == "ok"]
        artifacts.append(pareto_plot(points, {r["trial_id"] for r in front}, names, exp_dir / "pareto_front.png"))
        table = io.StringIO()
        fields = ["trial_id", *[o["metric"] for o in objectives], *search.searched]
        writer = csv.DictWriter(table, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, **{o["metric"]: objective_value(r, o["metric"]) for o in objectives}} for r in front)
        artifacts.append(atomic_write_text(exp_dir / "pareto_front.csv", table.getvalue()))
    champion = _champion(best, exp_dir)
    model = None
    if champion is not None:
        from .serving import save_pyfunc

        model = save_pyfunc(champion, exp_dir / "champion_model")
    metrics = {"trials": len(rows), "trials_stopped_early": sum(r["stopped_early"] for r in rows),
               "trials_failed": sum(r["status"] == "error" for r in rows), "trials_diverged": sum(r["status"] == "diverged" for r in rows), "warm_cache_seconds": warm_seconds,
               "search_seconds": total_seconds, "total_steps": sum(r["steps"] for r in rows)}
    if best is not None:
        metrics.update(best_val_perplexity=best["best_val_perplexity"], baseline_perplexity=baseline or float("nan"))
    version_tags = {}
    if best is not None:
        version_tags = {"method": best["_config"].get("method", search.config.method), "trial_id": best["trial_id"],
                        "val_perplexity": f"{best['best_val_perplexity']:.6g}", "search": exp_dir.name,
                        "baseline_perplexity": f"{baseline:.6g}" if baseline else ""}
    tracker.finish(metrics, artifacts, champion, search.mlflow.register_as if champion else None, model,
                   best["trial_id"] if best else None, version_tags)
    return {"experiment_dir": str(exp_dir), "best": None if best is None else {k: v for k, v in best.items() if not k.startswith("_")},
            "champion": str(champion) if champion else None, "champion_model": str(model) if model else None,
            "registered_version": tracker.state["registered_version"],
            "pareto_front": [{"trial_id": r["trial_id"], **{o["metric"]: objective_value(r, o["metric"]) for o in objectives},
                              **{k: r.get(k) for k in search.searched}} for r in front],
            "tracking_uri": tracker.tracking_uri, "experiment": tracker.experiment, "rows": len(rows),
            "kept_records": tracker.pending, **metrics}


def _print_dry_run(search: SearchFile, address: str | None) -> None:
    t = search.tune
    print(f"search file: {search.path}")
    print(f"base: model={search.config.model} method={search.config.method} data={search.config.data.path} "
          f"seq_len={search.config.data.seq_len} max_steps={search.config.train.max_steps}")
    print("space:")
    print("\n".join(search.describe()) or "  (no searched parameters)")
    sched = "none" if t.scheduler.type == "none" else (
        f"ASHA on optimizer steps (max_t={t.scheduler.max_t}, grace_period={t.scheduler.grace_period}, "
        f"reduction_factor={t.scheduler.reduction_factor:g})")
    guided = f", TPE-guided after {t.random_trials_first} random trials" if t.search_alg == "optuna" else ""
    print(f"search: {t.search_alg} (seed {t.seed}{guided}), {len(t.points_to_evaluate)} starting points; scheduler: {sched}")
    budget = t.num_samples * (t.scheduler.max_t or search.config.train.max_steps or 0)
    print(f"budget: {t.num_samples} trials, at most {budget} optimizer steps in all, "
          f"{t.max_concurrent_trials} at a time" + (f", {t.time_budget_s:g} s time budget" if t.time_budget_s else ""))
    print(f"resources per trial: {t.resources.cpus:g} CPU, {t.resources.gpus:g} GPU; cluster: {address or 'local'}")
    print(f"storage: {Path(t.storage_path).resolve()}; mlflow: {search.mlflow.tracking_uri or 'sqlite beside the results'} "
          f"experiment '{search.mlflow.experiment}'" + (f", registers '{search.mlflow.register_as}'" if search.mlflow.register_as else ""))


def _print_kept(outcome: dict) -> None:
    if outcome.get("kept_records"):
        print(f"MLflow at {outcome['tracking_uri']} could not be reached: {outcome['kept_records']} records are kept in "
              f"{outcome['experiment_dir']}/mlflow_journal.jsonl and are logged by --resume once it is back", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("tune"), description=__doc__.splitlines()[0],
                                     epilog="A search file is a training config (see `embinject train --help` for its keys) "
                                            "plus search:, tune: and mlflow: sections; see README.md.")
    parser.add_argument("search_file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any key of the search file, e.g. --set tune.num_samples=4")
    parser.add_argument("--address", default=None, help="an existing Ray cluster: auto, HOST:PORT or ray://HOST:PORT")
    parser.add_argument("--resume", action="store_true", help="continue the newest interrupted search of this name")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; do not start Ray")
    parser.add_argument("-v", "--verbose", action="count", default=1, help="-v shows trial logs")
    args = parser.parse_args(argv)
    handle_sigterm()  # before the search starts, SIGTERM is handled like Ctrl-C
    try:
        search = load_search_file(args.search_file, args.overrides)
        _check_local_resources(search, args.address)
        if args.dry_run:
            _print_dry_run(search, args.address)
            return 0
        outcome = run_search(search, address=args.address, resume=args.resume, verbose=args.verbose)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except AlreadyFinished as exc:
        print(exc)
        return 0
    except KeyboardInterrupt as exc:
        print("interrupted before the search started; nothing written", file=sys.stderr)
        return interrupt_exit_code(exc)
    print()
    if outcome.get("interrupted"):
        again = ["python", "-m", "embinject.tune", args.search_file, "--resume"]
        again += [f"--set={o}" for o in args.overrides] + (["--address", args.address] if args.address else [])
        print(f"search interrupted ({outcome['signal']}): nothing registered; finished trials and the running trials' "
              f"last checkpoints are kept in {outcome['experiment_dir']}", file=sys.stderr)
        print(f"resume with: {shlex.join(again)}", file=sys.stderr)
        return 128 + outcome["interrupted"]
    _print_kept(outcome)
    best = outcome["best"]
    if best is None:
        print(f"no trial finished without failing ({outcome['trials_failed']} failed, {outcome['trials_diverged']} "
              f"diverged); see {outcome['experiment_dir']}/summary.csv")
        return 1
    params = {k: v for k, v in best.items() if k in {p.key for p in search.params} and v is not None}
    print(f"best trial {best['trial_id']}: val_perplexity {best['best_val_perplexity']:.3f} "
          f"(frozen baseline {best['baseline_perplexity']:.3f}) after {best['steps']} steps")
    print(f"  params: {json.dumps(params)}")
    print(f"best adapter: {outcome['champion']}" + (f" (registered as {search.mlflow.register_as} "
                                                     f"version {outcome['registered_version']}, alias champion)" if outcome["registered_version"] else ""))
    if outcome.get("pareto_front"):
        names = [o["metric"] for o in search.tune.objectives]
        goals = ", ".join(f"{o['metric']} {o['mode']}" for o in search.tune.objectives)
        print(f"Pareto front ({len(outcome['pareto_front'])} trials; {goals}):")
        for r in sorted(outcome["pareto_front"], key=lambda r: r[names[0]]):
            print("  " + r["trial_id"] + ": " + ", ".join(f"{n} {r[n]:.6g}" for n in names))
    print(f"trials: {outcome['trials']} ({outcome['trials_stopped_early']} stopped early, {outcome['trials_failed']} failed, "
          f"{outcome['trials_diverged']} diverged); "
          f"summary: {outcome['experiment_dir']}/summary.csv")
    served = outcome["tracking_uri"].startswith(("http://", "https://"))
    print(f"mlflow: experiment '{outcome['experiment']}', run {outcome['parent_run_id']}" +
          ("" if served else f"; open with: mlflow ui --backend-store-uri {outcome['tracking_uri']}"))
    print(f"  runs table: {outcome['runs_url']}")
    if outcome["registered_version"]:
        print(f"  use it: mlflow.pyfunc.load_model('models:/{search.mlflow.register_as}@champion').predict(...), or "
              f"embinject generate --adapter models:/{search.mlflow.register_as}@champion --prompt TEXT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
