"""How trials are proposed and stopped: Optuna's sampler (TPE or random, define-by-run for conditional
parameters) inside Ray's OptunaSearch, its study on disk in the search's folder, and ASHA on optimizer steps.

The two classes, `StudySearch` and `ASHA`, are Ray's classes with this module's behaviour: each is written here as a
class without Ray (`StudySearchBehaviour`, `ASHABehaviour`) and joined with its Ray base on first use (`__getattr__`
`ray_class`), so that importing this module does not import Ray (seconds), and bad input or --dry-run is answered first.
Both are named in this module, so pickle (Ray's saved state) finds them by name."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from ...space import DefineByRun, SearchFile, optuna_value
from .internals import (
    asha_rungs,
    asha_stopped,
    mark_searcher_trial_ended,
    searcher_study,
    searcher_trials,
    uncount_asha_stop,
)
from .study import TRIAL_ID, curve_point, end_trial, journal_path, outcome, study_name, study_storage
from .warm import WarmStart, WarmTrial


def optuna_sampler(t):
    """The Optuna sampler `tune.search_alg` (and `tune.multivariate`, `tune.startup_trials`) asks for."""
    import optuna  # lazy, as Ray: only a search that runs needs it

    if t.search_alg == "random":
        return optuna.samplers.RandomSampler(seed=t.seed)
    with warnings.catch_warnings():  # multivariate and group are marked experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=t.seed, n_startup_trials=t.random_trials_first, multivariate=t.multivariate, group=t.multivariate
        )


class StudySearchBehaviour:
    """Ray's OptunaSearch (as `StudySearch`) whose study is on disk and whose trials end there as summary.csv says
    (see .study); whose study starts with earlier searches' trials: those of the same setup at once, as completed
    trials; those of another setup once this search's frozen-LM baseline is known, each value rescaled by the ratio of
    the two baselines. Its state (the prior and the starting points still waiting) is saved for --resume, which finds
    the study as the journal has it. OptunaSearch's study and trials are reached through .internals."""

    def __init__(
        self,
        *args,
        distributions: dict,
        completed: list[WarmTrial],
        prior: list[WarmTrial],
        points: list[dict],
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        # The starting points are enqueued one at a time as trials are asked for, rather than all at once as
        # Ray does: then a point waits only in this state, which Ray saves with its trials, never in the journal
        # too, where a restore from a state saved before it was taken would find it gone.
        self._distributions, self._prior, self._points = distributions, list(prior), list(points)
        for trial in completed:
            self._add(trial, trial.value, trial.intermediate)

    def _add(self, trial: WarmTrial, value: float | None, intermediate: dict | None, rescaled: bool = False) -> None:
        import optuna  # lazy, as Ray

        state = optuna.trial.TrialState.COMPLETE if trial.ok else optuna.trial.TrialState.FAIL
        attrs = {"warm_start": True, **({"warm_start_rescaled": True} if rescaled else {})}
        searcher_study(self).add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value if trial.ok else None,
                params=trial.params,
                distributions={k: self._distributions[k] for k in trial.params},
                intermediate_values=intermediate if trial.ok else None,
                user_attrs=attrs,
            )
        )

    def _ended(self, trial_id: str) -> bool:
        """Whether the study has this trial ended: told before a kill, after the state --resume restored."""
        number = searcher_trials(self)[trial_id].number
        return searcher_study(self).get_trials(deepcopy=False)[number].state.is_finished()

    def suggest(self, trial_id: str) -> dict | None:
        trials = searcher_trials(self)
        if self._points and trial_id not in trials:
            searcher_study(self).enqueue_trial(self._points.pop(0))
        config = super().suggest(trial_id)
        searcher_trials(self)[trial_id].set_user_attr(TRIAL_ID, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        baseline = result.get("baseline_perplexity")
        if self._prior and baseline and math.isfinite(baseline):
            for trial in self._prior:
                self._add(trial, trial.value * baseline / trial.baseline, None, rescaled=True)
            self._prior = []
        if trial_id in searcher_trials(self) and not self._ended(trial_id):
            self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        value = None if isinstance(self.metric, list) else curve_point(result, self.metric)
        if value is not None:
            with warnings.catch_warnings():  # a step reported again by a trial resumed from its last checkpoint
                warnings.filterwarnings("ignore", message="The reported value is ignored")
                searcher_trials(self)[trial_id].report(value, int(result["step"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna  # lazy, as Ray

        if trial_id not in searcher_trials(self) or self._ended(trial_id):
            return
        if result and "step" in result:  # Ray hands a trial's last result (its final one, or ASHA's cut) only here
            self._report(trial_id, result)
        names = self.metric if isinstance(self.metric, list) else [self.metric]
        state, values = outcome(result, error, names)
        searcher_study(self).tell(searcher_trials(self)[trial_id], values, state=optuna.trial.TrialState[state])
        mark_searcher_trial_ended(self, trial_id)

    def restore(self, checkpoint_path: str) -> None:
        """The state Ray saved, on the study as the journal has it: trials begun after that state was saved
        (Ray forgets them, and proposes others in their place) end FAIL, `ended_by` lost_at_kill; a prior the
        journal already holds is not added again."""
        import optuna  # lazy, as Ray

        super().restore(checkpoint_path)
        study = searcher_study(self)
        known = {trial.number for trial in searcher_trials(self).values()}
        for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if frozen.number not in known:
                end_trial(study, frozen, "FAIL", ended_by="lost_at_kill")
        if any(t.user_attrs.get("warm_start_rescaled") for t in study.get_trials(deepcopy=False)):
            self._prior = []


class ASHABehaviour:
    """Ray's ASHAScheduler (as `ASHA`) whose status line shows each rung's cut-off in the metric's own units (Ray's
    shows the negated value when minimising, i.e. negative perplexities), and whose count of trials stopped early
    leaves out those that had ended on their own."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP and result.get("final"):
            uncount_asha_stop(self)  # it had ended on its own (max_t, or its last step): the summary's count too
        return action

    def debug_string(self) -> str:
        rungs = [f"step {milestone:g}: {'-' if cut is None else f'{cut:.4g}'}" for milestone, cut in asha_rungs(self)]
        return (
            f"ASHA: {asha_stopped(self)} stopped early; {self.metric} a trial must beat to go on, "
            f"per rung: " + ", ".join(rungs)
        )


def _study_search_class():
    from ray.tune.search.optuna import OptunaSearch  # lazy: Ray Tune takes seconds to import

    return StudySearchBehaviour, OptunaSearch


def _asha_class():
    from ray.tune.schedulers import ASHAScheduler  # lazy: Ray Tune takes seconds to import

    return ASHABehaviour, ASHAScheduler


_RAY_CLASSES = {"StudySearch": _study_search_class, "ASHA": _asha_class}


def ray_class(name: str) -> type:
    """`StudySearch` or `ASHA`: made once, on first use, and kept in the module under its name."""
    cls = globals().get(name)
    if cls is None:
        behaviour, base = _RAY_CLASSES[name]()
        cls = type(
            name, (behaviour, base), {"__module__": __name__, "__qualname__": name, "__doc__": behaviour.__doc__}
        )
        globals()[name] = cls
    return cls


def __getattr__(name: str):
    """`from embinject.tune.driver.searcher import StudySearch` (or ASHA), and pickle finding them by name (PEP 562)."""
    if name not in _RAY_CLASSES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return ray_class(name)


def make_searcher(search: SearchFile, exp_dir: Path, warm: WarmStart | None = None):
    """Ray's OptunaSearch over the search's space, its study begun in `exp_dir`'s journal (see .study). It runs where
    Ray starts a search from nothing, so a journal already there is of a start Ray kept no state of: begun again."""
    # lazy: Ray Tune takes seconds to import, and bad input or --dry-run is answered before it
    from ray.tune.search import ConcurrencyLimiter

    t = search.tune
    warm = warm or WarmStart()
    sampler = optuna_sampler(t)
    metric, mode = t.metric, t.mode
    if t.objectives:  # Optuna's multi-objective sampling: TPE (or random) over all objectives at once
        metric, mode = [o["metric"] for o in t.objectives], [o["mode"] for o in t.objectives]
    points = [{k: optuna_value(v) for k, v in p.items()} for p in warm.first_points(t.points_to_evaluate)]
    journal_path(exp_dir).unlink(missing_ok=True)
    alg = ray_class("StudySearch")(
        DefineByRun(search.params, search.base),
        metric=metric,
        mode=mode,
        sampler=sampler,
        storage=study_storage(exp_dir),
        study_name=study_name(exp_dir),
        points=points,
        completed=warm.completed,
        prior=warm.prior,
        distributions={p.key: p.optuna_distribution() for p in search.params if p.kind != "fixed"},
    )
    return ConcurrencyLimiter(alg, max_concurrent=t.max_concurrent_trials)


def make_scheduler(search: SearchFile):
    s = search.tune.scheduler
    if s.type == "none":
        return None
    return ray_class("ASHA")(
        time_attr="step", max_t=s.max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor
    )
