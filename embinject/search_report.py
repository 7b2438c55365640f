"""A search's report: its trials best-first with their parameters, and the validation curves with the best trial
marked, as Markdown + PNG (what `embinject report` writes; a terminal gets the tables as aligned plain text).

From a search directory it reads what the search wrote (summary.csv, Ray Tune's per-trial results);
from a parent run id it reads MLflow, so a search run on another machine can be reported too.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .fsutil import damaged, read_json_object
from .plots import best_trial_figure, save_figure
from .tracking import TIME_SPLIT, WALL, curve_value, search_metrics

# What results.summarize writes for every trial, besides one column per searched key.
SUMMARY_COLUMNS = (
    "trial_id",
    "final_val_perplexity",
    "best_val_perplexity",
    "baseline_perplexity",
    "steps",
    "stopped_early",
    "status",
)
# lost_at_kill: a trial started just before its search's driver was killed, before Ray's saved state named it; on
# --resume Ray forgot it (its searcher proposed another in its place), its folder and reports stay
SUMMARY_STATUSES = ("ok", "error", "diverged", "cut", "not_started", "lost_at_kill")
FIXED = (
    "trial_id",
    "final_val_perplexity",
    "best_val_perplexity",
    "baseline_perplexity",
    "steps",
    "evaluations",
    "stopped_early",
    "status",
    "seconds",
    "node_id",
    *TIME_SPLIT,
    WALL,
)


def finite_number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _summary_problem(header: list[str], rows: list[list[str]], searched: list[str], reported: set[str]) -> str | None:
    """What makes summary.csv's table other than what results.summarize wrote, or None."""
    if not header:
        return "empty"
    missing = [c for c in (*SUMMARY_COLUMNS, *searched) if c not in header]
    if missing:
        return f"its header lacks {', '.join(missing)}: renamed or overwritten"
    if not rows:
        return "a header and no trial rows"
    for i, cells in enumerate(rows, 1):
        if len(cells) != len(header):
            return f"trial row {i} has {len(cells)} of {len(header)} fields: cut or edited"
        row = dict(zip(header, cells))
        numbers = [row[c] for c in ("final_val_perplexity", "best_val_perplexity", "baseline_perplexity") if row[c]]
        if (
            not row["trial_id"]
            or row["status"] not in SUMMARY_STATUSES
            or not row["steps"].isdigit()
            or row["stopped_early"] not in ("True", "False")
            or not all(_numeric(v) for v in numbers)
        ):
            return (
                f"trial row {i} is not a row embinject writes (trial_id {row['trial_id']!r}, status {row['status']!r})"
            )
    lost = sorted(reported - {cells[header.index("trial_id")] for cells in rows})
    if lost:
        return (
            f"it lists {len(rows)} trial{'s' * (len(rows) != 1)}, but {len(lost)} more reported results in this folder "
            f"(trial_{', trial_'.join(lost[:3])}): rows were lost"
        )
    return None


def read_summary(file: Path, key: str, hint: str, searched: list[str] = ()) -> list[dict]:
    """summary.csv's rows, each as results.summarize wrote it; one ConfigError naming the file when it is empty, not
    text, cut (mid-row, or rows lost: a trial folder with results has no row) or overwritten. A source that lost
    trials is refused rather than read in part: what it would inform TPE of is not that search."""
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise damaged(key, file, "not UTF-8 text", hint) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header, *rows = list(reader) or [[]]
    except csv.Error as exc:
        raise damaged(key, file, f"not CSV at line {reader.line_num}: {exc}", hint) from None
    if text.strip() and not text.endswith("\n"):
        raise damaged(key, file, f"cut mid-row: its last line (trial row {len(rows)}) has no line end", hint)
    reported = {
        d.name.removeprefix("trial_")
        for d in file.parent.glob("trial_*")
        if (d / "result.json").is_file() and (d / "result.json").stat().st_size
    }
    problem = _summary_problem(header, rows, searched, reported)
    if problem:
        raise damaged(key, file, problem, hint)
    return [dict(zip(header, cells)) for cells in rows]


def trial_reports(trial_dir: Path) -> list[dict]:
    """A trial's reports, from Ray Tune's result.json in its folder; a line cut by a kill, or not a JSON object, is left
    out (the reports before it stand)."""
    out = []
    file = trial_dir / "result.json"
    for line in file.read_text(errors="replace").splitlines() if file.is_file() else []:
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict):
            out.append(report)
    return out


