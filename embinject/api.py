"""The Python API, the one `python -m embinject.tune` runs on: `search(spec)` runs a search (`spec`: a search file's
path or the same content as a dict) and `load_search(folder)` reads a finished or interrupted one back; both give a
`SearchResult`. `import embinject` exposes them without importing this module (see `embinject/__init__.py`): Ray,
pandas and Optuna are imported when a search runs or a table is first read.

A search folder is read through the readers that check each file (`search_report.read_summary`,
`tune.folder.read_space_file`, `tracking.read_state_file`, `fsutil.read_json_object`): a damaged file raises one
`ConfigError` naming it, never a table read in part.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .errors import ConfigError
from .search_report import FIXED, read_curves, read_summary, trial_folder_row
from .space import SearchFile, load_search_spec
from .tracking import LEGACY_STATE_FILE, STATE_FILE, read_state_file, search_end
from .tune.driver.run import run_search
from .tune.driver.folder import SPACE_FILE, read_space_file
from .tune.driver.outcome import SearchOutcome
from .tune.driver.study import journal_path, study_storage

KEY = "load_search"  # how a damaged file's line begins
HINT = "it is what the search wrote; restore it, or run the search again"
METRICS = ("best_val_perplexity", "final_val_perplexity", "baseline_perplexity", "steps", "evaluations", "seconds")


@dataclass(frozen=True)
class Champion:
    """The search's champion: the best finished trial whose adapter is on disk (`adapter`: its copy, champion/)."""

    trial_id: str
    values: dict  # the searched keys' values, as the trial was trained with them
    metrics: dict  # best_val_perplexity (its kept adapter's, on every validation window), steps, seconds, ...
    adapter: Path | None


@dataclass(frozen=True, eq=False)
class SearchResult:
    """A search's results, read from its folder. `trials`, `curves`, `best` and `pareto` are read on first use (pandas
    is imported then); `load_search` reads them at once, so that a damaged folder is said there.

    - `trials`: one row per trial: `trial_id`, the searched values, the metrics (`best_val_perplexity`, ...), `status`
      (ok, error, diverged, cut, not_started; `interrupted` where the search stopped before the trial ended) and
      `seconds`.
    - `curves`: the validation curves, long: `trial_id`, `step`, `metric` (val_perplexity), `value`.
    - `best`: the champion, None where no trial finished (or the search has not).
    - `champion_uri`: `models:/NAME/VERSION` of the registered champion, or None.
    - `study_name` and `optuna_storage`: what `optuna.load_study(study_name=..., storage=...)` takes (None for a
      search begun before its study was kept in its folder).
    - `pareto`: a multi-objective search's undominated trials (rows of `trials`); None for one objective.
    - `outcome`: what `search` ended with (the lines the command prints come from it); None from `load_search`.
    """

    folder: Path
    searched: list[str]
    objectives: list[str]  # a multi-objective search's metrics, [] for one objective
    finished: bool  # its end was written (summary.csv); False for an interrupted search
    champion_uri: str | None
    study_name: str | None
    outcome: SearchOutcome | None = field(default=None, repr=False)

    @property
    def optuna_storage(self):
        return study_storage(self.folder) if self.study_name else None

    @cached_property
    def trials(self):
        import pandas as pd  # lazy: a search's command never reads its tables back

        if self.finished:
            read_summary(self.folder / "summary.csv", KEY, HINT, self.searched)  # the checks; pandas reads the types
            return pd.read_csv(self.folder / "summary.csv", dtype={"trial_id": str, "node_id": str, "status": str})
        columns = ["trial_id", *self.searched, *METRICS[:-1], "stopped_early", "status", "seconds"]
        return pd.DataFrame(_unfinished_rows(self.folder, self.searched), columns=columns)

    @cached_property
    def curves(self):
        import pandas as pd  # lazy, as in `trials`

        points = [(t, s, "val_perplexity", v) for t, curve in read_curves(self.folder).items() for s, v in curve]
        return pd.DataFrame(points, columns=["trial_id", "step", "metric", "value"])

    @cached_property
    def best(self) -> Champion | None:
        trial_id = search_end(self.folder).get("trial") if self.finished else None
        rows = self.trials[self.trials["trial_id"] == trial_id].to_dict("records") if trial_id else []
        if not rows:
            return None
        row = {k: _python(v) for k, v in rows[0].items()}
        adapter = self.folder / "champion"
        return Champion(
            trial_id,
            {k: row[k] for k in self.searched if row.get(k) is not None},
            {k: row[k] for k in (*METRICS, *self.objectives) if row.get(k) is not None},
            adapter if adapter.is_dir() else None,
        )

    @cached_property
    def pareto(self):
        if not self.objectives or "pareto" not in self.trials:
            return None
        return self.trials[self.trials["pareto"] == True].reset_index(drop=True)  # noqa: E712 - a column of booleans


