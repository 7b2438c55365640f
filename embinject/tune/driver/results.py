"""A finished search's results: one row per trial in summary.csv, the best trial (never a failed or
diverged one), the Pareto front of a multi-objective search, plots, the champion adapter and its MLflow model."""

from __future__ import annotations

import csv
import io
import math
import shutil
from pathlib import Path

from ...errors import ConfigError, warn
from ...fsutil import atomic_write_text
from ...plots import ScoredTrial, pareto_plot, perplexity_curves, search_plots
from ...search_report import trial_curve, trial_folder_row
from ...serving import save_pyfunc
from ...space import SearchFile, trial_config
from ...tracking import TIME_SPLIT, WALL, SearchTracker, champion_identity, logged_model_name
from .outcome import Registration, SearchOutcome, TrialCounts


def objective_value(row: dict, metric: str):
    """A trial's value of an objective: its best validation perplexity, or the metric's last reported value."""
    return row["best_val_perplexity"] if metric == "val_perplexity" else row.get(metric)


def pareto_front(rows: list[dict], objectives: list[dict]) -> list[dict]:
    """The trials no other trial beats on every objective (at least as good on all, better on one)."""

    def key(r):  # smaller is better on every axis
        return [(1 if o["mode"] == "min" else -1) * float(objective_value(r, o["metric"])) for o in objectives]

    usable = [r for r in rows if all(objective_value(r, o["metric"]) is not None for o in objectives)]
    keys = [key(r) for r in usable]
    return [
        r
        for r, k in zip(usable, keys)
        if not any(all(a <= b for a, b in zip(other, k)) and other != k for other in keys)
    ]


def result_trial_id(result) -> str:
    """A Ray result's trial id: from its metrics, or its folder's name (`trial_<id>`) where it reported nothing."""
    return (result.metrics or {}).get("trial_id") or Path(result.path).name.split("_")[-1]


def trial_ids(grid) -> set[str]:
    return {result_trial_id(r) for r in grid}


def summarize(grid, search: SearchFile, exp_dir: Path, cut: frozenset = frozenset()) -> tuple[list[dict], list[dict]]:
    """One row per trial from what Ray Tune persisted (it survives a resume), and the trials that may become the
    champion, best first. `cut`: trials the search's end (its time budget) stopped mid-training."""
    searched = search.searched
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        metrics = result.metrics or {}
        history = []
        if df is not None and "val_perplexity" in df:
            curve = df["val_perplexity"]  # on one set of windows throughout: see tracking.curve_value
            if "val_perplexity_subset" in df:
                curve = df["val_perplexity_subset"].fillna(curve)
            history = [[float(s), float(v)] for s, v in zip(df["step"], curve) if v == v]  # v == v drops NaN
        config = result.config or {}  # None for a trial that reported nothing (one a time budget ended before it ran)
        row = {"trial_id": result_trial_id(result)}
        row.update({k: config.get(k) for k in searched})
        ppls = [h[1] for h in history]
        # A finished trial reports the perplexity of the adapter it keeps, scored on every validation window;
        # a trial stopped by the scheduler has only its intermediate evaluations (perhaps on a subset).
        kept = metrics.get("best_val_perplexity") if metrics.get("final") and not metrics.get("diverged") else None
        row.update(
            {
                "final_val_perplexity": ppls[-1] if ppls else None,
                "best_val_perplexity": kept
                if kept is not None and math.isfinite(kept)
                else min(ppls)
                if ppls
                else None,
                "baseline_perplexity": metrics.get("baseline_perplexity"),
                "steps": int(metrics.get("step", 0) or 0),
                "evaluations": len(history),
                "stopped_early": bool(history)
                and not bool(metrics.get("final"))
                and result.error is None
                and row["trial_id"] not in cut,
                "status": (
                    "error"
                    if result.error is not None
                    else "diverged"
                    if metrics.get("diverged")
                    else "cut"
                    if row["trial_id"] in cut
                    else "not_started"
                    if result.config is None
                    else "ok"
                ),
                "seconds": round(float(metrics.get("time_total_s", 0.0) or 0.0), 2),
                "node_id": metrics.get("node_id", ""),
            }
        )
        row.update({k: metrics.get(k) for k in (*TIME_SPLIT, WALL)})  # where its time went: see callback.time_split
        for o in search.tune.objectives:
            if o["metric"] != "val_perplexity":
                row[o["metric"]] = metrics.get(o["metric"])
        row["_history"] = history
        row["_checkpoint"] = result.checkpoint
        row["_config"] = config
        rows.append(row)
    rows += _lost_rows(exp_dir, search, rows)
    # A failed, diverged or cut trial never becomes the champion, whatever it reached before it ended.
    scored = [r for r in rows if r["best_val_perplexity"] is not None and r["status"] == "ok"]
    if search.tune.objectives:
        front = pareto_front(scored, search.tune.objectives)
        for r in rows:
            r["pareto"] = r in front
    ranked = sorted(scored, key=lambda r: r["best_val_perplexity"], reverse=search.tune.mode == "max")
    fields = [k for k in rows[0] if not k.startswith("_")] if rows else []
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(exp_dir / "summary.csv", text.getvalue())
    return rows, ranked


