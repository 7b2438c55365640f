"""What a search call ends with, typed: `SearchOutcome` (the driver returns it; the command prints it;
`embinject.search` reads it), its trial counts and its registration. Nothing here imports Ray or MLflow."""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TrialCounts:
    """How a search's trials ended, as summary.csv's status and stopped_early columns count them."""

    trials: int = 0
    stopped_early: int = 0
    failed: int = 0
    diverged: int = 0
    cut: int = 0  # ended mid-training by the search's time budget
    lost: int = 0  # started just before the search was killed, forgotten by Ray on --resume (another ran instead)

    @classmethod
    def of(cls, rows: list[dict]) -> TrialCounts:
        status = [r["status"] for r in rows]
        return cls(
            len(rows),
            sum(bool(r["stopped_early"]) for r in rows),
            status.count("error"),
            status.count("diverged"),
            status.count("cut"),
            status.count("lost_at_kill"),
        )


@dataclass(frozen=True)
class Registration:
    """The champion in MLflow's registry: `version` of `name`, or why not (`refused`: MLflow's answer)."""

    name: str | None = None  # mlflow.register_as; None: the search registers nothing
    version: str | None = None
    champion_moved: bool = True  # the version took the alias `champion` (`line` says why not)
    line: str | None = None  # the line that says where the alias went, where it did not simply move
    refused: str | None = None

    @property
    def model_uri(self) -> str | None:
        """`models:/NAME/VERSION` of the registered champion, or None where nothing was registered."""
        return f"models:/{self.name}/{self.version}" if self.name and self.version else None


@dataclass(frozen=True)
class SearchOutcome:
    """A search call's end. `interrupted`: the signal that stopped it (nothing else is filled then but the folder and
    MLflow's state); otherwise the best trial (`best`: its summary.csv row, None where no trial finished), the champion
    adapter on disk, its registration, and what the closing lines say."""

    experiment_dir: Path
    tracking_uri: str
    experiment: str  # MLflow's experiment
    parent_run_id: str | None  # None until MLflow received the search's start
    kept_records: int  # MLflow records kept in the folder's journal for a --resume to send
    interrupted: signal.Signals | None = None
    best: dict | None = None
    champion: Path | None = None  # the champion adapter's folder (champion/)
    champion_model: Path | None = None  # the same as an MLflow model (champion_model/)
    top_models: list[str] = field(default_factory=list)  # trial ids whose adapters were logged as MLflow models
    registration: Registration = Registration()
    pareto_front: list[dict] = field(default_factory=list)  # multi-objective searches: the undominated trials
    counts: TrialCounts = TrialCounts()
    warm_cache_seconds: float = 0.0
    search_seconds: float = 0.0
    total_steps: int = 0
    budget_note: str | None = None  # the line for a search its time budget ended
    warm_note: str | None = None  # the line for an earlier search (warm start) that keeps a better adapter
    runs_url: str | None = None  # MLflow's runs table of the search
    optuna_study: str | None = None  # None for a search begun before its study was kept on disk
    optuna_journal: Path | None = None

    def with_(self, **changes) -> SearchOutcome:
        return dataclasses.replace(self, **changes)
