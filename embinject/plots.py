"""Figures of a search, drawn from the logged results (never from typed-in numbers)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .fsutil import atomic_write  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """The figure as a PNG at path, written whole or not at all; the figure is closed."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))  # a full disk leaves no 0-byte plot
    plt.close(fig)
    return path


def perplexity_curves(
    curves: dict[str, tuple[list[int], list[float]]], path: Path, baseline: float | None = None
) -> Path:
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
    return save_figure(fig, path)


@dataclass
class ScoredTrial:
    """One trial as the search's pictures show it: its id (as in summary.csv and its MLflow run's name), the values
    it drew (an inactive conditional parameter absent), and its score on the search's metric."""

    trial_id: str
    values: dict
    score: float


def _short(text: str, width: int = 14) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _category(value) -> str:
    """A choice as a tick label: a list (target_modules) as its items joined, not JSON with quotes."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _trials(n: int) -> str:
    return f"{n} trial" + ("" if n == 1 else "s")


def _axis_name(key: str) -> str:
    """`adapter.prefix_len` on two lines, so neighbouring axes' names never overlap."""
    section, _, name = key.rpartition(".")
    return f"{section}.\n{name}" if section else key


def _numeric_axis(values: list[float], log: bool, integer: bool = False):
    """value -> height in [0, 1] over the values drawn, and the labelled heights: the ends and the middle, or
    every integer drawn where there are few."""
    lo, hi = min(values), max(values)
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    span = hi - lo

    def height(v):
        x = math.log10(v) if log else v
        return 0.5 if span == 0 else (x - lo) / span

    if integer and len(set(values)) <= 6:
        return height, [(height(v), str(int(v))) for v in sorted(set(values))]
    marks = [lo] if span == 0 else [lo, lo + span / 2, hi]
    return height, [(0.5 if span == 0 else (m - lo) / span, f"{10**m if log else m:.3g}") for m in marks]


def parallel_coordinate_figure(params, trials: list[ScoredTrial], metric: str):
    """One panel per set of active parameters (a conditional parameter's condition), so a trial's line crosses only
    the axes of parameters it drew: none shows an inactive parameter as a value. The metric's axis comes first, on
    the same scale and colours in every panel."""
    searched = [p for p in params if p.kind != "fixed" and any(p.key in t.values for t in trials)]
    conditions = sorted({k for p in searched for k in p.when})
    panels: dict[tuple, list[ScoredTrial]] = {}
    for t in trials:
        panels.setdefault(tuple(p.key for p in searched if p.key in t.values), []).append(t)
    scores = [t.score for t in trials]
    lo, hi = min(scores), max(scores)
    norm = matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1)
    cmap = plt.get_cmap("viridis_r")  # the best (lowest perplexity) trials brightest
    score_axis = _numeric_axis(scores, log=False)
    axes_of = {}
    for p in searched:
        drawn = [t.values[p.key] for t in trials if p.key in t.values]
        if p.kind == "choice":
            cats = [c for c in p.args if c in drawn] + [v for v in drawn if v not in p.args]
            cats = [c for i, c in enumerate(cats) if c not in cats[:i]]
            n = len(cats)
            spots = {json.dumps(c, default=str): (0.5 if n == 1 else i / (n - 1)) for i, c in enumerate(cats)}
            axes_of[p.key] = (
                lambda v, s=spots: s[json.dumps(v, default=str)],
                [(h, _short(_category(c))) for c, h in zip(cats, spots.values())],
            )
        else:
            numbers = [float(v) for v in drawn]
            axes_of[p.key] = _numeric_axis(numbers, p.kind == "loguniform", p.kind.endswith("randint"))
    drawn_axes = []  # per panel, biggest first: its trials and the axes it draws
    for keys, members in sorted(panels.items(), key=lambda kv: -len(kv[1])):
        # a condition every trial of the panel shares is named in its title, not drawn as a flat axis
        shown = [
            k
            for k in keys
            if k not in conditions
            or len(panels) == 1
            or len({json.dumps(t.values[k], default=str) for t in members}) > 1
        ]
        drawn_axes.append((members, [metric, *shown]))
    columns = max(len(names) for _, names in drawn_axes)
    fig, axs = plt.subplots(
        len(panels), 1, figsize=(max(7.0, 1.6 * columns), 0.8 + 2.6 * len(panels)), squeeze=False, layout="constrained"
    )
    for ax, (members, names) in zip(axs[:, 0], drawn_axes):
        layout = [score_axis, *[axes_of[k] for k in names[1:]]]
        for t in sorted(members, key=lambda t: -t.score if lo < hi else 0):  # the best drawn last, on top
            ys = [score_axis[0](t.score)] + [axes_of[k][0](t.values[k]) for k in names[1:]]
            ax.plot(range(len(names)), ys, color=cmap(norm(t.score)), linewidth=1.4, marker="o", markersize=3)
        for x, (_, marks) in enumerate(layout):
            ax.axvline(x, color="grey", linewidth=0.8, zorder=0)
            for y, label in marks:
                ax.text(
                    x + 0.04,
                    y,
                    label,
                    fontsize=7,
                    va="center",
                    ha="left",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5},
                )
        ax.set_xticks(range(len(names)), [_axis_name(n) for n in names], fontsize=8)
        ax.set_xlim(-0.15, columns - 0.35)  # the same for every panel, so its columns line up
        ax.set_ylim(-0.08, 1.08)
        ax.set_yticks([])
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        when = {k: sorted({_category(t.values[k]) for t in members if k in t.values}) for k in conditions}
        where = ", ".join(f"{k} = {' or '.join(v)}" for k, v in when.items() if v)
        ax.set_title(
            f"{where}: {_trials(len(members))}" if where and len(panels) > 1 else _trials(len(members)),
            fontsize=9,
            loc="left",
        )
    colours = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    bar = fig.colorbar(colours, ax=axs[:, 0].tolist(), fraction=0.03, pad=0.02)
    bar.set_label(metric)
    fig.suptitle(f"Parallel coordinates: each trial's parameters and its {metric}", fontsize=10)
    return fig


