"""How trials are proposed and stopped: Optuna's sampler (TPE or random, define-by-run for conditional
parameters) inside Ray's OptunaSearch, its study on disk in the search's folder, and ASHA on optimizer steps."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

from ..space import DefineByRun, SearchFile, optuna_value
from .study import TRIAL_ID, curve_point, end_trial, journal_path, outcome, study_name, study_storage
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


def make_searcher(search: SearchFile, exp_dir: Path, warm: WarmStart | None = None):
    """Ray's OptunaSearch over the search's space, its study begun in `exp_dir`'s journal (see .study). It runs where
    Ray starts a search from nothing, so a journal already there is of a start Ray kept no state of: begun again."""
    from ray.tune.search import ConcurrencyLimiter  # lazy: Ray Tune takes seconds to import, and bad input or --dry-run is answered before it
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        """OptunaSearch whose study is on disk and whose trials end there as summary.csv says (see .study); whose
        study starts with earlier searches' trials: those of the same setup at once, as completed trials; those of
        another setup once this search's frozen-LM baseline is known, each value rescaled by the ratio of the two
        baselines. Its state (the prior and the starting points still waiting) is saved for --resume, which finds the
        study as the journal has it.

        Written for Ray 2.50 to 2.60's OptunaSearch, whose private `_ot_study` (the study), `_ot_trials` (Ray's trial
        id -> Optuna trial) and `_completed_trials` it uses: Ray offers no other way to them."""

        def __init__(self, *args, distributions: dict, completed: list[WarmTrial], prior: list[WarmTrial],
                     points: list[dict], **kwargs):
            super().__init__(*args, **kwargs)
            # The starting points are enqueued one at a time as trials are asked for, rather than all at once as
            # Ray does: then a point waits only in this state, which Ray saves with its trials, never in the journal
            # too, where a restore from a state saved before it was taken would find it gone.
            self._distributions, self._prior, self._points = distributions, list(prior), list(points)
            for trial in completed:
                self._add(trial, trial.value, trial.intermediate)

        def _add(self, trial: WarmTrial, value: float | None, intermediate: dict | None,
                 rescaled: bool = False) -> None:
            import optuna  # lazy, as Ray above

            state = optuna.trial.TrialState.COMPLETE if trial.ok else optuna.trial.TrialState.FAIL
            attrs = {"warm_start": True, **({"warm_start_rescaled": True} if rescaled else {})}
            self._ot_study.add_trial(optuna.trial.create_trial(
                state=state, value=value if trial.ok else None, params=trial.params,
                distributions={k: self._distributions[k] for k in trial.params},
                intermediate_values=intermediate if trial.ok else None, user_attrs=attrs))

        def _ended(self, trial_id: str) -> bool:
            """Whether the study has this trial ended: told before a kill, after the state --resume restored."""
            number = self._ot_trials[trial_id].number
            return self._ot_study.get_trials(deepcopy=False)[number].state.is_finished()

        def suggest(self, trial_id: str) -> dict | None:
            if self._points and trial_id not in self._ot_trials:
                self._ot_study.enqueue_trial(self._points.pop(0))
            config = super().suggest(trial_id)
            self._ot_trials[trial_id].set_user_attr(TRIAL_ID, trial_id)
            return config

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            baseline = result.get("baseline_perplexity")
            if self._prior and baseline and math.isfinite(baseline):
                for trial in self._prior:
                    self._add(trial, trial.value * baseline / trial.baseline, None, rescaled=True)
                self._prior = []
            if trial_id in self._ot_trials and not self._ended(trial_id):
                self._report(trial_id, result)

        def _report(self, trial_id: str, result: dict) -> None:
            value = None if isinstance(self.metric, list) else curve_point(result, self.metric)
            if value is not None:
                with warnings.catch_warnings():  # a step reported again by a trial resumed from its last checkpoint
                    warnings.filterwarnings("ignore", message="The reported value is ignored")
                    self._ot_trials[trial_id].report(value, int(result["step"]))

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            import optuna  # lazy, as Ray above

            if trial_id not in self._ot_trials or self._ended(trial_id):
                return
            if result and "step" in result:  # Ray hands a trial's last result (its final one, or ASHA's cut) only here
                self._report(trial_id, result)
            names = self.metric if isinstance(self.metric, list) else [self.metric]
            state, values = outcome(result, error, names)
            self._ot_study.tell(self._ot_trials[trial_id], values, state=optuna.trial.TrialState[state])
            self._completed_trials.add(trial_id)

        def restore(self, checkpoint_path: str) -> None:
            """The state Ray saved, on the study as the journal has it: trials begun after that state was saved
            (Ray forgets them, and proposes others in their place) end FAIL, `ended_by` lost_at_kill; a prior the
            journal already holds is not added again."""
            import optuna  # lazy, as Ray above

            super().restore(checkpoint_path)
            known = {trial.number for trial in self._ot_trials.values()}
            for frozen in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if frozen.number not in known:
                    end_trial(self._ot_study, frozen, "FAIL", ended_by="lost_at_kill")
            if any(t.user_attrs.get("warm_start_rescaled") for t in self._ot_study.get_trials(deepcopy=False)):
                self._prior = []

    t = search.tune
    warm = warm or WarmStart()
    sampler = optuna_sampler(t)
    metric, mode = t.metric, t.mode
    if t.objectives:  # Optuna's multi-objective sampling: TPE (or random) over all objectives at once
        metric, mode = [o["metric"] for o in t.objectives], [o["mode"] for o in t.objectives]
    points = [{k: optuna_value(v) for k, v in p.items()} for p in warm.first_points(t.points_to_evaluate)]
    journal_path(exp_dir).unlink(missing_ok=True)
    alg = StudySearch(DefineByRun(search.params, search.base), metric=metric, mode=mode, sampler=sampler,
                      storage=study_storage(exp_dir), study_name=study_name(exp_dir), points=points,
                      completed=warm.completed, prior=warm.prior,
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
