"""The driver-side Ray Tune callback that forwards trial events (start, result, restart, end) to the
search's MLflow tracker, and the child runs' readable names."""
from __future__ import annotations

import json
from pathlib import Path

from ..tracking import SearchTracker, tracker_for


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


def mlflow_callback(tracking_uri: str, experiment: str, exp_dir: Path, artifact_root: Path, searched: list[str]):
    """A Ray Tune callback (driver side) forwarding trial events to the search's `SearchTracker`. It
    holds only plain settings, so Ray can pickle it with the experiment state and rebuild it on --resume."""
    from ray.tune import Callback  # lazy: Ray Tune takes seconds to import, and bad input or --dry-run is answered before it

    class MlflowCallback(Callback):
        def __init__(self):
            self.settings = (tracking_uri, experiment, str(exp_dir), str(artifact_root))
            self.searched = list(searched)

        @property
        def tracker(self) -> SearchTracker:
            uri, name, directory, root = self.settings
            return tracker_for(uri, name, Path(directory), Path(root))

        def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
            self.tracker.proceeding()  # Ray restored its saved state and runs: a resumed search is RUNNING again

        def on_trial_start(self, iteration, trials, trial, **info):
            config = dict(trial.config)
            self.tracker.trial_started(trial.trial_id, trial_run_name(config, self.searched, trial.trial_id), config)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.tracker.trial_result(trial.trial_id, result)

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.tracker.trial_restarted(trial.trial_id)  # its worker died; Ray restarts it from its last checkpoint

        def on_trial_complete(self, iteration, trials, trial, **info):
            last = trial.last_result or {}
            if last.get("diverged"):
                self.tracker.trial_finished(trial.trial_id, "FAILED", {
                    "failure_reason": "diverged", "error": last["diverged"], "steps": last.get("step", 0)})
                return
            finished = bool(last.get("final"))
            self.tracker.trial_finished(trial.trial_id, "FINISHED", {
                "stopped_early": not finished, "stopped_by": "" if finished else "scheduler", "steps": last.get("step", 0)})

        def on_trial_error(self, iteration, trials, trial, **info):
            self.tracker.trial_finished(trial.trial_id, "FAILED", {
                "failure_reason": "error", "error_file": str(trial.error_file or "")})

    return MlflowCallback()
