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
from .store import registry_uri_for
from .records import TIME_SPLIT, WALL, iso_time, now_ms, curve_value, flatten, readable

# a point per evaluation; pack_size: trials in the last packed step (1: alone), eval_pack_size: in this evaluation's
# packed passes; the time split: so far
METRICS = ("val_perplexity", "best_val_perplexity", "train_loss", "epoch", "tokens_per_second", "train_seconds",
           "eval_seconds", "pack_size", "eval_pack_size", *TIME_SPLIT, WALL)
CONSTANTS = ("baseline_perplexity", "startup_seconds")  # the same at every evaluation: logged once per trial
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3's UI opens the runs table, not GenAI
# Not *.json: Ray Tune's restore copies every top-level *.json of the search folder into its staging folder and
# syncs it back, which kept reverting this file to its copy from resume time.
STATE_FILE = "embinject_search.state"
LEGACY_STATE_FILE = "embinject_search.json"  # what searches started before that change wrote
JOURNAL_FILE = "mlflow_journal.jsonl"
RETRY_AFTER_S = 30.0  # while the server is away, try again at most this often (records keep queueing)
# MLflow's error codes for a registration it refused for its name or content (sending it again gets the same answer), as
# opposed to one that did not reach it, that it could not serve now, or that new credentials would let through: those
# stay in the journal and are sent again.
REFUSALS = ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS")
# What makes two champions' results comparable (records.champion_identity), as tags of each registered version, and
# how the line that keeps the alias names a difference.
COMPARED = {"model": "frozen model", "data_digest": "validation data", "scored_tokens": "choice of scored tokens",
            "metric": "metric", "mode": "direction (min or max)"}
# A state file is read only to continue a search (a new one has none): what to do when it is damaged
RESUME_HINT = ("restore it (it holds the search's MLflow run ids and how many of its records MLflow received), "
               "or start a new search without --resume")


def read_state_file(file: Path, key: str, hint: str) -> dict:
    """A search's state file, or a ConfigError naming `key` and the file when it is not what a tracker saved."""
    state = read_json_object(file, key, hint)
    if not isinstance(state.get("parent"), (str, type(None))) or not isinstance(state.get("children", {}), dict):
        raise damaged(key, file, "not the search state embinject writes", hint)
    return state


def _value(text: str | None) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def champion_move(name: str, holder, version: str, tags: dict, promote: bool) -> tuple[bool, str]:
    """Whether `version` of `name` (its tags: `tags`) takes the alias `champion` from `holder`, the version holding it,
    and the one line that says what happened. It does where its result beats the holder's on the same frozen model,
    validation data, scored tokens and metric (`COMPARED`), or with `promote`; otherwise the alias stays, and the line
    says why: the holder's result is as good or better (both numbers), or the two cannot be compared (the first
    difference, or what the holder does not record)."""
    old, new, was = holder.tags, tags, holder.version
    metric = new.get("metric", "val_perplexity")
    theirs, ours = _value(old.get("val_perplexity")), _value(new.get("val_perplexity"))
    said = lambda v: "none" if v is None else f"{v:.6g}"  # noqa: E731
    numbers = f"{metric} {said(ours)}, version {was}'s {said(theirs)}"
    lacking = [COMPARED.get(k, k) for k in [*COMPARED, "val_perplexity"] if k not in old]
    differ = [k for k in COMPARED if k in old and old[k] != new.get(k)]
    if lacking:
        why = f"version {was} does not record its {', '.join(lacking)}: registered by hand or by an older embinject"
    elif differ:
        key = differ[0]
        then, now = ((f"{t.get('data')} ({t.get(key)})" if key == "data_digest" else t.get(key)) for t in (old, new))
        why = f"the {COMPARED[key]} differs: {then} for version {was}, {now} for this search"
    elif ours is None or theirs is None:
        why = f"{metric} is not a number for {'this search' if ours is None else f'version {was}'}"
    else:
        why = None
    if promote:
        return True, f"the alias champion of {name} moved to version {version} by --promote ({numbers}" + \
            (f"; not comparable: {why})" if why else ")")
    kept = f"version {version} of {name} is registered without the alias champion, which stays on version {was}: "
    if why:
        return False, kept + f"the two cannot be compared ({why}); --promote moves it"
    if (ours < theirs) if new.get("mode", "min") == "min" else (ours > theirs):
        return True, f"the alias champion of {name} moved to version {version}, which beats version {was} ({numbers})"
    return False, kept + (f"this search's {metric} {ours:.6g} does not beat its {theirs:.6g} (the same frozen model, "
                          "validation data and metric); --promote moves it anyway")


