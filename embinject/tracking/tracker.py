"""The MLflow records of a search: one parent run, one nested child run per trial, the champion
adapter as an artifact and a registered model version with the alias `champion`.

Only the search driver writes (a single writer), so a SQLite store is never written by many
trial processes at once. Every record goes first to a journal beside the search
(`mlflow_journal.jsonl`) and is then applied to MLflow in order; what MLflow has received is
counted in a small state file. So a tracking server that goes away mid-search neither stops nor
stalls the search: records wait in the journal and are sent when the server is back (on a later
record, at the end, or on `--resume`), with their original timestamps. A resumed search continues
the same runs instead of starting new ones.

MLflow is imported where it is used, never before `quiet_mlflow` (see store.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

from ..errors import disk_full, first_line, warn
from ..fsutil import atomic_write_text, damaged, read_json_object
from .apply import MlflowApplier
from .store import registry_uri_for
from .records import TIME_SPLIT, WALL, iso_time, now_ms, curve_value, flatten, readable

# a point per evaluation; pack_size: trials in the last packed step (1: alone), eval_pack_size: in this evaluation's
# packed passes; the time split: so far
METRICS = (
    "val_perplexity",
    "best_val_perplexity",
    "train_loss",
    "epoch",
    "tokens_per_second",
    "train_seconds",
    "eval_seconds",
    "pack_size",
    "eval_pack_size",
    *TIME_SPLIT,
    WALL,
)
CONSTANTS = ("baseline_perplexity", "startup_seconds")  # the same at every evaluation: logged once per trial
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3's UI opens the runs table, not GenAI
# Not *.json: Ray Tune's restore copies every top-level *.json of the search folder into its staging folder and
# syncs it back, which kept reverting this file to its copy from resume time.
STATE_FILE = "embinject_search.state"
LEGACY_STATE_FILE = "embinject_search.json"  # what searches started before that change wrote
JOURNAL_FILE = "mlflow_journal.jsonl"
RETRY_AFTER_S = 30.0  # while the server is away, try again at most this often (records keep queueing)
# A state file is read only to continue a search (a new one has none): what to do when it is damaged
RESUME_HINT = (
    "restore it (it holds the search's MLflow run ids and how many of its records MLflow received), "
    "or start a new search without --resume"
)


def read_state_file(file: Path, key: str, hint: str) -> dict:
    """A search's state file, or a ConfigError naming `key` and the file when it is not what a tracker saved."""
    state = read_json_object(file, key, hint)
    if not isinstance(state.get("parent"), (str, type(None))) or not isinstance(state.get("children", {}), dict):
        raise damaged(key, file, "not the search state embinject writes", hint)
    return state


_TRACKERS: dict[str, "SearchTracker"] = {}


def tracker_for(
    tracking_uri: str, experiment: str, exp_dir: Path, artifact_root: Path | None = None
) -> "SearchTracker":
    """One tracker per search and process: the driver and its Ray callback share it (and its journal)."""
    key = str(Path(exp_dir).resolve())
    if key not in _TRACKERS:
        _TRACKERS[key] = SearchTracker(tracking_uri, experiment, Path(exp_dir), artifact_root)
    return _TRACKERS[key]