def optimization_history_figure(trials: list[ScoredTrial], metric: str, direction: str = "minimize"):
    """Each trial's score in the order the search ran them, named by trial id, and the best so far."""
    better = min if direction == "minimize" else max
    best, so_far = None, []
    for t in trials:
        best = t.score if best is None else better(best, t.score)
        so_far.append(best)
    fig, ax = plt.subplots(figsize=(min(16.0, max(7.0, 0.35 * len(trials) + 2)), 4.5))
    xs = range(len(trials))
    ax.scatter(xs, [t.score for t in trials], color="tab:blue", s=22, zorder=3, label=f"the trial's {metric}")
    ax.step(xs, so_far, where="post", color="tab:red", linewidth=1.2, label="best so far")
    step = max(1, math.ceil(len(trials) / 40))  # at most 40 names, so they never overlap
    ax.set_xticks(list(xs)[::step], [t.trial_id for t in trials][::step], rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("trial (in the order the search started them)")
    ax.set_ylabel(metric)
    ax.set_title(f"Optimization history: {metric} of every trial")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def search_plots(
    params, trials: list[ScoredTrial], directory: Path, direction: str = "minimize", metric: str = "best_val_perplexity"
) -> list[Path]:
    """optimization_history.png and parallel_coordinate.png, drawn from the trials' values and scores."""
    if not trials:
        return []
    out = [save_figure(optimization_history_figure(trials, metric, direction), directory / "optimization_history.png")]
    if any(p.kind != "fixed" for p in params):  # parallel coordinates need a searched parameter
        figure = parallel_coordinate_figure(params, trials, metric)
        out.append(save_figure(figure, directory / "parallel_coordinate.png"))
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
    return save_figure(fig, path)


def best_trial_figure(
    curves: dict[str, tuple[list[int], list[float]]],
    best: str | None,
    metric_value: float | None,
    baseline: float | None = None,
    title: str = "",
):
    """The report's figure: every trial's validation curve in grey and the best trial's in colour, its id and
    score written beside its best point, so a reader sees which curve won and by how much."""
    fig, ax = plt.subplots(figsize=(8, 5))
    others = [t for t in curves if t != best]
    for i, t in enumerate(others):
        steps, ppl = curves[t]
        ax.plot(
            steps,
            ppl,
            color="grey",
            alpha=0.55,
            linewidth=1,
            marker="o",
            markersize=2,
            label=f"other trials ({len(others)})" if i == 0 else None,
        )
    if best in curves:
        steps, ppl = curves[best]
        ax.plot(
            steps, ppl, color="tab:red", linewidth=2.2, marker="o", markersize=4, label=f"best trial {best}", zorder=3
        )
        low = min(range(len(ppl)), key=ppl.__getitem__)
        score = metric_value if metric_value is not None else ppl[low]
        ax.scatter([steps[low]], [ppl[low]], marker="*", s=220, color="tab:red", edgecolor="black", zorder=4)
        right = steps[low] > (min(min(c[0]) for c in curves.values()) + max(max(c[0]) for c in curves.values())) / 2
        ax.annotate(
            f"best trial {best}\nbest_val_perplexity {score:.4g}",
            (steps[low], ppl[low]),
            xytext=(-14 if right else 14, 18),
            ha="right" if right else "left",  # the label inside the axes
            textcoords="offset points",
            fontsize=9,
            color="tab:red",
            fontweight="bold",
            bbox={"facecolor": "white", "edgecolor": "tab:red", "alpha": 0.85},
        )
    if baseline:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label=f"frozen baseline {baseline:.4g}")
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("validation perplexity")
    ax.set_title(f"{title + ': v' if title else 'V'}alidation perplexity, best trial marked")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
