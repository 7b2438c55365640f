"""What a search prints while it runs: one line per warm-up stage with its seconds (`stage`), then the live trial
table. The table names the search folder (Ray would name its own session folder) and shows numbers to 4 significant
digits. In a terminal it is printed again only when something in it changed, at most every 15 s; written to a log
(output not a terminal) it is printed only when a trial starts or ends (at most every 15 s) and otherwise every
5 minutes, so that a long search's log stays readable."""

from __future__ import annotations

import contextlib
import math
import numbers
import re
import sys
import time
from pathlib import Path

from ...arguments import seconds_since_first_line
from .internals import progress_table, psql_table, reporter_settings, time_passed_line, trial_errors

REDRAW_S = 15  # the least time between two tables, in a terminal and in a log
LOG_QUIET_S = 300  # a log's table when no trial has started or ended meanwhile
DIGITS = 4  # significant digits of the numbers the table shows
# a decimal number standing alone in Ray's lines (the scheduler's rungs): not part of a name, a path or an address
_DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?:e[-+]?\d+)?(?![\w.])")


def stage_line(what: str, seconds: float) -> None:
    print(f"warm-up: {what} in {seconds:.1f} s", flush=True)


@contextlib.contextmanager
def stage(what: str):
    """A warm-up stage of a search's start: one line once it is done, with its seconds (none if it fails: the error
    that follows says why)."""
    since = time.perf_counter()
    yield
    stage_line(what, time.perf_counter() - since)


def imports_line() -> None:
    """The stage between the command's first line and the warm-up: imports (torch, Ray, MLflow) and the checks of the
    search file and of the places it writes. None where the command printed no first line (`main` called in-process)."""
    seconds = seconds_since_first_line()
    if seconds is not None:
        stage_line("torch, Ray and MLflow loaded, the search file and its places checked", seconds)


def rounded(value):
    """A real number to DIGITS significant digits; an integer, a string or None as it is."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and math.isfinite(value):
        return float(f"{value:.{DIGITS}g}")
    return value


def rounded_line(text: str) -> str:
    return _DECIMAL.sub(lambda m: f"{float(m[0]):.{DIGITS}g}", text)


def trial_table(
    parameter_columns: dict,
    metric_columns: dict,
    max_column_length: int,
    folder: Path | None = None,
    interactive: bool | None = None,
):
    """Ray's reporter, printing `status` instead of Ray's text. `folder`: the search folder its header names."""
    from ray.tune import CLIReporter  # lazy: only a search that runs needs Ray

    interactive = sys.stdout.isatty() if interactive is None else interactive

    class TrialTable(CLIReporter):
        def __init__(self):
            # sorted here, not by Ray: its sort fails on a finished trial without a value (a time budget can end a
            # trial before its first evaluation), which ended the search with a traceback
            super().__init__(
                parameter_columns=parameter_columns,
                metric_columns=metric_columns,
                max_report_frequency=REDRAW_S,
                sort_by_metric=False,
                max_column_length=max_column_length,
            )
            self._shown: tuple = ()
            self._printed_at = 0.0
            self.sort_metric: str | None = None
            self.sort_mode: str | None = None

        def set_search_properties(self, metric: str | None, mode: str | None) -> bool:
            # Ray hands the search's metric and mode here; kept for the sort, as Ray keeps them only privately
            self.sort_metric, self.sort_mode = metric or self.sort_metric, mode or self.sort_mode
            return super().set_search_properties(metric, mode)

        def report(self, trials, done: bool, *sys_info):
            self._print(status(self, trials, done, sys_info, folder))

        def should_report(self, trials, done: bool = False) -> bool:
            since = time.time() - self._printed_at
            if not done and since < REDRAW_S:
                return False
            # a terminal: any value the table shows (as rounded); a log: which trials run and which ended
            shown = (
                shown_values(trials, list(metric_columns))
                if interactive
                else tuple(sorted((t.trial_id, t.status) for t in trials))
            )
            if done or shown != self._shown or (not interactive and since >= LOG_QUIET_S):
                self._shown, self._printed_at = shown, time.time()
                return True
            return False

    return TrialTable()


def shown_values(trials: list, metrics: list[str]) -> tuple:
    """What a terminal's table shows of each trial: its status and its metrics as rounded."""
    return tuple(
        sorted((t.trial_id, t.status, tuple(rounded((t.last_result or {}).get(m)) for m in metrics)) for t in trials)
    )


def status(reporter, trials: list, done: bool, sys_info: tuple, folder: Path | None) -> str:
    """Ray's status text (its clock, the scheduler's rungs, the resources in use, the best trial, the trial table and
    its failures), with the search folder in place of Ray's session folder and numbers to DIGITS significant digits."""
    r = reporter_settings(reporter)
    ordered = finished_last_by_metric(trials, r["metric"], r["mode"])
    rows, columns, overflow, overflow_str = progress_table(ordered, r, done)
    counts = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    lines = [
        "== Status ==",
        time_passed_line(r["start_time"], time.time()),
        *(rounded_line(line) for info in sys_info for line in str(info).splitlines()),
    ]
    best = best_trial_line(ordered, r["metric"], r["mode"], r["parameter_columns"])
    lines += [best] if best else []
    lines += [f"Search folder: {folder}"] if folder else []
    lines.append(
        f"Number of trials: {len(trials)}"
        + (f"/{r['total_samples']}" if r["total_samples"] else "")
        + " ("
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + ")"
    )
    if rows:
        lines.append(psql_table([[rounded(cell) for cell in row] for row in rows], columns))
    if overflow:
        lines.append(f"... {overflow} more trials not shown ({overflow_str})")
    # Ray's table of the trials that failed (also those that then succeeded on a retry): each one's error file
    failed = any(t.run_metadata.num_failures for t in trials)
    errors = trial_errors(trials, None if done else r["max_error_rows"]) if failed else ""
    return "\n".join(lines + ([errors] if errors else [])) + "\n"


def best_trial_line(ordered: list, metric: str | None, mode: str | None, parameter_columns: dict) -> str | None:
    """The best trial so far by `metric`, with its searched values, rounded (Ray prints every digit)."""
    scored = [t for t in ordered if _value(t, metric) is not None]
    if not scored or mode not in ("min", "max"):
        return None
    best = (max if mode == "max" else min)(scored, key=lambda t: _value(t, metric))
    params = {short: rounded(best.config.get(key)) for key, short in parameter_columns.items() if key in best.config}
    return f"Current best trial: {best.trial_id}, {metric} {rounded(_value(best, metric))}" + (
        " (" + ", ".join(f"{k} {v}" for k, v in params.items()) + ")" if params else ""
    )


def _value(trial, metric: str | None):
    value = (trial.last_result or {}).get(metric) if metric else None
    return value if isinstance(value, numbers.Real) and not math.isnan(value) else None


def finished_last_by_metric(trials: list, metric: str | None, mode: str | None) -> list:
    """The trials in their order, the finished ones last and best first, those without a value after them."""

    def key(trial) -> tuple:
        value = trial.last_result.get(metric) if metric else None
        missing = not isinstance(value, (int, float)) or math.isnan(value)
        return (missing, 0.0 if missing else -value if mode == "max" else value)

    finished = [t for t in trials if t.status == "TERMINATED"]
    return [t for t in trials if t.status != "TERMINATED"] + sorted(finished, key=key)