def trial_folder_row(trial_dir: Path, searched: list[str], key: str, hint: str) -> dict | None:
    """A trial's row as far as its folder tells it (Ray's params.json and result.json): its values, its curve's last and
    best points, and `interrupted` where it had not ended; None for a folder of a trial that never started. For the
    trials a search's results do not name: an unfinished search's, and those Ray forgot at a kill."""
    params_file = trial_dir / "params.json"
    params = read_json_object(params_file, key, hint) if params_file.is_file() else {}
    reports = trial_reports(trial_dir)
    if not params and not reports:
        return None
    last = reports[-1] if reports else {}
    curve = [v for v in (finite_number(curve_value(r)) for r in reports if "step" in r) if v is not None]
    kept = finite_number(last.get("best_val_perplexity")) if last.get("final") and not last.get("diverged") else None
    return {
        "trial_id": trial_dir.name.removeprefix("trial_"),
        **{k: params.get(k) for k in searched},
        "best_val_perplexity": kept if kept is not None else min(curve, default=None),
        "final_val_perplexity": curve[-1] if curve else None,
        "baseline_perplexity": finite_number(last.get("baseline_perplexity")),
        "steps": int(last.get("step", 0) or 0),
        "evaluations": len(curve),
        "stopped_early": False,
        "status": "diverged" if last.get("diverged") else "ok" if last.get("final") else "interrupted",
        "seconds": round(float(last.get("time_total_s", 0.0) or 0.0), 2),
    }


def trial_curve(trial_dir: Path) -> list[tuple[int, float]]:
    """A trial's validation curve, (step, value) per report that has both (`tracking.curve_value`)."""
    return [
        (int(r["step"]), value)
        for r in trial_reports(trial_dir)
        if (value := finite_number(curve_value(r))) is not None and isinstance(r.get("step"), (int, float))
    ]


def read_curves(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Each trial's validation curve (`trial_curve`) by trial id, for the trials in `directory` that have one."""
    curves = {d.name.removeprefix("trial_"): trial_curve(d) for d in sorted(directory.glob("trial_*"))}
    return {trial: sorted(dict(points).items()) for trial, points in curves.items() if points}  # one value per step


def from_search_dir(directory: Path, searched: list[str] = ()) -> dict:
    """A finished search's folder as a report reads it; summary.csv checked as `read_summary` checks it (`searched`:
    columns it must have besides its own), one ConfigError naming the file otherwise."""
    summary = directory / "summary.csv"
    if not summary.is_file():
        if any(directory.glob("trial_*")):  # a search's folder, before its end wrote the table
            raise ConfigError(
                f"{directory}: this search has not finished (no summary.csv yet: it is running, or was "
                "stopped); finish it with `python -m embinject.tune SEARCH.yaml --resume`, or read its "
                "trials so far with embinject.load_search"
            )
        raise ConfigError(f"{directory}: no summary.csv (not a finished embinject search directory)")
    rows = read_summary(
        summary,
        "report",
        "the search wrote it at its end; restore it, or report the search from "
        "MLflow by its parent run id (embinject report PARENT_RUN_ID)",
        searched,
    )
    params = [k for k in (rows[0] if rows else {}) if k not in FIXED + ("pareto",)]
    plots = [directory / "pareto_front.png"] if (directory / "pareto_front.png").is_file() else []
    return {
        "title": directory.name,
        "source": str(directory),
        "rows": rows,
        "params": params,
        "curves": read_curves(directory),
        "plots": plots,
        "search": search_metrics(directory),
    }


@dataclass
class Table:
    """A table of the report, written as Markdown for report.md or aligned plain text for a terminal."""

    header: list[str]
    rows: list[list[str]]
    right: list[bool]  # right-aligned (numeric) columns

    def markdown(self) -> list[str]:
        escape = lambda v: v.replace("|", "\\|")  # noqa: E731
        return ["| " + " | ".join(self.header) + " |", "|" + "".join("---:|" if r else "---|" for r in self.right)] + [
            "| " + " | ".join(map(escape, row)) + " |" for row in self.rows
        ]

    def plain(self) -> list[str]:
        widths = [max(len(str(c)) for c in column) for column in zip(self.header, *self.rows)]

        def line(cells):
            return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, self.right)).rstrip()

        return [line(self.header), line(["-" * w for w in widths]), *map(line, self.rows)]


