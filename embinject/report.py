"""A search's report: its trials best-first with their parameters, and the validation curves, as
Markdown + PNG. `embinject report SEARCH_DIR|PARENT_RUN_ID [--tracking-uri URI] [--output-dir DIR]`.

From a search directory it reads what the search wrote (summary.csv, Ray Tune's per-trial results);
from a parent run id it reads MLflow, so a search run on another machine can be reported too.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from .config import ConfigError
from .fsutil import atomic_write_text
from .tracking import curve_value

FIXED = ("trial_id", "final_val_perplexity", "best_val_perplexity", "baseline_perplexity", "steps", "evaluations",
         "stopped_early", "status", "seconds", "node_id")


def _number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def from_search_dir(directory: Path) -> dict:
    summary = directory / "summary.csv"
    if not summary.is_file():
        raise ConfigError(f"{directory}: no summary.csv (not a finished embinject search directory)")
    with summary.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    curves = {}
    for trial_dir in directory.glob("trial_*"):
        points = []
        result = trial_dir / "result.json"
        for line in result.read_text().splitlines() if result.is_file() else []:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            value = _number(curve_value(r))
            if value is not None and "step" in r:
                points.append((int(r["step"]), value))
        if points:
            curves[trial_dir.name.removeprefix("trial_")] = sorted(dict(points).items())
    params = [k for k in (rows[0] if rows else {}) if k not in FIXED + ("pareto",)]
    plots = [directory / "pareto_front.png"] if (directory / "pareto_front.png").is_file() else []
    return {"title": directory.name, "source": str(directory), "rows": rows, "params": params, "curves": curves,
            "plots": plots}


def from_mlflow(run_id: str, tracking_uri: str) -> dict:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        parent = client.get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"{run_id}: no such MLflow run in {tracking_uri} ({str(exc).splitlines()[0][:200]}); pass a search "
                          "directory or the parent run id `embinject tune` printed, with --tracking-uri") from None
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'", max_results=5000)
    searched = sorted({k.removeprefix("search.") for k in parent.data.params if k.startswith("search.")})
    rows, curves = [], {}
    for c in children:
        trial = c.data.tags.get("trial_id", c.info.run_id)
        history = client.get_metric_history(c.info.run_id, "val_perplexity")
        points = sorted((h.step, h.value) for h in history)
        if points:
            curves[trial] = points
        status = c.data.tags.get("failure_reason") or ("ok" if c.info.status == "FINISHED" else c.info.status.lower())
        rows.append({"trial_id": trial, **{k: c.data.params.get(k, "") for k in searched},
                     "final_val_perplexity": points[-1][1] if points else "",
                     "best_val_perplexity": c.data.metrics.get("best_val_perplexity", ""),
                     "baseline_perplexity": c.data.metrics.get("baseline_perplexity", ""),
                     "steps": c.data.tags.get("steps", ""), "stopped_early": c.data.tags.get("stopped_early", ""),
                     "status": status, "run_name": c.info.run_name})
    front = _pareto_from_mlflow(client, run_id)
    if front is not None:
        for r in rows:
            r["pareto"] = str(r["trial_id"] in front)
    return {"title": parent.info.run_name, "source": f"{tracking_uri} run {run_id}", "rows": rows, "params": searched,
            "curves": curves, "plots": []}


def _pareto_from_mlflow(client, run_id: str) -> set[str] | None:
    """The trial ids of a multi-objective search's Pareto front, from the parent run's pareto_front.csv."""
    import tempfile

    if not any(a.path == "results/pareto_front.csv" for a in client.list_artifacts(run_id, "results")):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, "results/pareto_front.csv", tmp)
        with open(local, newline="", encoding="utf-8") as fh:
            return {row["trial_id"] for row in csv.DictReader(fh)}


def render(data: dict, directory: Path, metric: str = "best_val_perplexity") -> tuple[str, list[Path]]:
    from .plots import perplexity_curves

    rows = sorted(data["rows"], key=lambda r: (_number(r.get(metric)) is None, _number(r.get(metric)) or 0.0))
    baseline = next((_number(r.get("baseline_perplexity")) for r in rows if _number(r.get("baseline_perplexity"))), None)
    images = []
    if data["curves"]:
        curves = {t: ([s for s, _ in pts], [v for _, v in pts]) for t, pts in data["curves"].items()}
        images.append(perplexity_curves(curves, directory / "report_val_perplexity.png", baseline))
    columns = ["rank", "trial_id", *data["params"], "best_val_perplexity", "final_val_perplexity", "steps", "stopped_early",
               "status"] + (["pareto"] if any("pareto" in r for r in rows) else [])
    for plot in data.get("plots", []):
        if plot.parent != directory:
            import shutil

            shutil.copy2(plot, directory / plot.name)
        images.append(directory / plot.name)

    def cell(column: str, value) -> str:
        n = None if column == "trial_id" else _number(value)  # trial ids such as 249825e9 are not numbers
        if n is not None and not isinstance(value, bool) and str(value) not in ("True", "False"):
            return f"{n:.4g}" if not float(n).is_integer() else str(int(n))
        return str(value if value is not None else "").replace("|", "\\|")

    lines = [f"# Search report: {data['title']}", "", f"Source: {data['source']}. {len(rows)} trials, best first "
             f"(by {metric})" + (f"; frozen baseline perplexity {baseline:.4g}." if baseline else "."), "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for i, r in enumerate(rows, 1):
        lines.append("| " + " | ".join([str(i)] + [cell(c, r.get(c, "")) for c in columns[1:]]) + " |")
    lines += [""] + [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n", images


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .cli import prog, run_command

    parser = argparse.ArgumentParser(prog=prog("report"), description="Report a search: trials best-first with their "
                                     "parameters, and validation curves (Markdown + PNG).")
    parser.add_argument("search", help="a search directory (runs/tune/NAME-TIMESTAMP) or the search's MLflow parent run id")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for a run id (default: MLFLOW_TRACKING_URI, "
                        "else runs/tune/mlflow.db)")
    parser.add_argument("--output-dir", default=None, help="where report.md and its plots go (default: the search "
                        "directory, or report-RUN_ID/)")
    args = parser.parse_args(argv)

    def body() -> int:
        from .fsutil import check_writable
        from .inference import open_store, tracking_uri_default

        local = Path(os.path.abspath(os.path.expanduser(args.search)))
        if local.is_dir():
            data = from_search_dir(local)
            default_out = local
        elif "/" in args.search or os.sep in args.search:
            raise ConfigError(f"{args.search}: no such search directory")
        else:
            data = from_mlflow(args.search, open_store(args.tracking_uri or tracking_uri_default(), "--tracking-uri"))
            default_out = Path.cwd() / f"report-{args.search}"
        out = Path(os.path.abspath(os.path.expanduser(args.output_dir))) if args.output_dir else default_out
        check_writable(out, "--output-dir")
        out.mkdir(parents=True, exist_ok=True)
        text, _ = render(data, out)
        atomic_write_text(out / "report.md", text)
        print(text)
        print(f"wrote {out / 'report.md'}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    import sys

    sys.exit(main())
