"""The Python API (`embinject.search`, `embinject.load_search`): docs/python-api.md's example run as written (a real
search: Ray, Optuna, MLflow's registry, the bundled SmolLM2-135M), then its folder read back whole, interrupted and
damaged; and `import embinject` without Ray, MLflow, pandas or torch."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import embinject
from embinject.search_report import from_search_dir
from embinject.space import load_search_file, load_search_spec
from embinject.tune.driver.results import summarize
from embinject.tune.driver.warm_folder import from_folder

from .conftest import ROOT

PAGE = ROOT / "docs" / "python-api.md"


def page_code() -> str:
    """The page's Python blocks, in order, as one script: what a notebook runs cell by cell."""
    return "\n".join(re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S))


def python(code: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def test_import_embinject_is_light_and_the_api_loads_on_first_use_without_ray(tmp_path):
    heavy = ("ray", "mlflow", "pandas", "torch", "optuna", "embinject.tune")
    proc = python(
        f"import sys, embinject; print([m for m in {heavy} if m in sys.modules]); "
        "from embinject import search, load_search, SearchResult; print([m for m in ('ray', 'optuna') "
        "if m in sys.modules], search.__module__, embinject.api.search is search)",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["[]", "[] embinject.api True"]


@pytest.fixture(scope="module")
def page_search(tmp_path_factory):
    """The page's example, run as written in a folder of its own; its search folder."""
    cwd = tmp_path_factory.mktemp("notebook")
    proc = python(page_code(), cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folders = list((cwd / "runs" / "api-example").glob("api-example-*"))
    assert len(folders) == 1
    return cwd, folders[0]


def test_the_python_api_page_runs_as_written_and_reads_its_folder_back(page_search, monkeypatch):
    cwd, folder = page_search
    monkeypatch.chdir(cwd)
    result = embinject.load_search(folder.relative_to(cwd))
    assert result.folder == folder and result.finished and result.study_name == folder.name
    assert len(result.trials) == 3 and set(result.trials["status"]) == {"ok"}
    assert result.trials["trial_id"].map(type).eq(str).all() and result.trials["seconds"].gt(0).all()
    assert result.best.values.keys() == {"train.lr"} and result.best.adapter == folder / "champion"
    best = result.trials.set_index("trial_id").loc[result.best.trial_id]
    assert result.best.metrics["best_val_perplexity"] == best["best_val_perplexity"]
    assert result.pareto is None and result.outcome is None
    # the curves are Ray's reports of each trial: one point per evaluation (every 2 of its 4 steps)
    assert sorted(result.curves.groupby("trial_id")["step"].apply(list).tolist()) == [[2, 4]] * 3
    assert "Champion(" in repr(result.best) and "folder=" in repr(result)


def test_a_folder_read_while_interrupted_lists_its_trials_from_their_folders(page_search, tmp_path):
    """Before its end a search has no summary.csv: its trials come from their folders, those Ray saw end as ok."""
    _, folder = page_search
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("summary.csv", "champion*", "top_models"))
    result = embinject.load_search(copy)
    finished = embinject.load_search(folder)
    assert not result.finished and result.best is None and result.champion_uri == "models:/api-example/1"
    assert list(result.trials["trial_id"]) == sorted(finished.trials["trial_id"])
    assert set(result.trials["status"]) == {"ok"}  # each had reported its end
    merged = result.trials.merge(finished.trials, on="trial_id", suffixes=("", "_summary"))
    for column in ("train.lr", "best_val_perplexity", "final_val_perplexity", "steps"):
        assert merged[column].tolist() == pytest.approx(merged[f"{column}_summary"].tolist()), column


def test_a_trial_ray_forgot_at_a_kill_has_its_row_and_its_folder_still_reads(page_search, tmp_path, monkeypatch):
    """A trial started just before the driver was killed, before Ray's saved state named it: after --resume Ray's
    results lack it, its folder stays. summary.csv gives it a row (lost_at_kill), so that the finished search reads
    back (load_search, embinject report, a warm start), where its folder made it `rows were lost` before."""
    from ray.tune import ExperimentAnalysis, ResultGrid  # Ray Tune takes seconds to import: only here

    cwd, folder = page_search
    monkeypatch.chdir(cwd)
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("champion*", "top_models"))
    grid = ResultGrid(ExperimentAnalysis(str(copy)))  # Ray's results, read from its saved state as at the search's end
    source = sorted(copy.glob("trial_*"))[0]
    shutil.copytree(source, copy / "trial_f0rg0773")  # the forgotten trial: Ray's files, Ray's results lack it
    search = load_search_file(copy / "search.yaml")
    rows, ranked = summarize(grid, search, copy)
    lost = {r["trial_id"]: r for r in rows}["f0rg0773"]
    twin = {r["trial_id"]: r for r in rows}[source.name.removeprefix("trial_")]
    assert lost["status"] == "lost_at_kill" and lost["train.lr"] == pytest.approx(twin["train.lr"])
    assert lost["final_val_perplexity"] == pytest.approx(twin["final_val_perplexity"])
    assert "f0rg0773" not in {r["trial_id"] for r in ranked} and len(ranked) == 3  # never the champion
    result = embinject.load_search(copy)
    assert result.trials.set_index("trial_id").loc["f0rg0773", "status"] == "lost_at_kill"
    assert result.best.trial_id == embinject.load_search(folder).best.trial_id
    assert len(from_search_dir(copy)["rows"]) == 4
    statuses = {t["trial_id"]: t["status"] for t in from_folder("tune.warm_start", copy)["trials"]}
    assert statuses["f0rg0773"] == "lost_at_kill" and len(statuses) == 4


DAMAGED = [  # (file, what is done to its bytes, the line's reason)
    ("summary.csv", lambda b: b[: b.index(b"\n", b.index(b"\n") + 1) + 9], "cut mid-row"),
    ("summary.csv", lambda b: b.replace(b"trial_id", b"trial", 1), "its header lacks trial_id"),
    ("search_space.txt", lambda b: b[: len(b) // 2], "not the JSON embinject writes"),
    ("embinject_search.state", lambda b: b"", "empty"),
]


@pytest.mark.parametrize(
    "file, damage, reason", DAMAGED, ids=["summary-cut", "summary-header", "space-cut", "state-empty"]
)
def test_a_damaged_search_folder_is_one_line_naming_the_file(page_search, tmp_path, file, damage, reason):
    _, folder = page_search
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("champion*", "top_models", "checkpoint_*"))
    (copy / file).write_bytes(damage((copy / file).read_bytes()))
    with pytest.raises(embinject.ConfigError) as caught:
        embinject.load_search(copy)
    assert str(caught.value).startswith(f"load_search: {copy / file} is damaged ({reason}")
    assert "\n" not in str(caught.value) and "restore it" in str(caught.value)


def test_a_damaged_params_file_of_an_interrupted_search_is_named(page_search, tmp_path):
    _, folder = page_search
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("summary.csv", "champion*", "checkpoint_*"))
    params = next(copy.glob("trial_*/params.json"))
    params.write_text(json.dumps([1, 2]))
    with pytest.raises(embinject.ConfigError, match=re.escape(f"load_search: {params} is damaged (a JSON list")):
        embinject.load_search(copy)


@pytest.mark.parametrize(
    "where, expected",
    [
        ("missing", "load_search: no search folder at {missing}"),
        ("empty", "load_search: {empty} is not an embinject search folder (no search_space.txt or summary.csv)"),
    ],
)
def test_load_search_of_what_is_no_search_folder_says_so(tmp_path, where, expected):
    (tmp_path / "empty").mkdir()
    with pytest.raises(embinject.ConfigError) as caught:
        embinject.load_search(tmp_path / where)
    assert str(caught.value).startswith(expected.format(missing=tmp_path / "missing", empty=tmp_path / "empty"))


def test_a_search_given_as_a_dict_is_read_as_its_file_would_be_and_left_unchanged(tmp_path, tiny_model):
    import yaml

    spec = {
        "model": Path(tiny_model),
        "method": "prompt",
        "data": {"path": "builtin:python-docs", "seq_len": 32},
        "adapter": {"prefix_len": 2},
        "train": {"max_steps": 4},
        "search": {"train.lr": {"loguniform": (1.0e-3, 3.0e-2)}},
        "tune": {"name": "d", "storage_path": str(tmp_path / "runs"), "scheduler": {"type": "none"}},
    }
    before = repr(spec)
    file = tmp_path / "s.yaml"
    file.write_text(yaml.safe_dump(json.loads(json.dumps(spec, default=str))))
    from_dict = load_search_spec(spec, {"tune.num_samples": 5, "train.lr": 0.01})
    from_file = load_search_spec(file, ["tune.num_samples=5", "train.lr=0.01"])
    assert repr(spec) == before and from_dict.path is None and from_dict.source == "a search spec given as a dict"
    assert (from_dict.base, from_dict.tune, from_dict.mlflow) == (from_file.base, from_file.tune, from_file.mlflow)
    assert [p.describe() for p in from_dict.params] == [p.describe() for p in from_file.params]
    assert yaml.safe_load(from_dict.text)["model"] == tiny_model
    with pytest.raises(embinject.ConfigError, match=r"^tune\.seed: object is not a value a search file holds"):
        load_search_spec({**spec, "tune": {**spec["tune"], "seed": object()}})


def test_embinject_report_refuses_a_damaged_summary_in_one_line(page_search, tmp_path):
    from embinject import report as report_cli

    from .test_bad_input import assert_one_error_line, run_main

    _, folder = page_search
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("champion*", "top_models", "checkpoint_*"))
    (copy / "summary.csv").write_bytes((copy / "summary.csv").read_bytes()[:-3])
    code, _, err = run_main(report_cli.main, [str(copy)], tmp_path)
    assert_one_error_line(code, err, f"report: {copy / 'summary.csv'} is damaged (cut mid-row")
    assert not (copy / "report.md").exists()
