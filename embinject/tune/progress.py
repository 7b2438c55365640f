"""The live trial table. In a terminal it is Ray's, redrawn every 15 s; written to a log (output not a terminal) it
is printed only when a trial starts or ends (at most every 15 s) and otherwise every 5 minutes, so that a long
search's log stays readable."""
from __future__ import annotations

import math
import sys
import time

REDRAW_S = 15  # a terminal's table, and the least time between two tables in a log
LOG_QUIET_S = 300  # a log's table when no trial has started or ended meanwhile


def trial_table(parameter_columns: dict, metric_columns: dict, max_column_length: int, interactive: bool | None = None):
    from ray import tune  # lazy: only a search that runs needs Ray

    interactive = sys.stdout.isatty() if interactive is None else interactive

    class TrialTable(tune.CLIReporter):
        def __init__(self):
            # sorted here, not by Ray: its sort fails on a finished trial without a value (a time budget can end a
            # trial before its first evaluation), which ended the search with a traceback
            super().__init__(parameter_columns=parameter_columns, metric_columns=metric_columns,
                             max_report_frequency=REDRAW_S, sort_by_metric=False, max_column_length=max_column_length)
            self._statuses: tuple = ()
            self._printed_at = 0.0
            self.sort_metric: str | None = None
            self.sort_mode: str | None = None

        def set_search_properties(self, metric: str | None, mode: str | None) -> bool:
            # Ray hands the search's metric and mode here; kept for the sort, as Ray keeps them only privately
            self.sort_metric, self.sort_mode = metric or self.sort_metric, mode or self.sort_mode
            return super().set_search_properties(metric, mode)

        def report(self, trials, done: bool, *sys_info):
            super().report(finished_last_by_metric(trials, self.sort_metric, self.sort_mode), done, *sys_info)

        def should_report(self, trials, done: bool = False) -> bool:
            if interactive:
                return super().should_report(trials, done)
            statuses = tuple(sorted((t.trial_id, t.status) for t in trials))
            since = time.time() - self._printed_at
            if done or (statuses != self._statuses and since >= REDRAW_S) or since >= LOG_QUIET_S:
                self._statuses, self._printed_at = statuses, time.time()
                return True
            return False

    return TrialTable()


def finished_last_by_metric(trials: list, metric: str | None, mode: str | None) -> list:
    """The trials in their order, the finished ones last and best first, those without a value after them."""
    def key(trial) -> tuple:
        value = trial.last_result.get(metric) if metric else None
        missing = not isinstance(value, (int, float)) or math.isnan(value)
        return (missing, 0.0 if missing else -value if mode == "max" else value)

    finished = [t for t in trials if t.status == "TERMINATED"]
    return [t for t in trials if t.status != "TERMINATED"] + sorted(finished, key=key)
