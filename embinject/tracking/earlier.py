"""Earlier searches read back from MLflow for a warm start: a parent run (`runs:/RUN_ID`) or every finished
search of an experiment, each as its setup (the parent run's flattened `base.*` and `tune.*` parameters) and
its trials (parameters, status, validation curve, steps and frozen-LM baseline), as plain data the search
layer turns into Optuna trials."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .store import open_store


def _trial(client, run) -> dict:
    tags, metrics = run.data.tags, run.data.metrics
    history = sorted(
        (int(m.step), float(m.value)) for m in client.get_metric_history(run.info.run_id, "val_perplexity")
    )
    if tags.get("failure_reason"):
        status = "diverged" if tags["failure_reason"] == "diverged" else "error"
    elif run.info.status != "FINISHED":
        status = "cut"  # killed by the search's end or an interruption
    else:
        status = "stopped" if tags.get("stopped_early") == "True" else "ok"
    return {
        "trial_id": tags.get("trial_id", run.info.run_id),
        "params": dict(run.data.params),
        "status": status,
        "history": history,
        "steps": int(float(tags.get("steps") or (history[-1][0] if history else 0))),
        "best": metrics.get("best_val_perplexity"),
        "baseline": metrics.get("baseline_perplexity"),
    }


def _search(client, parent) -> dict:
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=50_000
    )
    setup = {k: v for k, v in parent.data.params.items() if k.startswith(("base.", "tune."))}
    return {
        "label": f"runs:/{parent.info.run_id} ({parent.info.run_name})",
        "parent_run_id": parent.info.run_id,
        "setup": setup,
        "searched": sorted(
            k.removeprefix("search.")
            for k, v in parent.data.params.items()
            if k.startswith("search.") and not v.startswith("fixed ")
        ),
        "trials": [_trial(client, c) for c in children],
    }


def earlier_searches(key: str, run_id: str | None, experiment: str | None, tracking_uri: str) -> list[dict]:
    """The search whose parent run is `run_id`, or every finished search of `experiment`, in `tracking_uri`;
    one ConfigError naming `key` when there is none."""
    from mlflow.exceptions import MlflowException  # lazy: MLflow only after quiet_mlflow (open_store)
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).is_file():
        raise ConfigError(
            f"{key}: no MLflow store at {tracking_uri}; name the store the earlier search logged to, as "
            "{run: RUN_ID, tracking_uri: URI} (or set this search's mlflow.tracking_uri)"
        )
    client = MlflowClient(open_store(tracking_uri, key))
    try:
        if run_id is not None:
            parent = client.get_run(run_id)
            if parent.data.tags.get("embinject.kind") != "search":
                raise ConfigError(
                    f"{key}: run {run_id} in {tracking_uri} is not an embinject search's parent run; pass the "
                    "run id `embinject tune` printed after `mlflow: experiment ..., run`"
                )
            return [_search(client, parent)]
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ConfigError(f"{key}: no MLflow experiment named '{experiment}' in {tracking_uri}")
        parents = client.search_runs(
            [exp.experiment_id], "tags.`embinject.kind` = 'search' and attributes.status = 'FINISHED'", max_results=1000
        )
    except MlflowException as exc:
        what = f"run {run_id}" if run_id is not None else f"experiment '{experiment}'"
        raise ConfigError(
            f"{key}: cannot read {what} from {tracking_uri} ({str(exc).splitlines()[0][:200]}); pass the "
            "parent run id `embinject tune` printed, with its tracking_uri"
        ) from None
    if not parents:
        raise ConfigError(f"{key}: experiment '{experiment}' in {tracking_uri} holds no finished embinject search")
    return [_search(client, p) for p in parents]
