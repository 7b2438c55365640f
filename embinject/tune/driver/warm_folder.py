"""A finished search's folder read back for a warm start (see .warm): its state, its recorded space and summary.csv,
each through one reader that refuses a damaged file in one line naming it, and each trial's validation curve from
its result.json. A source is read whole or not at all."""

from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError
from ...search_report import finite_number, read_summary, trial_curve
from ...tracking import STATE_FILE, flatten, read_state_file, readable
from .folder import SPACE_FILE, read_space_file


def count_trials(n: int) -> str:
    return f"{n} trial{'s' * (n != 1)}"


def from_folder(key: str, path: Path) -> dict:
    if not path.is_dir():
        raise ConfigError(
            f"{key}: no search folder at {path}; pass a finished search's folder (under tune.storage_path), "
            "runs:/PARENT_RUN_ID or experiment:NAME"
        )
    if not (path / "summary.csv").is_file() or not (path / SPACE_FILE).is_file():
        raise ConfigError(
            f"{key}: {path} is not a finished embinject search (no summary.csv or {SPACE_FILE}); finish it "
            "with --resume, or name another"
        )
    state = {}
    if (path / STATE_FILE).is_file():
        state = read_state_file(
            path / STATE_FILE,
            key,
            "restore it, or name the search by its MLflow parent run (runs:/PARENT_RUN_ID), or another search",
        )
    parent = state.get("parent")
    hint = (
        f"restore it, or name the search by its MLflow parent run (runs:/{parent}, with its tracking_uri)"
        if parent
        else "restore it, or name another search"
    )
    identity = read_space_file(path / SPACE_FILE, key, hint)
    searched = [k for k, v in identity["search"].items() if not v.startswith("fixed ")]
    trials = []
    for row in read_summary(path / "summary.csv", key, hint, searched):
        history = trial_curve(path / f"trial_{row['trial_id']}")
        final = finite_number(row["final_val_perplexity"])
        if not history and final is not None:  # its trial folder is gone: the last point summary.csv kept
            history = [(int(row["steps"]), final)]
        stopped = row["status"] == "ok" and row["stopped_early"] == "True"
        trials.append(
            {
                "trial_id": row["trial_id"],
                "status": "stopped" if stopped else row["status"],
                "params": {k: row[k] for k in searched if row[k] != ""},
                "history": history,
                "best": finite_number(row["best_val_perplexity"]),
                "baseline": finite_number(row["baseline_perplexity"]),
            }
        )
    return {
        "label": path.name,
        "parent_run_id": parent,
        "folder": str(path.resolve()),
        "setup": {k: readable(v) for k, v in flatten({"base": identity["base"], "tune": identity["tune"]}).items()},
        "searched": searched,
        "trials": trials,
    }
