"""How a search's journal records reach MLflow: one method per kind of record (`APPLIERS`, by the record's `op`),
each of which may be applied again (a store that locked or went away halfway, a kill before the state was saved): a
run is created only when no run carries its key, and what follows its creation is redone. The best trials' adapters
become logged models, the champion a registered version.

MLflow is imported where it is used, never before `quiet_mlflow` (see store.py).
"""

from __future__ import annotations

import json
import time

from ..errors import first_line
from .champion import champion_move

# MLflow's error codes for a registration it refused for its name or content (sending it again gets the same answer), as
# opposed to one that did not reach it, that it could not serve now, or that new credentials would let through: those
# stay in the journal and are sent again.
REFUSALS = ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS")


class MlflowApplier:
    """The part of SearchTracker that applies records to MLflow. It uses the tracker's `state` (saved by `_save`),
    `parent_id`, `search_key`, `_experiment_id` and `_mlflow()` (the client, which sets `_experiment_id`)."""

    def _apply(self, r: dict) -> None:
        client = self._mlflow()
        applier = APPLIERS.get(r["op"])
        if applier is not None:
            applier(self, client, r)

    def _apply_search_start(self, client, r: dict) -> None:
        """The parent run (found by its key where a run carries it), the search's parameters, file and data."""
        from mlflow.entities import Param  # lazy: MLflow only after quiet_mlflow (store.py)

        if not self.state["parent"]:
            found = self._find_run(client, f"tags.`embinject.search` = '{self.search_key}'")
            run_id = (
                found
                or client.create_run(
                    self._experiment_id,
                    run_name=r["name"],
                    start_time=r["t"],
                    tags={"embinject.kind": "search", "embinject.search": self.search_key, **r["tags"]},
                ).info.run_id
            )
            self.state["parent"] = run_id
            self._save()
        flat = [Param(k, v) for k, v in r["params"].items()]
        for i in range(0, len(flat), 100):
            client.log_batch(self.parent_id, params=flat[i : i + 100])
        client.log_artifact(self.parent_id, r["search_file"], "search")
        self.state["dataset"] = r.get("dataset")
        self._save()
        self._log_dataset(client, self.parent_id, r.get("dataset"))

    def _apply_search_resume(self, client, r: dict) -> None:
        """A resumed search's parent run goes on."""
        client.set_tag(self.parent_id, "resumed_at", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["t"] / 1000)))
        self._running_again(client, self.parent_id)

    def _apply_trial_start(self, client, r: dict) -> None:
        """A trial's child run (found by its trial id where one carries it), its parameters and data; a trial
        resumed or restarted goes on in its run."""
        from mlflow.entities import Param  # lazy: MLflow only after quiet_mlflow (store.py)

        children = self.state["children"]
        logged = self.state.setdefault("params_logged", [])
        if r["trial"] in children and r["trial"] in logged:
            self._running_again(client, children[r["trial"]])  # resumed or restarted trial
            return
        if r["trial"] not in children:
            found = self._find_run(
                client, f"tags.`mlflow.parentRunId` = '{self.parent_id}' and tags.trial_id = '{r['trial']}'"
            )
            if found is None:
                parent = client.get_run(self.parent_id)
                inherited = {
                    k: v for k, v in parent.data.tags.items() if k.startswith(("mlflow.source.", "mlflow.user"))
                }
                found = client.create_run(
                    self._experiment_id,
                    run_name=r["name"],
                    start_time=r["t"],
                    tags={
                        **inherited,
                        "mlflow.parentRunId": self.parent_id,
                        "trial_id": r["trial"],
                        "embinject.kind": "trial",
                    },
                ).info.run_id
            children[r["trial"]] = found
            self._save()
        client.log_batch(children[r["trial"]], params=[Param(k, v) for k, v in r["params"].items()])
        self._log_dataset(client, children[r["trial"]], self.state.get("dataset"))
        logged.append(r["trial"])
        self._save()

    def _apply_trial_result(self, client, r: dict) -> None:
        """One report of a trial: its metrics, and with its first report its constants."""
        from mlflow.entities import Metric, RunTag  # lazy: MLflow only after quiet_mlflow (store.py)

        children = self.state["children"]
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

    def _apply_trial_restart(self, client, r: dict) -> None:
        """How many times Ray restarted a trial."""
        children = self.state["children"]
        if r["trial"] in children:
            client.set_tag(children[r["trial"]], "restarts", str(r["restarts"]))

    def _apply_trial_end(self, client, r: dict) -> None:
        """A trial's end: its tags and status."""
        children = self.state["children"]
        if r["trial"] not in children:
            return
        for k, v in r["tags"].items():
            client.set_tag(children[r["trial"]], k, v)
        client.set_terminated(children[r["trial"]], status=r["status"], end_time=r["t"])

    def _apply_search_end(self, client, r: dict) -> None:
        """The search's end: its metrics and artifacts, the best trials' logged models, the champion and its
        registration."""
        from mlflow.entities import Metric  # lazy: MLflow only after quiet_mlflow (store.py)

        children = self.state["children"]
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
        """One of the best trials' adapters as an MLflow logged model on its run, named `<search>-rank<rank>-<trial id>`
        (records.logged_model_name): loadable as `runs:/RUN/model` and `models:/MODEL_ID`, listed by
        search_logged_models and in the experiment's Models tab with its validation perplexity. Applied again after a
        kill, it finds the model it made instead of making a second."""
        from mlflow.entities import LoggedModelOutput, Metric  # lazy, as above

        models = self.state.setdefault("logged_models", {})
        model_id = models.get(entry["trial"])
        name = entry.get("name") or "model"  # a journal written before models were named after the search has none
        if model_id is None:
            found = client.search_logged_models(
                [self._experiment_id], max_results=1, filter_string=f"source_run_id = '{run_id}' AND name = '{name}'"
            )
            model_id = (
                found[0].model_id
                if found
                else client.create_logged_model(
                    self._experiment_id,
                    name=name,
                    source_run_id=run_id,
                    model_type="embinject adapter",
                    tags={"trial_id": entry["trial"], "rank": str(entry["rank"])},
                    params=client.get_run(run_id).data.params,
                ).model_id
            )
            models[entry["trial"]] = model_id
            self._save()
        client.log_artifacts(run_id, entry["model"], "model")  # runs:/RUN/model, as before logged models existed
        client.log_model_artifacts(model_id, entry["model"])
        client.finalize_logged_model(model_id, "READY")
        if entry.get("val_perplexity") is not None:  # a metric logged again is the same point, not a second one
            client.log_batch(
                run_id,
                metrics=[
                    Metric(
                        "best_val_perplexity",
                        float(entry["val_perplexity"]),
                        t,
                        int(entry.get("steps") or 0),
                        model_id=model_id,
                    )
                ],
            )
        outputs = client.get_run(run_id).outputs
        # a second link is refused
        if not any(o.model_id == model_id for o in (outputs.model_outputs if outputs else [])):
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
            version, moved, line = self._register(
                client,
                r["register_as"],
                winner if r.get("model") else None,
                r.get("version_tags") or {},
                self.state.get("logged_models", {}).get(r.get("trial") or ""),
                bool(r.get("promote")),
            )
        except MlflowException as exc:
            if getattr(exc, "error_code", None) not in REFUSALS:
                raise  # unreachable, locked, full: kept in the journal and sent again
            reason = first_line(exc)[:300]
            self.state["registration_refused"] = (
                f"MLflow refused to register the champion as '{r['register_as']}' ({reason})"
            )
            self._save()
            return
        self.state.update(registered_version=version, champion_moved=moved, champion_line=line)
        self._save()

    def _register(
        self, client, name: str, winner_run: str | None, tags: dict, model_id: str | None = None, promote: bool = False
    ) -> tuple[str, bool, str | None]:
        """A new version of `name`: the winning trial's pyfunc model (or, without one, the parent run's champion
        adapter directory). It takes the alias `champion` where `champion_move` says so. Returns the version, whether
        it holds the alias, and the line that says why where another version held it."""
        from mlflow.exceptions import MlflowException  # lazy, as above

        try:
            client.create_registered_model(
                name,
                description="embinject adapters as MLflow pyfunc models: "
                "mlflow.pyfunc.load_model('models:/NAME@champion').predict(...)",
            )
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
        # (Searched by run and matched by name here: a name MLflow takes may hold a quote, which a filter string
        # cannot.)
        existing = [v for v in client.search_model_versions(f"run_id='{run}'") if v.run_id == run and v.name == name]
        if existing:
            mv = min(existing, key=lambda v: int(v.version))
        else:
            # linked to the champion's logged model where there is one (a server then wants the model's own location)
            source = (
                client.get_logged_model(model_id).artifact_location
                if model_id
                else client.get_run(run).info.artifact_uri.rstrip("/")
                + ("/model" if winner_run else "/champion_adapter")
            )
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

        entity = Dataset(
            name=dataset["name"],
            digest=dataset["digest"],
            source_type=dataset["source_type"],
            source=json.dumps({"uri": dataset["source"]}),
        )
        client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", "training")])])


# each record's `op` -> the method that applies it
APPLIERS = {
    "search_start": MlflowApplier._apply_search_start,
    "search_resume": MlflowApplier._apply_search_resume,
    "trial_start": MlflowApplier._apply_trial_start,
    "trial_result": MlflowApplier._apply_trial_result,
    "trial_restart": MlflowApplier._apply_trial_restart,
    "trial_end": MlflowApplier._apply_trial_end,
    "search_end": MlflowApplier._apply_search_end,
}
