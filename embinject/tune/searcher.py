"""How trials are proposed and stopped: Optuna's sampler (TPE or random, define-by-run for conditional
parameters) inside Ray's OptunaSearch, and ASHA on optimizer steps."""
from __future__ import annotations

import math
import warnings

from ..space import DefineByRun, SearchFile, optuna_value
from .warm import WarmStart, WarmTrial


def optuna_sampler(t):
    """The Optuna sampler `tune.search_alg` (and `tune.multivariate`, `tune.startup_trials`) asks for."""
    import optuna  # lazy, as Ray: only a search that runs needs it

    if t.search_alg == "random":
        return optuna.samplers.RandomSampler(seed=t.seed)
    with warnings.catch_warnings():  # multivariate and group are marked experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=t.seed, n_startup_trials=t.random_trials_first,
                                          multivariate=t.multivariate, group=t.multivariate)


def make_searcher(search: SearchFile, warm: WarmStart | None = None):
    from ray.tune.search import ConcurrencyLimiter  # lazy: Ray Tune takes seconds to import, and bad input or --dry-run is answered before it
    from ray.tune.search.optuna import OptunaSearch

    class WarmOptunaSearch(OptunaSearch):
        """OptunaSearch whose study starts with earlier searches' trials: those of the same setup at once, as
        completed trials; those of another setup once this search's frozen-LM baseline is known, each value rescaled
        by the ratio of the two baselines. Its state (the study, the prior still waiting) is saved for --resume."""

        def __init__(self, *args, distributions: dict, completed: list[WarmTrial], prior: list[WarmTrial], **kwargs):
            super().__init__(*args, **kwargs)
            self._distributions, self._prior = distributions, list(prior)
            for trial in completed:
                self._add(trial, trial.value, trial.intermediate)

        def _add(self, trial: WarmTrial, value: float | None, intermediate: dict | None) -> None:
            import optuna  # lazy, as Ray above

            state = optuna.trial.TrialState.COMPLETE if trial.ok else optuna.trial.TrialState.FAIL
            self._ot_study.add_trial(optuna.trial.create_trial(
                state=state, value=value if trial.ok else None, params=trial.params,
                distributions={k: self._distributions[k] for k in trial.params},
                intermediate_values=intermediate if trial.ok else None, user_attrs={"warm_start": True}))

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            baseline = result.get("baseline_perplexity")
            if self._prior and baseline and math.isfinite(baseline):
                for trial in self._prior:
                    self._add(trial, trial.value * baseline / trial.baseline, None)
                self._prior = []
            super().on_trial_result(trial_id, result)

    t = search.tune
    warm = warm or WarmStart()
    sampler = optuna_sampler(t)
    metric, mode = t.metric, t.mode
    if t.objectives:  # Optuna's multi-objective sampling: TPE (or random) over all objectives at once
        metric, mode = [o["metric"] for o in t.objectives], [o["mode"] for o in t.objectives]
    points = [{k: optuna_value(v) for k, v in p.items()} for p in warm.first_points(t.points_to_evaluate)]
    alg = WarmOptunaSearch(DefineByRun(search.params, search.base), metric=metric, mode=mode, points_to_evaluate=points or None,
                           sampler=sampler, completed=warm.completed, prior=warm.prior,
                           distributions={p.key: p.optuna_distribution() for p in search.params if p.kind != "fixed"})
    return ConcurrencyLimiter(alg, max_concurrent=t.max_concurrent_trials)


def make_scheduler(search: SearchFile):
    from ray.tune.schedulers import ASHAScheduler  # lazy: Ray Tune takes seconds to import, and bad input or --dry-run is answered before it

    class ASHA(ASHAScheduler):
        """ASHA whose status line shows each rung's cut-off in the metric's own units (Ray's shows the
        negated value when minimising, i.e. negative perplexities)."""

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            action = super().on_trial_result(tune_controller, trial, result)
            if action == self.STOP and result.get("final"):
                self._num_stopped -= 1  # it had ended on its own (max_t, or its last step): the summary's count too
            return action

        def debug_string(self) -> str:
            rungs = []
            for bracket in self._brackets:
                for milestone, recorded in reversed(bracket._rungs):
                    cut = bracket.cutoff(recorded)
                    value = "-" if cut is None or not math.isfinite(cut) else f"{self._metric_op * cut:.4g}"
                    rungs.append(f"step {milestone:g}: {value}")
            return (f"ASHA: {self._num_stopped} stopped early; {self._metric} a trial must beat to go on, "
                    f"per rung: " + ", ".join(rungs))

    s = search.tune.scheduler
    if s.type == "none":
        return None
    return ASHA(time_attr="step", max_t=s.max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor)
