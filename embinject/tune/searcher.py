"""How trials are proposed and stopped: Optuna's sampler (TPE or random, define-by-run for conditional
parameters) inside Ray's OptunaSearch, and ASHA on optimizer steps."""
from __future__ import annotations

import math
import warnings

from ..space import DefineByRun, SearchFile, optuna_value


def optuna_sampler(t):
    """The Optuna sampler `tune.search_alg` (and `tune.multivariate`, `tune.startup_trials`) asks for."""
    import optuna  # lazy, as Ray: only a search that runs needs it

    if t.search_alg == "random":
        return optuna.samplers.RandomSampler(seed=t.seed)
    with warnings.catch_warnings():  # multivariate and group are marked experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=t.seed, n_startup_trials=t.random_trials_first,
                                          multivariate=t.multivariate, group=t.multivariate)


def make_searcher(search: SearchFile):
    from ray.tune.search import ConcurrencyLimiter  # lazy: Ray Tune takes seconds to import, and bad input or --dry-run is answered before it
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


def make_scheduler(search: SearchFile):
    from ray.tune.schedulers import ASHAScheduler  # lazy: Ray Tune takes seconds to import, and bad input or --dry-run is answered before it

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
