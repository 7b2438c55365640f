"""What a search records, in the form MLflow shows it: parameter values as people write them, where a
run came from (command, user, git commit), the training data as an MLflow dataset, and each report's
point on the validation curve."""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

# Where a trial's seconds went (its last attempt, from Ray queuing it to its last report reaching the driver): the
# columns of summary.csv, metrics of its MLflow run, and the rows of `embinject report`'s time table; seconds_wall is
# the trial's whole time, so what the categories leave out of it is untracked.
TIME_SPLIT = {
    "seconds_waiting": "waiting for a place",
    "seconds_setup": "setup (data, encoder inputs, frozen baseline, method)",
    "seconds_steps": "training steps (solo or packed)",
    "seconds_rendezvous": "waiting at the pack's rendezvous",
    "seconds_eval": "evaluation",
    "seconds_report": "checkpoint and report",
}
WALL = "seconds_wall"
# What MLflow 3 refuses in a logged model's name (mlflow.utils.validation._validate_logged_model_name; a test compares)
LOGGED_MODEL_NAME_REFUSES = ("/", ":", ".", "%", '"', "'")


def logged_model_name(search: str, rank: int, trial_id: str) -> str:
    """A best trial's logged model's name, unique in its experiment and telling at a glance which it is:
    `<search>-rank<rank>-<trial id>`, each character MLflow refuses in the search's name as `-`."""
    return "".join("-" if c in LOGGED_MODEL_NAME_REFUSES else c for c in f"{search}-rank{rank}-{trial_id}")


def readable(value) -> str:
    """A parameter value as people write it: lists and mappings as JSON, not Python reprs."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def source_tags(command: str) -> dict:
    """Where a run came from, in MLflow's own tag names: command, user, git commit (when there is one)."""
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": command[:5000]}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except Exception:  # no user name in containers without a passwd entry
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode == 0 and commit.stdout.strip():
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def dataset_record(cfg) -> dict:
    """The training data as MLflow describes a dataset: a name, a digest that changes with its content and
    the settings that cut it into windows, and where it came from."""
    path = cfg.data.path
    local = Path(path)
    h = hashlib.sha256(json.dumps(dataclasses.asdict(cfg.data), sort_keys=True, default=str).encode())
    if path.startswith("builtin:"):
        kind, name = "builtin", path.split(":", 1)[1]
    elif local.exists():
        kind, name = "local", local.name
        for f in sorted(local.rglob("*")) if local.is_dir() else [local]:
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(local) if local.is_dir() else f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        kind, name = "hf", path
    return {"name": name, "digest": h.hexdigest()[:8], "source_type": kind, "source": path}


def champion_identity(cfg, metric: str, mode: str) -> dict:
    """What a champion's validation result depends on besides its adapter, as tags of its registered version: the frozen
    model, the validation data (`dataset_record`'s digest: its source, content and windows) and which of its tokens are
    scored, and the metric with the direction that is better. Two champions are compared only where all agree."""
    data = dataset_record(cfg)
    scored = (
        "targets"
        if cfg.data.target_template is not None
        else f"after the first {cfg.adapter.context_tokens}"
        if cfg.adapter.embed_source == "context"
        else "all"
    )
    return {
        "model": cfg.model,
        "data": data["source"],
        "data_digest": data["digest"],
        "scored_tokens": scored,
        "metric": metric,
        "mode": mode,
    }


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def curve_value(report: dict):
    """A report's point on the validation curve. A run's final report gives as `val_perplexity` its kept adapter
    scored on every window (what the searcher and the summary rank), and that evaluation's score on the subset
    the earlier points used as `val_perplexity_subset`: the curve takes the latter, so it stays on one set."""
    subset = report.get("val_perplexity_subset")
    return subset if subset is not None else report.get("val_perplexity")


def iso_time(epoch_seconds: float) -> str:
    """A timestamp tag: ISO 8601 in UTC with milliseconds (readable, and exact enough to time a start-up)."""
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc).isoformat(timespec="milliseconds")


def now_ms() -> int:
    return int(time.time() * 1000)
