"""A finished search's folder read back for a warm start (see .warm): its state, its recorded space and summary.csv,
each through one reader that refuses a damaged file in one line naming it, and each trial's validation curve from
its result.json. A source is read whole or not at all."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ..errors import ConfigError
from ..fsutil import damaged
from ..tracking import STATE_FILE, curve_value, flatten, read_state_file, readable
from .folder import SPACE_FILE, read_space_file

# What results.summarize writes for every trial, besides one column per searched key.
SUMMARY_COLUMNS = ("trial_id", "final_val_perplexity", "best_val_perplexity", "baseline_perplexity", "steps",
                   "stopped_early", "status")
SUMMARY_STATUSES = ("ok", "error", "diverged", "cut", "not_started")


def count_trials(n: int) -> str:
    return f"{n} trial{'s' * (n != 1)}"


def _float(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _history(trial_dir: Path) -> list[tuple[int, float]]:
    """A trial's validation curve from Ray Tune's result.json (a line cut by a kill, or not text, is left out)."""
    points = []
    file = trial_dir / "result.json"
    for line in file.read_text(errors="replace").splitlines() if file.is_file() else []:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        value = _float(curve_value(r))
        if value is not None and "step" in r:
            points.append((int(r["step"]), value))
    return points


def _summary_problem(header: list[str], rows: list[list[str]], searched: list[str], reported: set[str]) -> str | None:
    """What makes summary.csv's table other than what results.summarize wrote, or None."""
    if not header:
        return "empty"
    missing = [c for c in (*SUMMARY_COLUMNS, *searched) if c not in header]
    if missing:
        return f"its header lacks {', '.join(missing)}: renamed or overwritten"
    if not rows:
        return "a header and no trial rows"
    for i, cells in enumerate(rows, 1):
        if len(cells) != len(header):
            return f"trial row {i} has {len(cells)} of {len(header)} fields: cut or edited"
        row = dict(zip(header, cells))
        numbers = [row[c] for c in ("final_val_perplexity", "best_val_perplexity", "baseline_perplexity") if row[c]]
        if (not row["trial_id"] or row["status"] not in SUMMARY_STATUSES or not row["steps"].isdigit()
                or row["stopped_early"] not in ("True", "False") or not all(_numeric(v) for v in numbers)):
            return (f"trial row {i} is not a row embinject writes (trial_id {row['trial_id']!r}, "
                    f"status {row['status']!r})")
    lost = sorted(reported - {cells[header.index("trial_id")] for cells in rows})
    if lost:
        return (f"it lists {count_trials(len(rows))}, but {len(lost)} more reported results in this folder "
                f"(trial_{', trial_'.join(lost[:3])}): rows were lost")
    return None


def read_summary(file: Path, key: str, hint: str, searched: list[str]) -> list[dict]:
    """summary.csv's rows, each as results.summarize wrote it; one ConfigError naming the file when it is empty, not
    text, cut (mid-row, or rows lost: a trial folder with results has no row) or overwritten. A source that lost
    trials is refused rather than read in part: what it would inform TPE of is not that search."""
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise damaged(key, file, "not UTF-8 text", hint) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header, *rows = list(reader) or [[]]
    except csv.Error as exc:
        raise damaged(key, file, f"not CSV at line {reader.line_num}: {exc}", hint) from None
    if text.strip() and not text.endswith("\n"):
        raise damaged(key, file, f"cut mid-row: its last line (trial row {len(rows)}) has no line end", hint)
    reported = {d.name.removeprefix("trial_") for d in file.parent.glob("trial_*")
                if (d / "result.json").is_file() and (d / "result.json").stat().st_size}
    problem = _summary_problem(header, rows, searched, reported)
    if problem:
        raise damaged(key, file, problem, hint)
    return [dict(zip(header, cells)) for cells in rows]


def from_folder(key: str, path: Path) -> dict:
    if not path.is_dir():
        raise ConfigError(f"{key}: no search folder at {path}; pass a finished search's folder (under tune.storage_path), "
                          "runs:/PARENT_RUN_ID or experiment:NAME")
    if not (path / "summary.csv").is_file() or not (path / SPACE_FILE).is_file():
        raise ConfigError(f"{key}: {path} is not a finished embinject search (no summary.csv or {SPACE_FILE}); finish it "
                          "with --resume, or name another")
    state = {}
    if (path / STATE_FILE).is_file():
        state = read_state_file(path / STATE_FILE, key, "restore it, or name the search by its MLflow parent run "
                                "(runs:/PARENT_RUN_ID), or another search")
    parent = state.get("parent")
    hint = (f"restore it, or name the search by its MLflow parent run (runs:/{parent}, with its tracking_uri)" if parent
            else "restore it, or name another search")
    identity = read_space_file(path / SPACE_FILE, key, hint)
    searched = [k for k, v in identity["search"].items() if not v.startswith("fixed ")]
    trials = []
    for row in read_summary(path / "summary.csv", key, hint, searched):
        history = _history(path / f"trial_{row['trial_id']}")
        final = _float(row["final_val_perplexity"])
        if not history and final is not None:  # its trial folder is gone: the last point summary.csv kept
            history = [(int(row["steps"]), final)]
        stopped = row["status"] == "ok" and row["stopped_early"] == "True"
        trials.append({"trial_id": row["trial_id"], "status": "stopped" if stopped else row["status"],
                       "params": {k: row[k] for k in searched if row[k] != ""},
                       "history": history, "best": _float(row["best_val_perplexity"]),
                       "baseline": _float(row["baseline_perplexity"])})
    return {"label": path.name, "parent_run_id": parent, "folder": str(path.resolve()),
            "setup": {k: readable(v) for k, v in flatten({"base": identity["base"], "tune": identity["tune"]}).items()},
            "searched": searched, "trials": trials}
