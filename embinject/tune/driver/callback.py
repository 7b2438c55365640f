"""The driver-side Ray Tune callback that forwards trial events (start, result, restart, end) to the
search's MLflow tracker, and the child runs' readable names."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ...tracking import TIME_SPLIT, WALL, SearchTracker, tracker_for


def short_key(key: str) -> str:
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
    parts += [f"{short_key(k)}={_format_value(config[k])}" for k in searched if k != "method" and k in config]
    return " ".join(parts + [f"[{trial_id}]"])


def time_split(result: dict, queued_at: float | None, received_at: float) -> dict:
    """Where a trial's seconds went up to this result (its last attempt): what its process measured (`spent_*`, see
    embinject.train.loop), completed with what only the driver sees: from Ray queuing the trial to its trainable's
    start (waiting for a place), and from this report's start to its arrival here (checkpoint and report). The trial's
    node and the driver may be different machines: a difference of their clocks is clipped at zero."""
    if "spent_steps" not in result:  # a diverged trial's last word, or a result from before this was measured
        return {}
    started = result.get("trainable_started_at", received_at)
    queued_at = started if queued_at is None else queued_at
    split = {key: max(0.0, float(result.get(f"spent_{key.removeprefix('seconds_')}", 0.0))) for key in TIME_SPLIT}
    split["seconds_waiting"] += max(0.0, started - queued_at)
    split["seconds_report"] += max(0.0, received_at - result.get("sent_at", received_at))
    split[WALL] = max(0.0, received_at - queued_at)
    return {k: round(v, 3) for k, v in split.items()}


def mlflow_callback(tracking_uri: str, experiment: str, exp_dir: Path, artifact_root: Path, searched: list[str]):
    """A Ray Tune callback (driver side) forwarding trial events to the search's `SearchTracker`. It
    holds only plain settings, so Ray can pickle it with the experiment state and rebuild it on --resume."""
    # lazy: Ray Tune takes seconds to import, and bad input or --dry-run is answered before it
    from ray.tune import Callback

    class MlflowCallback(Callback):
        def __init__(self):
            self.settings = (tracking_uri, experiment, str(exp_dir), str(artifact_root))
            self.searched = list(searched)
            self.queued: dict[str, float] = {}  # trial id -> when Ray queued it (this driver process; see time_split)
            self.known = 0  # Ray's trials seen so far: it appends the trials it creates

        @property
        def tracker(self) -> SearchTracker:
            uri, name, directory, root = self.settings
            return tracker_for(uri, name, Path(directory), Path(root))

        def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
            self.queued, self.known = {}, 0  # a resumed search's trials are queued anew, by this process
            self.tracker.proceeding()  # Ray restored its saved state and runs: a resumed search is RUNNING again

        def on_step_end(self, iteration, trials, **info):
            now = time.time()
            for trial in trials[self.known :]:
                self.queued.setdefault(trial.trial_id, now)
            self.known = len(trials)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.queued.setdefault(trial.trial_id, time.time())  # created and started within one step of Ray's loop
            config = dict(trial.config)
            self.tracker.trial_started(trial.trial_id, trial_run_name(config, self.searched, trial.trial_id), config)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            # in place: Ray writes the result (result.json, the trial's last result) after its callbacks have run
            result.update(time_split(result, self.queued.get(trial.trial_id), time.time()))
            self.tracker.trial_result(trial.trial_id, result)

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.queued[trial.trial_id] = time.time()  # queued again: its time split restarts with this attempt
            self.tracker.trial_restarted(trial.trial_id)  # its worker died; Ray restarts it from its last checkpoint

        def on_trial_complete(self, iteration, trials, trial, **info):
            last = trial.last_result or {}
            if last.get("diverged"):
                self.tracker.trial_finished(
                    trial.trial_id,
                    "FAILED",
                    {"failure_reason": "diverged", "error": last["diverged"], "steps": last.get("step", 0)},
                )
                return
            finished = bool(last.get("final"))
            self.tracker.trial_finished(
                trial.trial_id,
                "FINISHED",
                {
                    "stopped_early": not finished,
                    "stopped_by": "" if finished else "scheduler",
                    "steps": last.get("step", 0),
                },
            )

        def on_trial_error(self, iteration, trials, trial, **info):
            self.tracker.trial_finished(
                trial.trial_id, "FAILED", {"failure_reason": "error", "error_file": str(trial.error_file or "")}
            )

    return MlflowCallback()