_TRACKERS: dict[str, "SearchTracker"] = {}


def tracker_for(tracking_uri: str, experiment: str, exp_dir: Path, artifact_root: Path | None = None) -> "SearchTracker":
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
    ends = [r for r in _journal(Path(exp_dir) / JOURNAL_FILE) if r.get("op") == "search_end" and r.get("status") == "FINISHED"]
    return ends[-1] if ends else {}


def search_metrics(exp_dir: Path) -> dict:
    """The metrics a finished search recorded for its parent run (`search_end`); {} for a search that has not finished."""
    return search_end(exp_dir).get("metrics", {})


def _last_line_cut(path: Path) -> bool:
    """Whether a file's last line lacks its newline (a write cut by a kill or a full disk)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except OSError:  # no file, or an empty one
        return False


class SearchTracker:
    def __init__(self, tracking_uri: str, experiment: str, exp_dir: Path, artifact_root: Path | None = None):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.artifact_root = artifact_root
        self.state_file = Path(exp_dir) / STATE_FILE
        # The key of this search's parent run in MLflow: its folder, which no other search shares.
        self.search_key = hashlib.sha256(str(Path(exp_dir).resolve()).encode()).hexdigest()[:16]
        self.journal = Path(exp_dir) / JOURNAL_FILE
        self.state = {"parent": None, "children": {}, "ended": [], "restarts": {}, "applied": 0, "finished": False,
                      "registered_version": None, "registration_refused": None, "constants_logged": []}
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
            self._record("search_start", name=run_name, params={k: readable(v)[:6000] for k, v in flatten(params).items()},
                         search_file=str(search_file), tags=tags, dataset=dataset)

    def proceeding(self) -> None:
        """Ray's loop of a resumed search has started (its saved state restored): the parent run is RUNNING again."""
        if self._resume_pending:
            self._resume_pending = False
            self._record("search_resume")

    def trial_started(self, trial_id: str, trial_name: str, params: dict) -> None:
        self._record("trial_start", trial=trial_id, name=trial_name, params={k: readable(v) for k, v in params.items()})

    def trial_result(self, trial_id: str, metrics: dict) -> None:
        metrics = {**metrics, "val_perplexity": curve_value(metrics)}
        values = {k: float(metrics[k]) for k in METRICS
                  if isinstance(metrics.get(k), (int, float)) and math.isfinite(metrics[k])}
        constants = {k: float(metrics[k]) for k in CONSTANTS
                     if isinstance(metrics.get(k), (int, float)) and math.isfinite(metrics[k])}
        started = metrics.get("trainable_started_at")
        self._record("trial_result", trial=trial_id, step=int(metrics.get("step", 0)), metrics=values,
                     constants=constants, node_id=metrics.get("node_id") or "", dtype=metrics.get("dtype") or "",
                     started_at=iso_time(started) if started else "")

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
        self._record("search_end", status="KILLED", metrics={}, artifacts=[], champion=None, register_as=None,
                     tags={"stopped_by": reason})
        self.sync(force=True)

    def finish(self, metrics: dict, artifacts: list[Path], champion_dir: Path | None, register_as: str | None,
               champion_model: Path | None = None, champion_trial: str | None = None, version_tags: dict | None = None,
               top: list[dict] | None = None, promote: bool = False) -> None:
        """The search's end: its metrics and artifacts on the parent run; the champion adapter there too; the best
        trials' adapters (`top`, the champion first) as MLflow logged models on their trial runs, the champion's
        registered as a version that takes the alias `champion` where it beats the version holding it (or by
        `promote`)."""
        self._record("search_end", status="FINISHED",
                     metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
                     artifacts=[str(p) for p in artifacts], champion=str(champion_dir) if champion_dir else None,
                     register_as=register_as, tags={}, model=str(champion_model) if champion_model else None,
                     trial=champion_trial, version_tags={k: str(v) for k, v in (version_tags or {}).items()},
                     top=top or [], promote=promote)
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
                reason = "no space left on its device" if disk_full(exc) else first_line(getattr(exc, "orig", None) or exc)[:200]
                warn(f"MLflow at {self.tracking_uri} cannot be reached ({reason}); the search goes on and "
                     f"keeps its records in {self.journal} until it is back")
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
                self._experiment_id = client.create_experiment(self.experiment, artifact_location=location, tags=EXPERIMENT_KIND)
            else:
                self._experiment_id = exp.experiment_id
                if "mlflow.experimentKind" not in exp.tags:
                    client.set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
            self._client = client
        return self._client

    def _apply(self, r: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag  # lazy: MLflow only after quiet_mlflow (store.py)

        client = self._mlflow()
        op = r["op"]
        children = self.state["children"]
        # Every record may be applied again (a store that locked or went away halfway, a kill before the state was
        # saved): a run is created only when no run carries its key, and what follows its creation is redone.
        if op == "search_start":
            if not self.state["parent"]:
                found = self._find_run(client, f"tags.`embinject.search` = '{self.search_key}'")
                run_id = found or client.create_run(self._experiment_id, run_name=r["name"], start_time=r["t"], tags={
                    "embinject.kind": "search", "embinject.search": self.search_key, **r["tags"]}).info.run_id
                self.state["parent"] = run_id
                self._save()
            flat = [Param(k, v) for k, v in r["params"].items()]
            for i in range(0, len(flat), 100):
                client.log_batch(self.parent_id, params=flat[i : i + 100])
            client.log_artifact(self.parent_id, r["search_file"], "search")
            self.state["dataset"] = r.get("dataset")
            self._save()
            self._log_dataset(client, self.parent_id, r.get("dataset"))
        elif op == "search_resume":
            client.set_tag(self.parent_id, "resumed_at", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["t"] / 1000)))
            self._running_again(client, self.parent_id)
        elif op == "trial_start":
            logged = self.state.setdefault("params_logged", [])
            if r["trial"] in children and r["trial"] in logged:
                self._running_again(client, children[r["trial"]])  # resumed or restarted trial
                return
            if r["trial"] not in children:
                found = self._find_run(client, f"tags.`mlflow.parentRunId` = '{self.parent_id}' and tags.trial_id = '{r['trial']}'")
                if found is None:
                    parent = client.get_run(self.parent_id)
                    inherited = {k: v for k, v in parent.data.tags.items() if k.startswith(("mlflow.source.", "mlflow.user"))}
                    found = client.create_run(self._experiment_id, run_name=r["name"], start_time=r["t"], tags={
                        **inherited, "mlflow.parentRunId": self.parent_id, "trial_id": r["trial"],
                        "embinject.kind": "trial"}).info.run_id
                children[r["trial"]] = found
                self._save()
            client.log_batch(children[r["trial"]], params=[Param(k, v) for k, v in r["params"].items()])
            self._log_dataset(client, children[r["trial"]], self.state.get("dataset"))
            logged.append(r["trial"])
            self._save()
        elif op == "trial_result":
            if r["trial"] not in children:
                return
            # One request for the whole report. Its points carry the record's own time and step, so a report sent
            # again (a store that went away mid-request, a kill before the state was saved) repeats the same points,
            # which MLflow keeps once. The trial's constants go with its first report and count as logged only once
            # that request succeeded: a report that never arrived is sent again whole, constants included.
            metrics = [Metric(k, v, r["t"], r["step"]) for k, v in r["metrics"].items()]
            tags = [RunTag("node_id", r["node_id"])] if r["node_id"] else []
            first = bool(r.get("constants")) and r["trial"] not in self.state["constants_logged"]
            if first:
                metrics += [Metric(k, v, r["t"], 0) for k, v in r["constants"].items()]
                if r.get("started_at"):
                    tags.append(RunTag("trainable_started_at", r["started_at"]))
                if r.get("dtype"):
                    tags.append(RunTag("dtype", r["dtype"]))  # what train.dtype (auto) became here
            client.log_batch(children[r["trial"]], metrics=metrics, tags=tags)
            if first:
                self.state["constants_logged"].append(r["trial"])
                self._save()
        elif op == "trial_restart":
            if r["trial"] in children:
                client.set_tag(children[r["trial"]], "restarts", str(r["restarts"]))
        elif op == "trial_end":
            if r["trial"] not in children:
                return
            for k, v in r["tags"].items():
                client.set_tag(children[r["trial"]], k, v)
            client.set_terminated(children[r["trial"]], status=r["status"], end_time=r["t"])
        elif op == "search_end":
            for k, v in r["tags"].items():
                client.set_tag(self.parent_id, k, v)
            client.log_batch(self.parent_id, metrics=[Metric(k, v, r["t"], 0) for k, v in r["metrics"].items()])
            for path in r["artifacts"]:
                client.log_artifact(self.parent_id, path, "results")
            top = r.get("top") or ([{"trial": r["trial"], "model": r["model"], "rank": 1}] if r.get("model") else [])
            for entry in top:
                if entry["trial"] in children:
                    self._log_model(client, children[entry["trial"]], entry, r["t"])
            if r["champion"]:
                client.log_artifacts(self.parent_id, r["champion"], "champion_adapter")
                winner = children.get(r.get("trial") or "")
                if r.get("model") and winner:
                    client.set_tag(winner, "champion", "true")
                if r["register_as"] and not self.state["registered_version"]:
                    if not self.state.get("registration_refused"):
                        self._register_champion(client, r, winner)
                    if self.state.get("registration_refused"):  # (again, where the tag did not reach MLflow the first time)
                        client.set_tag(self.parent_id, "registration_error", self.state["registration_refused"])
            client.set_terminated(self.parent_id, status=r["status"], end_time=r["t"])

    def _running_again(self, client, run_id: str) -> None:
        """A run that an interruption ended goes on: it is RUNNING, and the signal that stopped it is no longer why it
        stopped (its end sets the tag again if it stops again; `resumed_at` keeps that it was resumed)."""
        if "stopped_by" in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, "stopped_by")
        client.update_run(run_id, status="RUNNING")

    def _log_model(self, client, run_id: str, entry: dict, t: int) -> None:
        """One of the best trials' adapters as an MLflow logged model on its run: loadable as `runs:/RUN/model` and
        `models:/MODEL_ID`, listed by search_logged_models and in the experiment's Models tab with its validation
        perplexity. Applied again after a kill, it finds the model it made instead of making a second."""
        from mlflow.entities import LoggedModelOutput, Metric  # lazy, as above

        models = self.state.setdefault("logged_models", {})
        model_id = models.get(entry["trial"])
        if model_id is None:
            found = client.search_logged_models([self._experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = 'model'",
                                                max_results=1)
            model_id = found[0].model_id if found else client.create_logged_model(
                self._experiment_id, name="model", source_run_id=run_id, model_type="embinject adapter",
                tags={"trial_id": entry["trial"], "rank": str(entry["rank"])},
                params=client.get_run(run_id).data.params).model_id
            models[entry["trial"]] = model_id
            self._save()
        client.log_artifacts(run_id, entry["model"], "model")  # runs:/RUN/model, as before logged models existed
        client.log_model_artifacts(model_id, entry["model"])
        client.finalize_logged_model(model_id, "READY")
        if entry.get("val_perplexity") is not None:  # a metric logged again is the same point, not a second one
            client.log_batch(run_id, metrics=[Metric("best_val_perplexity", float(entry["val_perplexity"]), t,
                                                     int(entry.get("steps") or 0), model_id=model_id)])
        outputs = client.get_run(run_id).outputs
        if not any(o.model_id == model_id for o in (outputs.model_outputs if outputs else [])):  # a second link is refused
            client.log_outputs(run_id, [LoggedModelOutput(model_id, int(entry.get("steps") or 0))])
        client.set_tag(run_id, "top_rank", str(entry["rank"]))

    def _find_run(self, client, query: str) -> str | None:
        runs = client.search_runs([self._experiment_id], query, max_results=1)
        return runs[0].info.run_id if runs else None

    def _register_champion(self, client, r: dict, winner: str | None) -> None:
        """The champion as a new registry version. MLflow refusing it (a name its registry does not take, a name a
        prompt holds) is an answer, not an outage: sending it again cannot change it. The search's end
        is then applied without it (the parent run ends, tagged `registration_error`) and the refusal kept in the
        state, for the search's last lines and every later --resume to say."""
        from mlflow.exceptions import MlflowException  # lazy, as above

        try:
            version, moved, line = self._register(client, r["register_as"], winner if r.get("model") else None,
                                                  r.get("version_tags") or {},
                                                  self.state.get("logged_models", {}).get(r.get("trial") or ""),
                                                  bool(r.get("promote")))
        except MlflowException as exc:
            if getattr(exc, "error_code", None) not in REFUSALS:
                raise  # unreachable, locked, full: kept in the journal and sent again
            reason = first_line(exc)[:300]
            self.state["registration_refused"] = f"MLflow refused to register the champion as '{r['register_as']}' ({reason})"
            self._save()
            return
        self.state.update(registered_version=version, champion_moved=moved, champion_line=line)
        self._save()

    def _register(self, client, name: str, winner_run: str | None, tags: dict, model_id: str | None = None,
                  promote: bool = False) -> tuple[str, bool, str | None]:
        """A new version of `name`: the winning trial's pyfunc model (or, without one, the parent run's champion
        adapter directory). It takes the alias `champion` where `champion_move` says so. Returns the version, whether
        it holds the alias, and the line that says why where another version held it."""
        from mlflow.exceptions import MlflowException  # lazy, as above

        try:
            client.create_registered_model(name, description="embinject adapters as MLflow pyfunc models: "
                                                              "mlflow.pyfunc.load_model('models:/NAME@champion').predict(...)")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            try:  # already registered: add a version. Unless a prompt holds the name (the registry's search hides it):
                client.get_registered_model(name)  # a version made under it would be a prompt's, with no alias
            except MlflowException as missing:
                raise (exc if missing.error_code == "RESOURCE_DOES_NOT_EXIST" else missing) from None
        run = winner_run or self.parent_id
        # A driver killed between creating the version and saving that it did must not register a second one
        # on --resume: the version of this run, if there is one, is the one.
        # (Searched by run and matched by name here: a name MLflow takes may hold a quote, which a filter string cannot.)
        existing = [v for v in client.search_model_versions(f"run_id='{run}'") if v.run_id == run and v.name == name]
        if existing:
            mv = min(existing, key=lambda v: int(v.version))
        else:
            # linked to the champion's logged model where there is one (a server then wants the model's own location)
            source = client.get_logged_model(model_id).artifact_location if model_id else \
                client.get_run(run).info.artifact_uri.rstrip("/") + ("/model" if winner_run else "/champion_adapter")
            mv = client.create_model_version(name, source=source, run_id=run, tags=tags, model_id=model_id)
        holder = client.get_registered_model(name).aliases.get("champion")
        if holder is None or str(holder) == str(mv.version):  # the first champion, or this one (applied again)
            client.set_registered_model_alias(name, "champion", mv.version)
            return str(mv.version), True, None
        move, line = champion_move(name, client.get_model_version(name, str(holder)), str(mv.version), tags, promote)
        if move:
            client.set_registered_model_alias(name, "champion", mv.version)
        return str(mv.version), move, line

    def _log_dataset(self, client, run_id: str, dataset: dict | None) -> None:
        """The training data as an MLflow dataset input (the runs table's Dataset column)."""
        if not dataset:
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag  # lazy, as above

        entity = Dataset(name=dataset["name"], digest=dataset["digest"], source_type=dataset["source_type"],
                         source=json.dumps({"uri": dataset["source"]}))
        client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", "training")])])

    @property
    def experiment_id(self) -> str | None:
        try:
            self._mlflow()
        except Exception:  # unreachable store: the URL is still printed without an id
            return None
        return self._experiment_id
