"""What every experiment shares: MLflow logging of a training result, and the machine line."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch

from embinject.errors import ConfigError
from embinject.fsutil import atomic_write_text
from embinject.tracking import mlflow_global_uris, quiet_mlflow


def experiment_parser(
    doc: str, here: Path, data_help: str, config: Path | None = None, render_only: bool = True
) -> argparse.ArgumentParser:
    """The arguments every experiment takes (--data, --config, --set, --out, --mlflow, --render-only);
    the experiment adds its own."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--config", default=str(config or here / "config.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--out",
        type=Path,
        default=here,
        help="where RESULTS.md, results.json and plots go (default: beside the command)",
    )
    p.add_argument("--mlflow", default=None, help="tracking URI (default: sqlite:///<out>/mlflow.db)")
    if render_only:
        p.add_argument(
            "--render-only", action="store_true", help="regenerate RESULTS.md and plots from <out>/results.json"
        )
    return p


def parse_experiment_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Parse, create the output folder and fill in the default tracking URI."""
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.mlflow = args.mlflow or default_tracking_uri(args.out)
    return args


def default_tracking_uri(out) -> str:
    return f"sqlite:///{(out / 'mlflow.db').resolve()}"


def log_result(
    uri: str, experiment: str, run_name: str, params: dict, result: dict | None = None, metrics: dict | None = None
) -> None:
    """One MLflow run: params, the validation curve and final numbers of a `train()` result, extra metrics."""
    quiet_mlflow("WARNING")  # MLflow's database set-up lines are not the experiment's output
    import mlflow

    with mlflow_global_uris(uri, uri):  # and back as they were: a caller's MLflow set-up is not the experiment's
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=run_name):
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            if result is not None:
                mlflow.log_params({"method": result["method"], "trainable_params": result["trainable_params"]})
                for h in result.get("history", []):
                    mlflow.log_metric("val_perplexity", h["val_perplexity"], step=h["step"])
                mlflow.log_metrics(
                    {
                        "best_val_perplexity": result["val_perplexity"],
                        "baseline_perplexity": result["baseline_perplexity"],
                        "train_seconds": result["train_seconds"],
                    }
                )
            if metrics:
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()})


def machine() -> str:
    return (
        f"{platform.machine()} ({os.cpu_count()} CPUs), {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )


def run_or_reload(args, out, run) -> dict | None:
    """`run(args)` saved to <out>/results.json, or with --render-only the saved results; None (after
    printing one line) on a configuration error."""
    import json
    import sys

    if args.render_only:
        return json.loads((out / "results.json").read_text())
    try:
        results = run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=str))
    return results
