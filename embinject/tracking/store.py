"""Where MLflow records go and how embinject talks to a store: the default SQLite store, a check that a
server answers or a local store is writable before any work, opening a store to read (never creating
an empty one), MLflow kept quiet, and reading a finished search back from its runs.

MLflow is imported inside the functions that use it, after `quiet_mlflow`: its first import sets its
loggers' level from MLFLOW_LOGGING_LEVEL, and a command that never touches MLflow should not pay for it.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import ConfigError
from ..fsutil import check_writable
from .records import TIME_SPLIT, WALL


def quiet_mlflow(level: str) -> None:
    """Keep MLflow's own INFO lines (database set-up, signature checks) out of embinject's output. MLflow sets its
    loggers' level from MLFLOW_LOGGING_LEVEL on its first import, undoing an earlier setLevel, so set both; a user's
    own MLFLOW_LOGGING_LEVEL (say INFO, to see them) wins."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", level)
    if not sys.stderr.isatty():  # a log file gets no "Downloading artifacts" bar redrawn per file
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401  - the first import, after its log level is set

    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())


def default_tracking_uri(storage_dir: Path) -> str:
    return f"sqlite:///{Path(storage_dir).resolve() / 'mlflow.db'}"


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Before any work: a tracking server must answer, a local store must be writable. One ConfigError
    naming the URI otherwise."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                return
        except urllib.error.HTTPError:
            return  # something answered; MLflow itself will say what is wrong
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(
                f"mlflow.tracking_uri: cannot reach {uri} ({reason}); start the tracking server "
                "or set mlflow.tracking_uri to one that runs"
            ) from None
    elif uri.startswith("sqlite:///"):
        check_writable(Path(uri[len("sqlite:///") :]).parent, "mlflow.tracking_uri")
    elif uri.startswith("file:"):
        check_writable(
            Path(uri[len("file://") :] if uri.startswith("file://") else uri[len("file:") :]), "mlflow.tracking_uri"
        )
    elif "://" not in uri:
        check_writable(Path(uri), "mlflow.tracking_uri")


def runs_table_url(tracking_uri: str, experiment_id: str | None) -> str:
    """The experiment's runs table in MLflow's model-training view (MLflow 3 opens its GenAI view otherwise);
    for a local store, as `mlflow ui` serves it on its default address."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def tracking_uri_default() -> str:
    """MLFLOW_TRACKING_URI if set, else the default search store below the current directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path('runs/tune/mlflow.db').resolve()}"


def registry_uri_for(tracking_uri: str) -> str:
    """Where models are registered: MLFLOW_REGISTRY_URI if the user set it, else the tracking store itself (not
    MLflow's global registry URI, which something earlier in this process may have set)."""
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri


_GLOBAL_URIS_LOCK = threading.RLock()  # re-entrant: a block may open another in the same thread


@contextlib.contextmanager
def mlflow_global_uris(tracking_uri: str, registry_uri: str):
    """MLflow's global tracking and registry URIs for one block (MLflow resolves `models:/` only through them), then
    exactly as before. MLflow's setters also write MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI into the environment,
    where later searches in this process and every subprocess would read them, and its getters return resolved
    defaults, so restoring through the public API would pin URIs that were unset: the unset state is kept here.
    One block at a time per process: two threads' blocks would each restore the other's URIs mid-run (an experiment
    driver logs from a thread per worker), and MLflow would then write one thread's run into another store."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_state  # the globals behind the public setters
    from mlflow.tracking._tracking_service import utils as tracking_state

    with _GLOBAL_URIS_LOCK:
        env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        saved = getattr(tracking_state, "_tracking_uri", None), getattr(registry_state, "_registry_uri", None)
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(registry_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved[0])  # also resets what MLflow derived from it (its tracer's export target)
            registry_state._registry_uri = saved[1]
            for key, value in env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def open_store(uri: str, key: str) -> str:
    """A tracking store to read from: a local SQLite store must already exist (reading must not create an
    empty one); MLflow's own INFO lines stay quiet."""
    quiet_mlflow("WARNING")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise ConfigError(
            f"{key}: no MLflow store at {uri}; pass the search's --tracking-uri (or set MLFLOW_TRACKING_URI)"
        )
    return uri


def search_from_mlflow(run_id: str, tracking_uri: str) -> dict:
    """A finished search as `embinject report` shows it, read from its parent run and the trials' child runs."""
    from mlflow.exceptions import MlflowException  # lazy: MLflow only after quiet_mlflow (open_store)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        parent = client.get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(
            f"{run_id}: no such MLflow run in {tracking_uri} ({str(exc).splitlines()[0][:200]}); pass a search "
            "directory or the parent run id `embinject tune` printed, with --tracking-uri"
        ) from None
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'", max_results=5000
    )
    searched = sorted({k.removeprefix("search.") for k in parent.data.params if k.startswith("search.")})
    rows, curves = [], {}
    for c in children:
        trial = c.data.tags.get("trial_id", c.info.run_id)
        history = client.get_metric_history(c.info.run_id, "val_perplexity")
        points = sorted((h.step, h.value) for h in history)
        if points:
            curves[trial] = points
        status = c.data.tags.get("failure_reason") or ("ok" if c.info.status == "FINISHED" else c.info.status.lower())
        rows.append(
            {
                "trial_id": trial,
                **{k: c.data.params.get(k, "") for k in searched},
                "final_val_perplexity": points[-1][1] if points else "",
                "best_val_perplexity": c.data.metrics.get("best_val_perplexity", ""),
                "baseline_perplexity": c.data.metrics.get("baseline_perplexity", ""),
                "steps": c.data.tags.get("steps", ""),
                "stopped_early": c.data.tags.get("stopped_early", ""),
                "status": status,
                "run_name": c.info.run_name,
                **{k: c.data.metrics.get(k, "") for k in (*TIME_SPLIT, WALL)},
            }
        )
    front = _pareto_from_mlflow(client, run_id)
    if front is not None:
        for r in rows:
            r["pareto"] = str(r["trial_id"] in front)
    return {
        "title": parent.info.run_name,
        "source": f"{tracking_uri} run {run_id}",
        "rows": rows,
        "params": searched,
        "curves": curves,
        "plots": [],
        "search": dict(parent.data.metrics),
    }


def _pareto_from_mlflow(client, run_id: str) -> set[str] | None:
    """The trial ids of a multi-objective search's Pareto front, from the parent run's pareto_front.csv."""
    if not any(a.path == "results/pareto_front.csv" for a in client.list_artifacts(run_id, "results")):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, "results/pareto_front.csv", tmp)
        with open(local, newline="", encoding="utf-8") as fh:
            return {row["trial_id"] for row in csv.DictReader(fh)}