def _python(value):
    """A pandas cell as plain Python: numbers and booleans unwrapped, a missing value None."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def _unfinished_rows(folder: Path, searched: list[str]) -> list[dict]:
    """An interrupted search's trials, from their folders (its summary.csv is written at its end): each with its values,
    its curve's last and best points, and `interrupted` where it had not ended when the search stopped."""
    rows = (trial_folder_row(d, searched, KEY, HINT) for d in sorted(folder.glob("trial_*")))
    return [row for row in rows if row is not None]


def _open(folder: Path, outcome: SearchOutcome | None = None) -> SearchResult:
    """A search folder's result: its recorded space, whether it finished, its study and its registered champion."""
    space_file, summary = folder / SPACE_FILE, folder / "summary.csv"
    if not folder.is_dir():
        raise ConfigError(
            f"{KEY}: no search folder at {folder}; pass a folder under tune.storage_path that a search made"
        )
    if not space_file.is_file() and not summary.is_file():
        raise ConfigError(f"{KEY}: {folder} is not an embinject search folder (no {SPACE_FILE} or summary.csv)")
    if space_file.is_file():
        identity = read_space_file(space_file, KEY, HINT)
        searched = [k for k, v in identity["search"].items() if not v.startswith("fixed ")]
        objectives = [o.get("metric") for o in identity["tune"].get("objectives") or [] if isinstance(o, dict)]
    else:  # a search begun before the space was recorded: its summary's own columns
        header = summary.read_text(encoding="utf-8", errors="replace").partition("\n")[0].split(",")
        searched, objectives = [c for c in header if c and c not in FIXED + ("pareto",)], []
    state = {}
    for file in (folder / STATE_FILE, folder / LEGACY_STATE_FILE):
        if file.is_file():
            state = read_state_file(file, KEY, HINT)
            break
    name, version = search_end(folder).get("register_as"), state.get("registered_version")
    journal = journal_path(folder)
    return SearchResult(
        folder,
        searched,
        objectives,
        summary.is_file(),
        f"models:/{name}/{version}" if name and version else None,
        folder.name if journal.is_file() and journal.stat().st_size else None,
        outcome,
    )


def load_search(folder: str | os.PathLike) -> SearchResult:
    """A finished or interrupted search's results from its folder (a relative path is taken from the current directory).
    Its tables are read here: a damaged file raises one `ConfigError` naming it."""
    result = _open(Path(folder).expanduser().resolve())
    result.trials, result.curves, result.best  # noqa: B018 - read now: a damaged folder is said here, not later
    return result


def search(
    spec: str | os.PathLike | dict,
    overrides: list[str] | dict | None = None,
    resume: bool = False,
    *,
    address: str | None = None,
    register: bool = True,
    promote: bool = False,
    verbose: int = 1,
) -> SearchResult:
    """Run a search: `spec` is a search file's path or its content as a dict; `overrides` are `--set` strings
    (`"tune.num_samples=4"`) or a dict of dotted keys to values; `resume` continues the newest interrupted search of
    its name. `address`: a Ray cluster (`auto`, HOST:PORT or ray://HOST:PORT); `register=False` registers nothing;
    `promote` moves the alias `champion` whether or not the new version beats its holder; `verbose`: 0 keeps Ray's
    trial table quiet. Bad input raises `ConfigError` (one line) before anything runs; an interrupted search returns
    with `finished` False and `outcome.interrupted` set; `resume` of a finished search raises
    `embinject.tune.driver.run.AlreadyFinished`."""
    loaded = load_search_spec(spec, overrides)
    if not register:
        loaded.mlflow.register_as = None
    return run(loaded, resume, address=address, promote=promote, verbose=verbose)


def run(
    loaded: SearchFile, resume: bool = False, *, address: str | None = None, promote: bool = False, verbose: int = 1
) -> SearchResult:
    """`search` of a search already loaded (`space.load_search_spec`), as the command has it once its checks are
    done."""
    outcome = run_search(loaded, address=address, resume=resume, verbose=verbose, promote=promote)
    return _open(outcome.experiment_dir, outcome)
