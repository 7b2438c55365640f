"""Figures of a search, drawn from the logged results (never from typed-in numbers)."""
from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .fsutil import atomic_write  # noqa: E402
from .space import optuna_value  # noqa: E402


def perplexity_curves(curves: dict[str, tuple[list[int], list[float]]], path: Path, baseline: float | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, (steps, ppl) in curves.items():
        ax.plot(steps, ppl, marker="o", markersize=3, linewidth=1.2, label=label)
    if baseline:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label="frozen baseline")
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("validation perplexity")
    ax.set_title("Validation perplexity of every trial")
    if len(curves) <= 16:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))  # a full disk leaves no 0-byte plot
    plt.close(fig)
    return path


def optuna_plots(params, rows: list[tuple[dict, float]], directory: Path, direction: str = "minimize") -> list[Path]:
    """Optuna's optimization-history and parallel-coordinate plots, from a study rebuilt from the
    trials' params and best values (the search's own study lives inside Ray's searcher)."""
    import optuna  # a second or so to import: only searches that draw these plots pay for it
    from optuna.visualization import matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction)
    dists = {p.key: p.optuna_distribution() for p in params if p.kind != "fixed"}
    for values, score in rows:
        present = {k: optuna_value(v) for k, v in values.items() if k in dists}
        study.add_trial(optuna.trial.create_trial(params=present, distributions={k: dists[k] for k in present}, value=score))
    out = []
    if not study.trials:
        return out
    for name, fn in (("optimization_history.png", ovm.plot_optimization_history),
                     ("parallel_coordinate.png", ovm.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                # matplotlib's "identical low and high ylims" when every trial drew the same value of a
                # parameter: it widens the axis itself, so the figure is fine and the warning is noise
                warnings.filterwarnings("ignore", message="Attempting to set identical")
                warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the plot API's label
                ax = fn(study)
        except (ValueError, RuntimeError):
            continue  # e.g. parallel coordinates need at least one searched parameter
        fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
        fig.set_size_inches(9, 5)
        fig.tight_layout()
        atomic_write(directory / name, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        out.append(directory / name)
    return out


def pareto_plot(points: list[tuple[float, float, str]], front: set[str], names: list[str], path: Path) -> Path:
    """Every trial on the first two objectives, the Pareto front joined and labelled."""
    fig, ax = plt.subplots(figsize=(7, 5))
    others = [p for p in points if p[2] not in front]
    on = sorted((p for p in points if p[2] in front), key=lambda p: p[0])
    if others:
        ax.scatter([p[0] for p in others], [p[1] for p in others], color="grey", s=18, label="trials")
    ax.plot([p[0] for p in on], [p[1] for p in on], color="tab:red", marker="o", label="Pareto front")
    for x, y, label in on:
        ax.annotate(label.split("_")[-1], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    if names[1] == "trainable_params":
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))  # a full disk leaves no 0-byte plot
    plt.close(fig)
    return path