def _journal(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill or a full disk mid-write: that record was never complete, later ones are
    return records


def search_end(exp_dir: Path) -> dict:
    """A finished search's end as its journal keeps it, whether or not MLflow received it: its metrics (search_seconds,
    trials, ...), its champion's trial (`trial`) and the registered model's name (`register_as`); {} for a search that
    has not finished."""
    ends = [
        r
        for r in _journal(Path(exp_dir) / JOURNAL_FILE)
        if r.get("op") == "search_end" and r.get("status") == "FINISHED"
    ]
    return ends[-1] if ends else {}


def search_metrics(exp_dir: Path) -> dict:
    """The metrics a finished search recorded for its parent run (`search_end`); {} for a search that has not
    finished."""
    return search_end(exp_dir).get("metrics", {})


def _last_line_cut(path: Path) -> bool:
    """Whether a file's last line lacks its newline (a write cut by a kill or a full disk)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except OSError:  # no file, or an empty one
        return False


class SearchTracker(MlflowApplier):
    def __init__(self, tracking_uri: str, experiment: str, exp_dir: Path, artifact_root: Path | None = None):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.artifact_root = artifact_root
        self.state_file = Path(exp_dir) / STATE_FILE
        # The key of this search's parent run in MLflow: its folder, which no other search shares.
        self.search_key = hashlib.sha256(str(Path(exp_dir).resolve()).encode()).hexdigest()[:16]
        self.journal = Path(exp_dir) / JOURNAL_FILE
        self.state = {
            "parent": None,
            "children": {},
            "ended": [],
            "restarts": {},
            "applied": 0,
            "finished": False,
            "registered_version": None,
            "registration_refused": None,
            "constants_logged": [],
        }
        legacy = Path(exp_dir) / LEGACY_STATE_FILE
        for file in (self.state_file, legacy):
            if file.is_file():
                self.state.update(read_state_file(file, "--resume", RESUME_HINT))
                break
        self._client = None
        self._experiment_id = None
        self._retry_at = 0.0
        self._down = False
        self._resume_pending = False

    # ---- state and journal
    def _save(self) -> None:
        atomic_write_text(self.state_file, json.dumps(self.state, indent=1))

    def _records(self) -> list[dict]:
        return _journal(self.journal)

    @property
    def pending(self) -> int:
        return max(0, len(self._records()) - self.state["applied"])

    def _record(self, op: str, **fields) -> None:
        cut = _last_line_cut(self.journal)  # a record cut mid-write stays a line of its own, not glued to this one
        with self.journal.open("a") as fh:
            fh.write(("\n" if cut else "") + json.dumps({"op": op, "t": now_ms(), **fields}, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if time.time() >= self._retry_at:
            self.sync()

    @property
    def parent_id(self) -> str | None:
        return self.state["parent"]

    # ---- what the search reports
    def start(self, run_name: str, params: dict, search_file: Path, tags: dict, dataset: dict | None = None) -> None:
        """A new search's parent run. On --resume nothing is sent yet: the parent turns RUNNING again only once Ray's
        loop runs (`proceeding`), so a resume refused or failing before that leaves it as the interruption left it."""
        self._save()  # marks the directory as a search that --resume can find
        if self.state["parent"] or any(r["op"] == "search_start" for r in self._records()):
            self._resume_pending = True
        else:
            self._record(
                "search_start",
                name=run_name,
                params={k: readable(v)[:6000] for k, v in flatten(params).items()},
                search_file=str(search_file),
                tags=tags,
                dataset=dataset,
            )

    def proceeding(self) -> None:
        """Ray's loop of a resumed search has started (its saved state restored): the parent run is RUNNING again."""
        if self._resume_pending:
            self._resume_pending = False
            self._record("search_resume")

    def trial_started(self, trial_id: str, trial_name: str, params: dict) -> None:
        self._record("trial_start", trial=trial_id, name=trial_name, params={k: readable(v) for k, v in params.items()})

    def trial_result(self, trial_id: str, metrics: dict) -> None:
        metrics = {**metrics, "val_perplexity": curve_value(metrics)}
        values = {
            k: float(metrics[k])
            for k in METRICS
            if isinstance(metrics.get(k), (int, float)) and math.isfinite(metrics[k])
        }
        constants = {
            k: float(metrics[k])
            for k in CONSTANTS
            if isinstance(metrics.get(k), (int, float)) and math.isfinite(metrics[k])
        }
        started = metrics.get("trainable_started_at")
        self._record(
            "trial_result",
            trial=trial_id,
            step=int(metrics.get("step", 0)),
            metrics=values,
            constants=constants,
            node_id=metrics.get("node_id") or "",
            dtype=metrics.get("dtype") or "",
            started_at=iso_time(started) if started else "",
        )

    def trial_restarted(self, trial_id: str) -> None:
        count = self.state["restarts"].get(trial_id, 0) + 1
        self.state["restarts"][trial_id] = count
        self._save()
        self._record("trial_restart", trial=trial_id, restarts=count)

    def trial_finished(self, trial_id: str, status: str, tags: dict) -> None:
        if trial_id not in self.state["ended"]:
            self.state["ended"].append(trial_id)
            self._save()
        self._record("trial_end", trial=trial_id, status=status, tags={k: str(v) for k, v in tags.items()})

    def started_trials(self) -> list[str]:
        return list(dict.fromkeys([r["trial"] for r in self._records() if r["op"] == "trial_start"]))

    def interrupted(self, reason: str) -> None:
        """The search was stopped: unfinished trials and the parent become KILLED; nothing is registered."""
        for trial_id in self.started_trials():
            if trial_id not in self.state["ended"]:
                self._record("trial_end", trial=trial_id, status="KILLED", tags={"stopped_by": reason})
        self._record(
            "search_end",
            status="KILLED",
            metrics={},
            artifacts=[],
            champion=None,
            register_as=None,
            tags={"stopped_by": reason},
        )
        self.sync(force=True)

    def finish(
        self,
        metrics: dict,
        artifacts: list[Path],
        champion_dir: Path | None,
        register_as: str | None,
        champion_model: Path | None = None,
        champion_trial: str | None = None,
        version_tags: dict | None = None,
        top: list[dict] | None = None,
        promote: bool = False,
    ) -> None:
        """The search's end: its metrics and artifacts on the parent run; the champion adapter there too; the best
        trials' adapters (`top`, the champion first) as MLflow logged models on their trial runs, the champion's
        registered as a version that takes the alias `champion` where it beats the version holding it (or by
        `promote`)."""
        self._record(
            "search_end",
            status="FINISHED",
            metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
            artifacts=[str(p) for p in artifacts],
            champion=str(champion_dir) if champion_dir else None,
            register_as=register_as,
            tags={},
            model=str(champion_model) if champion_model else None,
            trial=champion_trial,
            version_tags={k: str(v) for k, v in (version_tags or {}).items()},
            top=top or [],
            promote=promote,
        )
        self.state["finished"] = True
        self._save()
        self.sync(force=True)

    # ---- applying the journal to MLflow
    def sync(self, force: bool = False) -> bool:
        """Send every record MLflow has not received yet, in order. False (and a warning) when the tracking
        store cannot be reached; the records stay in the journal for the next try."""
        if not force and time.time() < self._retry_at:
            return False
        records = self._records()
        mlflow_logger = logging.getLogger("mlflow")
        level = mlflow_logger.level
        mlflow_logger.setLevel(logging.CRITICAL)  # a failure is our one warning line below, not MLflow's traceback
        try:
            while self.state["applied"] < len(records):
                self._apply(records[self.state["applied"]])
                self.state["applied"] += 1
                self._save()
        except Exception as exc:  # server down, network, store errors: keep the records, retry later
            self._retry_at = time.time() + RETRY_AFTER_S
            if not self._down:
                reason = (
                    "no space left on its device"
                    if disk_full(exc)
                    else first_line(getattr(exc, "orig", None) or exc)[:200]
                )
                warn(
                    f"MLflow at {self.tracking_uri} cannot be reached ({reason}); the search goes on and "
                    f"keeps its records in {self.journal} until it is back"
                )
            self._down = True
            self._client = None
            return False
        finally:
            mlflow_logger.setLevel(level)
        if self._down:
            warn(f"MLflow at {self.tracking_uri} is back; the kept records are logged")
        self._down = False
        self._retry_at = 0.0
        return True

    def _mlflow(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient  # see store.py: MLflow only once quiet_mlflow ran

            client = MlflowClient(self.tracking_uri, registry_uri=registry_uri_for(self.tracking_uri))
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                location = Path(self.artifact_root).resolve().as_uri() if self.artifact_root else None
                self._experiment_id = client.create_experiment(
                    self.experiment, artifact_location=location, tags=EXPERIMENT_KIND
                )
            else:
                self._experiment_id = exp.experiment_id
                if "mlflow.experimentKind" not in exp.tags:
                    client.set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
            self._client = client
        return self._client

    @property
    def experiment_id(self) -> str | None:
        try:
            self._mlflow()
        except Exception:  # unreachable store: the URL is still printed without an id
            return None
        return self._experiment_id