def _lost_rows(exp_dir: Path, search: SearchFile, rows: list[dict]) -> list[dict]:
    """Trials whose folder holds reports that Ray's results do not name: started just before the driver was killed,
    before Ray's saved state named them (on --resume Ray forgot them, `run.ended_by_the_search`). A row each, status
    `lost_at_kill`, so that summary.csv accounts for every trial folder and the folder reads as a finished search."""
    known = {r["trial_id"] for r in rows}
    base = {k: None for k in rows[0]} if rows else {}  # every column of the other rows, empty where it says nothing
    lost = []
    for trial_dir in sorted(exp_dir.glob("trial_*")):
        trial_id = trial_dir.name.removeprefix("trial_")
        if trial_id in known or not (trial_dir / "result.json").is_file():
            continue
        try:
            found = trial_folder_row(trial_dir, search.searched, "summary.csv", "Ray wrote it when the trial started")
        except ConfigError:  # its params.json damaged: a row with its curve only (no values, no counts)
            found = None
        found = found or {"trial_id": trial_id, "steps": 0, "evaluations": 0}
        history = [[float(step), value] for step, value in trial_curve(trial_dir)]
        lost.append(
            {
                **base,
                **found,
                "stopped_early": False,
                "status": "lost_at_kill",
                "_history": history,
                "_checkpoint": None,
                "_config": {k: found[k] for k in search.searched if found.get(k) is not None},
            }
        )
    return lost


def adapter_on_disk(trial: dict) -> Path | None:
    """The trial's kept adapter (its checkpoint's best_adapter/), or None where that is not on this disk (any more)."""
    if trial["_checkpoint"] is None:
        return None
    source = Path(trial["_checkpoint"].path) / "best_adapter"
    return source if source.is_dir() else None


def copy_champion(best: dict, exp_dir: Path) -> Path | None:
    """The trial's kept adapter copied to champion/, or None where its checkpoint is not on disk (any more)."""
    source = adapter_on_disk(best)
    if source is None:
        return None
    target = exp_dir / "champion"
    staged = exp_dir / ".champion.tmp"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(source, staged)
    if target.exists():
        shutil.rmtree(target)
    staged.rename(target)
    return target


def champion_of(ranked: list[dict], exp_dir: Path) -> tuple[Path | None, dict | None]:
    """The champion adapter and its trial: the best trial whose adapter is on disk. A better trial whose checkpoint
    folder is gone (deleted by hand, a lost node) is named in one warning, and the next best takes its place."""
    for trial in ranked:
        champion = copy_champion(trial, exp_dir)
        if champion is not None:
            if trial is not ranked[0]:
                gone = ", ".join(r["trial_id"] for r in ranked[: ranked.index(trial)])
                warn(
                    f"the checkpoints of better trials ({gone}) are not on disk; "
                    f"the champion is trial {trial['trial_id']}, "
                    "the best one whose adapter is"
                )
            return champion, trial
    if ranked:
        warn(f"no finished trial's checkpoint is on disk under {exp_dir}; nothing is registered")
    return None, ranked[0] if ranked else None


def top_models(
    ranked: list[dict],
    champion_trial: dict | None,
    champion_model: Path | None,
    exp_dir: Path,
    k: int,
    search_name: str,
) -> list[dict]:
    """The k best trials whose adapters are on disk (the champion first), each as an MLflow pyfunc model directory
    under top_models/, for the tracker to log as a logged model on the trial's run, named after the search, its rank
    and its trial."""
    kept = [champion_trial] if champion_trial is not None else []
    kept += [t for t in ranked if t is not champion_trial and adapter_on_disk(t) is not None][: max(0, k - len(kept))]
    out = []
    for rank, trial in enumerate(kept, 1):
        target = champion_model if trial is champion_trial else exp_dir / "top_models" / trial["trial_id"]
        if not target.is_dir():
            save_pyfunc(adapter_on_disk(trial), target)
        out.append(
            {
                "trial": trial["trial_id"],
                "model": str(target),
                "rank": rank,
                "steps": trial["steps"],
                "val_perplexity": trial["best_val_perplexity"],
                "name": logged_model_name(search_name, rank, trial["trial_id"]),
            }
        )
    return out


def _figures(search: SearchFile, rows: list[dict], exp_dir: Path, baseline: float | None) -> list[Path]:
    """The trials' validation curves and the search's plots (each parameter against the best perplexity)."""
    curves = {
        f"{r['trial_id']}": ([int(h[0]) for h in r["_history"]], [h[1] for h in r["_history"]])
        for r in rows
        if r["_history"]
    }
    if not curves:
        return []
    scored = [
        ScoredTrial(r["trial_id"], r["_config"], r["best_val_perplexity"])
        for r in rows
        if r["best_val_perplexity"] is not None
    ]
    direction = "minimize" if search.tune.mode == "min" else "maximize"
    return [
        perplexity_curves(curves, exp_dir / "val_perplexity_curves.png", baseline),
        *search_plots(search.params, scored, exp_dir, direction, "best_val_perplexity"),
    ]


