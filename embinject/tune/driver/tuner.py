"""What a search hands Ray: the trial function with the resources it asks for (packed or alone, as the pack plan
says, `auto` decided by a probe), and Ray's Tuner with its searcher, scheduler, MLflow callback and trial table; or,
on --resume, the Tuner restored from Ray's saved state."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from ...errors import first_line
from ...space import SearchFile, apply_params
from ..worker import member
from ..worker.pack_host import packed_trainable
from ..worker.pack_names import PackPlan, lanes
from ..worker.probe import largest_trial, probe_pack
from ..worker.trainable import trainable
from .callback import mlflow_callback, short_key
from .folder import recorded_pack_size, restore_superseded_checkpoints
from .pack_plan import auto_cap, lanes_used, packable_methods, plan_pack, prestart_hosts
from .progress import trial_table
from .search_run import SearchRun
from .searcher import make_scheduler, make_searcher


def pack_plan_for(run: SearchRun, exp_dir: Path) -> PackPlan:
    """`tune.pack` for this search, its hosts named after `exp_dir`: the plan made before Ray started, or, for `auto`,
    one from the probe (a packed step's speed, and on GPUs the memory) in one process with one trial's resources,
    except where --resume restores trials Ray created in packs of the size the probe chose then."""
    import ray  # lazy: Ray Tune takes seconds to import

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
    from ray import tune  # lazy: Ray Tune takes seconds to import

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
    from ray import tune  # lazy: Ray Tune takes seconds to import

    return tune.Tuner.can_restore(str(exp_dir))


def run_config(run: SearchRun, exp_dir: Path):
    """Where Ray keeps the search, its MLflow callback, checkpoints and failures, and the live trial table."""
    from ray import tune  # lazy: Ray Tune takes seconds to import

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


def make_tuner(run: SearchRun, exp_dir: Path, fn):
    """Ray's Tuner: restored from its saved state on --resume, or a new one with the searcher and the scheduler."""
    from ray import tune  # lazy: Ray Tune takes seconds to import

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
        run_config=run_config(run, exp_dir),
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
