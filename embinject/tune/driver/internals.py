"""Every use of Ray's or Optuna's internals (private attributes, private modules, private arguments, internal file
formats), in one place. Written for Ray 2.50 to 2.60 and Optuna 4.0 to 5.1; tests/test_internals.py checks each on the
installed versions and names them when one differs, so an upgrade fails there, loudly, not somewhere in a search.

Each is here because Ray or Optuna offers no public way to it (checked against Ray 2.60 and Optuna 5.1):
- OptunaSearch's study, its trials and the set of those it has ended (`_ot_study`, `_ot_trials`,
  `_completed_trials`): the searcher adds earlier searches' trials, reports and ends trials itself (see .searcher);
  Ray's `add_evaluated_point` refuses a define-by-run space and takes no user attributes.
- ASHA's count of trials it stopped, its brackets' rungs and the sign it puts on the metric (`_num_stopped`,
  `_brackets`, `_Bracket._rungs`, `_metric_op`): the status line shows each rung's cut-off; a trial that ended on
  its own is not counted as stopped.
- FrozenTrial's storage id (`_trial_id`): nothing public sets a user attribute on a trial another process began.
- CLIReporter's settings and Ray's private helpers that build its status text (`_metric`, `_mode`, `_metric_columns`,
  `_parameter_columns`, `_max_progress_rows`, `_max_column_length`, `_start_time`, `_total_samples`,
  `_max_error_rows`; `progress_reporter._get_progress_table_data`, `_time_passed_str`, `_trial_errors_str`, and Ray's
  vendored `tabulate`): the status names the search folder and rounds values, which Ray's text cannot be told to.
- The logger of Ray's private module that announces token authentication, `ray.init`'s `_system_config`, and the
  experiment snapshot's `trial_data` as Ray's own trial loader reads it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

RAY_VERSIONS = "Ray 2.50 to 2.60"
OPTUNA_VERSIONS = "Optuna 4.0 to 5.1"

# Ray's private module that logs "Token authentication is enabled for this Ray cluster" on every local start
RAY_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
RAY_SYSTEM_CONFIG_ARG = "_system_config"  # ray.init's private argument: settings of the local Ray it starts


def searcher_study(searcher):
    """OptunaSearch's study (an optuna.Study), the one its trials are asked from and told to."""
    return searcher._ot_study


def searcher_trials(searcher) -> dict:
    """OptunaSearch's trials: Ray's trial id -> the optuna.Trial it asked for it."""
    return searcher._ot_trials


def mark_searcher_trial_ended(searcher, trial_id: str) -> None:
    """OptunaSearch takes the trial as ended: results Ray hands on later are ignored, as after its own ending."""
    searcher._completed_trials.add(trial_id)


def uncount_asha_stop(scheduler) -> None:
    """ASHA's count of trials it stopped, less one: a trial it said STOP to had ended on its own."""
    scheduler._num_stopped -= 1


def asha_stopped(scheduler) -> int:
    """How many trials ASHA stopped early."""
    return scheduler._num_stopped


def asha_rungs(scheduler) -> list[tuple[float, float | None]]:
    """ASHA's rungs, each bracket's lowest first, each (milestone, the value a trial must beat there, in the metric's
    own units: Ray keeps the negated value when minimising), None where no trial has reached it or the cut-off is not
    finite."""
    rungs = []
    for bracket in scheduler._brackets:
        for milestone, recorded in reversed(bracket._rungs):  # Ray keeps them highest first
            cut = bracket.cutoff(recorded)
            rungs.append(
                (milestone, None if cut is None or not math.isfinite(cut) else float(scheduler._metric_op * cut))
            )
    return rungs


def storage_trial_id(frozen) -> int:
    """The storage's id of a trial the study lists (an optuna.trial.FrozenTrial), which an optuna.trial.Trial is
    made from."""
    return frozen._trial_id


def snapshot_trial_checkpoints(snapshot: Path) -> dict[str, str]:
    """The checkpoint that Ray's experiment snapshot (`experiment_state-*.json`) names for each trial that has one:
    trial folder name -> checkpoint folder name, read with Ray's own trial loader. Empty where Ray cannot read it."""
    from ray.tune.experiment.trial import Trial  # lazy: Ray Tune takes seconds to import

    try:
        trial_data = json.loads(snapshot.read_text())["trial_data"]
    except (OSError, ValueError, KeyError):
        return {}  # an unreadable snapshot: Ray's restore says so itself
    named = {}
    for json_state, run_metadata in trial_data:
        try:
            trial = Trial.from_json_state(json_state, stub=True)
            trial.restore_run_metadata(run_metadata)
            if trial.checkpoint is not None:
                named[trial.storage.trial_dir_name] = Path(trial.checkpoint.path).name
        except Exception:  # noqa: BLE001 - Ray's internal format; Ray's own restore says what it cannot read
            continue
    return named


def reporter_settings(reporter) -> dict:
    """A CLIReporter's settings the status text is built from: metric and mode, its columns, rows, column width, when it
    started and how many trials the search runs."""
    return {
        "metric": reporter._metric,
        "mode": reporter._mode,
        "metric_columns": reporter._metric_columns,
        "parameter_columns": reporter._parameter_columns,
        "max_rows": reporter._max_progress_rows,
        "max_column_length": reporter._max_column_length,
        "start_time": reporter._start_time,
        "total_samples": reporter._total_samples,
        "max_error_rows": reporter._max_error_rows,
    }


def progress_table(ordered: list, settings: dict, done: bool) -> tuple[list, list, int, str]:
    """Ray's trial table of `ordered` trials: rows, column names, and how many trials did not fit (and which)."""
    from ray.tune.progress_reporter import _get_progress_table_data  # lazy: Ray Tune takes seconds to import

    rows, columns, (overflow, overflow_str) = _get_progress_table_data(
        ordered,
        settings["metric_columns"],
        settings["parameter_columns"],
        None if done else settings["max_rows"],
        settings["metric"],
        settings["mode"],
        False,
        settings["max_column_length"],
    )
    return rows, columns, overflow, overflow_str


def time_passed_line(start_time: float, now: float) -> str:
    """Ray's "Current time: ... (running for ...)" line."""
    from ray.tune.progress_reporter import _time_passed_str  # lazy, as above

    return _time_passed_str(start_time, now)


def trial_errors(trials: list, max_rows: int | None) -> str:
    """Ray's table of the trials that failed, each with its error file."""
    from ray.tune.progress_reporter import _trial_errors_str  # lazy, as above

    return _trial_errors_str(trials, max_rows=max_rows)


def psql_table(rows: list, headers: list) -> str:
    """Rows as Ray's own table prints them (Ray's vendored tabulate, psql style)."""
    from ray._private.thirdparty.tabulate.tabulate import tabulate  # lazy, as above

    return tabulate(rows, headers=headers, tablefmt="psql", showindex=False)