@dataclass
class Rendered:
    """A report in both forms (report.md is always Markdown; a terminal gets the plain one) and its figures."""

    markdown: str
    plain: str
    images: list[Path]


def time_table(rows: list[dict], search: dict) -> tuple[str, Table] | None:
    """Where a search's time went: per category its seconds summed over the trials and their share of the trials' summed
    wall time, what no category covers, and the search's own wall time (`search`: its parent run's metrics)."""
    timed = [r for r in rows if finite_number(r.get(WALL)) is not None]
    if not timed:
        return None  # a search from before the time split was measured
    wall = sum(finite_number(r[WALL]) for r in timed)
    sums = {k: sum(finite_number(r.get(k)) or 0.0 for r in timed) for k in TIME_SPLIT}
    sums["other"] = max(0.0, wall - sum(sums.values()))
    labels = {**TIME_SPLIT, "other": "other (in no category: a trainable's own start and end)"}
    summary = f"{len(timed)} trials took {wall:.1f} s together"
    seconds, warm = finite_number(search.get("search_seconds")), finite_number(search.get("warm_cache_seconds"))
    if seconds:
        warming = f" ({warm:.1f} s of it warming the caches)" if warm else ""
        summary += f"; the search took {seconds:.1f} s of wall time{warming}: x{wall / seconds:.2f} trials at a time"
    body = [[labels[k], f"{v:.1f}", f"{100 * v / max(wall, 1e-9):.1f}%"] for k, v in sums.items()]
    body.append(["trials' wall time", f"{wall:.1f}", "100%"])
    header = ["where", "seconds, summed over trials", "share of trial time"]
    return summary + ".", Table(header, body, [False, True, True])


def _cell(column: str, value) -> str:
    n = None if column == "trial_id" else finite_number(value)  # trial ids such as 249825e9 are not numbers
    if n is not None and not isinstance(value, bool) and str(value) not in ("True", "False"):
        return f"{n:.4g}" if not float(n).is_integer() else str(int(n))
    return str(value if value is not None else "")


def render(data: dict, directory: Path, metric: str = "best_val_perplexity") -> Rendered:
    rows = sorted(
        data["rows"], key=lambda r: (finite_number(r.get(metric)) is None, finite_number(r.get(metric)) or 0.0)
    )
    baseline = next(
        (finite_number(r.get("baseline_perplexity")) for r in rows if finite_number(r.get("baseline_perplexity"))), None
    )
    best = next((r for r in rows if finite_number(r.get(metric)) is not None and r.get("status", "ok") == "ok"), None)
    images = []
    if data["curves"]:
        curves = {t: ([s for s, _ in pts], [v for _, v in pts]) for t, pts in data["curves"].items()}
        figure = best_trial_figure(
            curves, best and str(best["trial_id"]), best and finite_number(best.get(metric)), baseline, data["title"]
        )
        images.append(save_figure(figure, directory / "report_val_perplexity.png"))
    columns = [
        "rank",
        "trial_id",
        *data["params"],
        "best_val_perplexity",
        "final_val_perplexity",
        "steps",
        "stopped_early",
        "status",
    ] + (["pareto"] if any("pareto" in r for r in rows) else [])
    for plot in data.get("plots", []):
        if plot.parent != directory:
            shutil.copy2(plot, directory / plot.name)
        images.append(directory / plot.name)
    cells = [[str(i)] + [_cell(c, r.get(c, "")) for c in columns[1:]] for i, r in enumerate(rows, 1)]
    numeric = [
        c == "rank" or (c != "trial_id" and any(finite_number(r.get(c)) is not None for r in rows)) for c in columns
    ]
    trials = Table(columns, cells, numeric)
    intro = f"Source: {data['source']}. {len(rows)} trials, best first (by {metric})" + (
        f"; frozen baseline perplexity {baseline:.4g}." if baseline else "."
    )
    times = time_table(rows, data.get("search", {}))
    title = f"Search report: {data['title']}"
    md = [f"# {title}", "", intro, "", *trials.markdown(), ""]
    plain = [title, "=" * len(title), "", intro, "", *trials.plain(), ""]
    if times:
        md += ["## Where the time went", "", times[0], "", *times[1].markdown(), ""]
        plain += ["Where the time went", "-" * 19, "", times[0], "", *times[1].plain(), ""]
    md += [f"![{p.stem}]({p.name})" for p in images]
    plain += [f"figure: {p}" for p in images]
    return Rendered("\n".join(md) + "\n", "\n".join(plain) + "\n", images)