def _pareto(search: SearchFile, rows: list[dict], front: list[dict], exp_dir: Path) -> list[Path]:
    """With several objectives: the Pareto front (`front`, its rows) as a plot of the first two and as a table."""
    objectives = search.tune.objectives
    if not (objectives and front):
        return []
    names = [o["metric"] for o in objectives[:2]]
    points = [
        (objective_value(r, names[0]), objective_value(r, names[1]), r["trial_id"])
        for r in rows
        if all(objective_value(r, n) is not None for n in names) and r["status"] == "ok"
    ]
    plot = pareto_plot(points, {r["trial_id"] for r in front}, names, exp_dir / "pareto_front.png")
    table = io.StringIO()
    fields = ["trial_id", *[o["metric"] for o in objectives], *search.searched]
    writer = csv.DictWriter(table, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({**r, **{o["metric"]: objective_value(r, o["metric"]) for o in objectives}} for r in front)
    return [plot, atomic_write_text(exp_dir / "pareto_front.csv", table.getvalue())]


def _version_tags(search: SearchFile, best: dict | None, exp_dir: Path, baseline: float | None) -> dict:
    """The tags of the champion's registered model version (none without a best trial)."""
    if best is None:
        return {}
    return {
        "method": best["_config"].get("method", search.config.method),
        "trial_id": best["trial_id"],
        "val_perplexity": f"{best['best_val_perplexity']:.6g}",
        "search": exp_dir.name,
        "baseline_perplexity": f"{baseline:.6g}" if baseline else "",
        # what decides whether it may take the alias from the version holding it (ranked as the trials are)
        **champion_identity(trial_config(search.base, best["_config"]), "val_perplexity", search.tune.mode),
    }


def finish_search(
    search: SearchFile,
    tracker: SearchTracker,
    rows: list[dict],
    ranked: list[dict],
    exp_dir: Path,
    warm_seconds: float,
    total_seconds: float,
    budget_note: str | None = None,
    promote: bool = False,
) -> SearchOutcome:
    """The search's end from its summary rows: plots, the Pareto front, the champion copied and saved as an MLflow
    model, the best trials' models, everything sent to MLflow (`tracker.finish`), and the outcome the command prints."""
    baseline = next((r["baseline_perplexity"] for r in rows if r["baseline_perplexity"]), None)
    objectives = search.tune.objectives
    front = [r for r in rows if r.get("pareto")]
    artifacts = [
        exp_dir / "summary.csv",
        *_figures(search, rows, exp_dir, baseline),
        *_pareto(search, rows, front, exp_dir),
    ]
    champion, best = champion_of(ranked, exp_dir)
    model = None
    if champion is not None:
        model = save_pyfunc(champion, exp_dir / "champion_model")
    top = top_models(
        ranked, best if champion is not None else None, model, exp_dir, search.mlflow.keep_top, search.tune.name
    )
    counts = TrialCounts.of(rows)
    metrics = {
        "trials": counts.trials,
        "trials_stopped_early": counts.stopped_early,
        "trials_failed": counts.failed,
        "trials_diverged": counts.diverged,
        "trials_cut": counts.cut,
        "trials_lost": counts.lost,
        "warm_cache_seconds": warm_seconds,
        "search_seconds": total_seconds,
        "total_steps": sum(r["steps"] for r in rows),
    }
    if best is not None:
        metrics.update(best_val_perplexity=best["best_val_perplexity"], baseline_perplexity=baseline or float("nan"))
    register_as = search.mlflow.register_as if champion else None
    tags = _version_tags(search, best, exp_dir, baseline)
    tracker.finish(
        metrics, artifacts, champion, register_as, model, best["trial_id"] if best else None, tags, top, promote
    )
    state = tracker.state
    return SearchOutcome(
        exp_dir,
        tracker.tracking_uri,
        tracker.experiment,
        tracker.parent_id,
        tracker.pending,
        best=None if best is None else {k: v for k, v in best.items() if not k.startswith("_")},
        champion=champion,
        champion_model=model,
        top_models=[t["trial"] for t in top],
        registration=Registration(
            register_as,
            state["registered_version"],
            state.get("champion_moved", True),
            state.get("champion_line"),
            state.get("registration_refused"),
        ),
        pareto_front=[
            {
                "trial_id": r["trial_id"],
                **{o["metric"]: objective_value(r, o["metric"]) for o in objectives},
                **{k: r.get(k) for k in search.searched},
            }
            for r in front
        ],
        counts=counts,
        warm_cache_seconds=warm_seconds,
        search_seconds=total_seconds,
        total_steps=metrics["total_steps"],
        budget_note=budget_note,
    )
