"""What every experiment shares: MLflow logging of a training result, and the machine line."""
from __future__ import annotations

import os
import platform

import torch


def default_tracking_uri(out) -> str:
    return f"sqlite:///{(out / 'mlflow.db').resolve()}"


def log_result(uri: str, experiment: str, run_name: str, params: dict, result: dict | None = None,
               metrics: dict | None = None) -> None:
    """One MLflow run: params, the validation curve and final numbers of a `train()` result, extra metrics."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name):
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        if result is not None:
            mlflow.log_params({"method": result["method"], "trainable_params": result["trainable_params"]})
            for h in result.get("history", []):
                mlflow.log_metric("val_perplexity", h["val_perplexity"], step=h["step"])
            mlflow.log_metrics({"best_val_perplexity": result["val_perplexity"],
                                "baseline_perplexity": result["baseline_perplexity"],
                                "train_seconds": result["train_seconds"]})
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})


def machine() -> str:
    return f"{platform.machine()} ({os.cpu_count()} CPUs), {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def run_or_reload(args, out, run) -> dict | None:
    """`run(args)` saved to <out>/results.json, or with --render-only the saved results; None (after
    printing one line) on a configuration error."""
    import json
    import sys

    from embinject.config import ConfigError

    if args.render_only:
        return json.loads((out / "results.json").read_text())
    try:
        results = run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return results
