"""MLflow records of a search: one parent run, one nested child run per trial, the champion
adapter as an artifact and a registered model version with the alias `champion`.

Only the search driver writes (a single writer), so a SQLite store is never written by many
trial processes at once. The run ids are kept in a small JSON file beside the search so that a
resumed search continues the same runs instead of starting new ones.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

METRICS = ("val_perplexity", "best_val_perplexity", "train_loss", "epoch", "tokens_per_second", "baseline_perplexity",
           "train_seconds", "eval_seconds", "startup_seconds", "trainable_started_at")


def default_tracking_uri(storage_dir: Path) -> str:
    return f"sqlite:///{Path(storage_dir).resolve() / 'mlflow.db'}"


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class SearchTracker:
    def __init__(self, tracking_uri: str, experiment: str, state_file: Path, artifact_root: Path | None = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(tracking_uri)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = Path(artifact_root).resolve().as_uri() if artifact_root else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        self.experiment = experiment
        self.state_file = Path(state_file)
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {"parent": None, "children": {}}

    def _save(self) -> None:
        self.state_file.write_text(json.dumps(self.state, indent=1))

    @property
    def parent_id(self) -> str:
        return self.state["parent"]

    def start(self, run_name: str, params: dict, search_file: Path, tags: dict) -> str:
        from mlflow.entities import Param

        if self.state["parent"]:
            self.client.set_tag(self.parent_id, "resumed_at", time.strftime("%Y-%m-%d %H:%M:%S"))
            self.client.update_run(self.parent_id, status="RUNNING")
            return self.parent_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={"embinject.kind": "search", **tags})
        self.state["parent"] = run.info.run_id
        self._save()
        flat = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(flat), 100):
            self.client.log_batch(self.parent_id, params=flat[i : i + 100])
        self.client.log_artifact(self.parent_id, str(search_file), "search")
        return self.parent_id

    def trial_started(self, trial_id: str, trial_name: str, params: dict) -> None:
        from mlflow.entities import Param

        if trial_id in self.state["children"]:
            self.client.update_run(self.state["children"][trial_id], status="RUNNING")  # resumed trial
            return
        run = self.client.create_run(self.experiment_id, run_name=trial_name,
                                     tags={"mlflow.parentRunId": self.parent_id, "trial_id": trial_id,
                                           "embinject.kind": "trial"})
        self.state["children"][trial_id] = run.info.run_id
        self._save()
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def trial_result(self, trial_id: str, metrics: dict) -> None:
        from mlflow.entities import Metric

        run_id = self.state["children"].get(trial_id)
        if run_id is None:
            return
        step, now = int(metrics.get("step", 0)), int(time.time() * 1000)
        batch = [Metric(k, float(metrics[k]), now, step) for k in METRICS
                 if isinstance(metrics.get(k), (int, float)) and math.isfinite(metrics[k])]
        self.client.log_batch(run_id, metrics=batch)
        if metrics.get("node_id"):
            self.client.set_tag(run_id, "node_id", metrics["node_id"])

    def trial_finished(self, trial_id: str, status: str, tags: dict) -> None:
        run_id = self.state["children"].get(trial_id)
        if run_id is None:
            return
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))
        self.client.set_terminated(run_id, status=status)

    def finish(self, metrics: dict, artifacts: list[Path], champion_dir: Path | None, register_as: str | None,
               status: str = "FINISHED") -> str | None:
        """Log the search's outcome; returns the registered version (or None)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                                                      if isinstance(v, (int, float)) and math.isfinite(v)])
        for path in artifacts:
            self.client.log_artifact(self.parent_id, str(path), "results")
        version = None
        if champion_dir is not None:
            self.client.log_artifacts(self.parent_id, str(champion_dir), "champion_adapter")
            if register_as:
                version = self.register(register_as)
        self.client.set_terminated(self.parent_id, status=status)
        return version

    def register(self, name: str) -> str:
        """A new version of `name` pointing at the parent run's champion adapter, aliased `champion`."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, description="embinject adapters (safetensors + embinject.json)")
        except MlflowException:
            pass  # already registered: add a version
        source = self.client.get_run(self.parent_id).info.artifact_uri.rstrip("/") + "/champion_adapter"
        mv = self.client.create_model_version(name, source=source, run_id=self.parent_id)
        self.client.set_registered_model_alias(name, "champion", mv.version)
        return str(mv.version)
