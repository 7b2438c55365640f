"""Optuna's study of a search, kept in the search's folder as Optuna's journal file (`optuna.journal`), so that
`optuna-dashboard` and the `optuna` CLI open it and --resume continues it. The study is named after the folder.

Each Ray trial is one Optuna trial, its Ray id in the user attribute `trial_id` (as in summary.csv and MLflow). Its
state follows summary.csv: COMPLETE for a trial trained to its end (its value is its kept adapter's,
`best_val_perplexity`), PRUNED for one that ASHA stopped or the search's end cut (its value is its last point on the
validation curve), FAIL for one that failed, diverged, never started, or was lost when the driver was killed. Each
evaluation is an intermediate value at its optimizer step (a multi-objective study has none: Optuna keeps them for
one objective only).
"""

from __future__ import annotations

import math
from pathlib import Path

from ...tracking import curve_value
from .internals import storage_trial_id
from .results import objective_value

JOURNAL_FILE = "optuna.journal"
TRIAL_ID = "trial_id"  # the user attribute that holds a trial's Ray id
ENDED_BY = "ended_by"  # the user attribute that says what ended a trial the search did not see end by itself


def journal_path(exp_dir: Path) -> Path:
    return exp_dir / JOURNAL_FILE


def study_name(exp_dir: Path) -> str:
    return exp_dir.name


def study_storage(exp_dir: Path):
    """The storage `optuna.load_study(storage=..., study_name=study_name(exp_dir))` reads the search's study from."""
    import optuna  # lazy: Optuna takes a second to import, and only a search or a reader of one needs it

    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal_path(exp_dir))))


def curve_point(result: dict, metric: str) -> float | None:
    """A report's intermediate value: the metric, where it is validation perplexity on one set of windows throughout
    (the point the curves in MLflow and summary.csv take); None where it is missing or not finite."""
    value = curve_value(result) if metric == "val_perplexity" else result.get(metric)
    return float(value) if value is not None and math.isfinite(value) else None


def _values(metrics: dict, names: list[str]) -> list[float] | None:
    values = [objective_value(metrics, n) for n in names]
    return values if all(v is not None and math.isfinite(v) for v in values) else None


def outcome(result: dict | None, error: bool, names: list[str]) -> tuple[str, list[float] | None]:
    """The state (a TrialState name) and values of a trial Ray saw end: its last result, whether it failed, the
    objectives' metrics."""
    if error or not result or result.get("diverged"):
        return "FAIL", None
    if not result.get("final"):
        return "PRUNED", None  # Optuna records the last intermediate value as its value
    values = _values(result, names)
    return ("COMPLETE", values) if values is not None else ("FAIL", None)


def end_trial(study, frozen, state: str, values: list[float] | None = None, ended_by: str | None = None) -> None:
    """Ends a trial the study holds as running (`frozen`, as the study lists it), saying what ended it in `ended_by`."""
    import optuna  # lazy, as in study_storage

    if ended_by:
        # nothing public sets a user attribute on a trial that another process (or a searcher before --resume) began
        optuna.trial.Trial(study, storage_trial_id(frozen)).set_user_attr(ENDED_BY, ended_by)
    study.tell(frozen.number, values, state=optuna.trial.TrialState[state])


def close_study(exp_dir: Path, rows: list[dict], names: list[str], cut_by: str) -> bool:
    """At the search's end, each trial still running in the study ends as summary.csv says: those the search's end
    cut (`cut_by`: time_budget or search_end), those that never started, those Ray lost when the driver was killed
    (not in summary.csv), and any that Ray ended without telling the searcher. Whether the search has a study: one
    begun by an embinject before the study was kept on disk, and resumed now, has none."""
    import optuna  # lazy, as in study_storage

    storage = study_storage(exp_dir)
    if study_name(exp_dir) not in optuna.get_all_study_names(storage):
        journal_path(exp_dir).unlink(missing_ok=True)  # the empty file opening the storage made
        return False
    study = optuna.load_study(storage=storage, study_name=study_name(exp_dir))
    by_id = {r["trial_id"]: r for r in rows}
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        row = by_id.get(frozen.user_attrs.get(TRIAL_ID))
        status = row["status"] if row else "lost_at_kill"
        state, values = "FAIL", None
        if status == "cut" or (status == "ok" and row["stopped_early"]):
            state = "PRUNED"
        elif status == "ok":
            values = _values(row, names)
            state = "COMPLETE" if values is not None else "FAIL"
        ended_by = {"cut": cut_by, "not_started": status, "lost_at_kill": status}.get(status)
        end_trial(study, frozen, state, values, ended_by)
    return True
