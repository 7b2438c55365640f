"""Faults injected for real, then MLflow, summary.csv and the result directories read back: a diverging
run and trial, SIGINT/SIGTERM of the search driver, SIGKILL of a trial worker, a real `mlflow server`
killed mid-search and started again, truncated caches, corrupt adapter directories."""

import csv
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from embinject import fsutil
from embinject.config_files import load_config
from embinject.encoders import cached_embeddings
from embinject.errors import ConfigError
from embinject.methods import load_method
from embinject.models import load_frozen_lm
from embinject.train import train, write_outputs
from embinject.train.__main__ import main as train_main
from embinject.space import load_search_file
from embinject.tune.__main__ import main as tune_main
from embinject.tune.driver.warm import read_warm_start

from .conftest import ROOT, free_port
from .test_bad_input import assert_one_error_line, run_main
from .test_tune import _check_study, _results, _without_redelivery, kill_session, read_mlflow, write_search

PY_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def tune_cmd(*args):
    return [sys.executable, "-m", "embinject.tune", *args]


def wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the search ended before {what}: exit {proc.returncode}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def trial_rows(storage: Path) -> dict[str, list[dict]]:
    return {t.name: _results(t) for t in sorted(storage.glob("*/trial_*"))}


def registered_versions(client, name: str) -> list:
    return list(client.search_model_versions(f"name='{name}'"))


# ---------------------------------------------------------------- divergence


def test_diverging_training_stops_at_once_and_keeps_the_earlier_adapter(tmp_path, tiny_overrides, capsys):
    sets = [x for o in tiny_overrides + ["method=prompt", "train.max_steps=30"] for x in ("--set", o)]
    out = tmp_path / "out"
    assert train_main(sets + ["--output-dir", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in (out / "adapter").iterdir() if p.is_file()}
    capsys.readouterr()
    # A random tiny LM cannot get 10x worse than itself, so the rule is tightened to make its first evaluation
    # count as diverged (the bundled model diverges for real in test_real.py).
    assert (
        train_main(sets + ["--set", "train.divergence_factor=0.5", "--set", "train.lr=0.5", "--output-dir", str(out)])
        == 1
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: training diverged at step 3: validation perplexity "), err
    assert "more than 0.5x the frozen model's" in err[0] and "lower train.lr (now 0.5)" in err[0], err
    assert {p.name: p.read_bytes() for p in (out / "adapter").iterdir() if p.is_file()} == before  # finite adapter kept


@pytest.fixture(scope="module")
def diverged_search(tmp_path_factory, tiny_model, shared_data):
    """A real search of 3 trials, run from its own directory with relative data and storage paths, as a user would:
    the first diverges (train.divergence_factor 0.5), the others train with the lm-mean and the fourier encoder. The
    tests below read its folder and MLflow store, or damaged copies of its folder; none changes them."""
    home = tmp_path_factory.mktemp("diverged")
    data = os.path.relpath(shared_data / "wikitext2_valid_detok", home)
    write_search(
        home / "s.yaml",
        tiny_model,
        data,
        Path("runs"),
        **{
            "search": {
                "train.divergence_factor": {"choice": [0.5, 10.0]},
                "adapter.embedding_model": {"choice": ["fourier", "lm-mean"]},
            },
            "tune.points_to_evaluate": [
                {"train.divergence_factor": 0.5, "adapter.embedding_model": "fourier"},
                {"train.divergence_factor": 10.0, "adapter.embedding_model": "lm-mean"},
                {"train.divergence_factor": 10.0, "adapter.embedding_model": "fourier"},
            ],
            "tune.num_samples": 3,
            "tune.search_alg": "random",
            "tune.scheduler": {"type": "none"},
            "mlflow.tracking_uri": "sqlite:///runs/mlflow.db",
        },
    )
    proc = subprocess.run(tune_cmd("s.yaml"), cwd=home, capture_output=True, text=True, timeout=600, env=PY_ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return home, next((home / "runs").glob("t-*")), proc


def test_a_diverging_trial_fails_as_diverged_and_the_search_goes_on(diverged_search):
    home, exp_dir, proc = diverged_search
    rows = (exp_dir / "summary.csv").read_text().splitlines()
    header = rows[0].split(",")
    statuses = [dict(zip(header, r.split(",")))["status"] for r in rows[1:]]
    assert sorted(statuses) == ["diverged", "ok", "ok"], rows
    client, parents, children = read_mlflow(f"sqlite:///{home / 'runs' / 'mlflow.db'}", "test-search")
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.tags["failure_reason"] == "diverged"
    assert (
        "training diverged at step 3" in failed[0].data.tags["error"]
        and failed[0].data.params["train.divergence_factor"] == "0.5"
    )
    assert sum(c.info.status == "FINISHED" for c in children) == 2
    champion = client.get_model_version_by_alias("test-adapter", "champion")
    assert champion.run_id in {c.info.run_id for c in children if c.info.status == "FINISHED"}  # never the diverged one
    weights = load_file(str(exp_dir / "champion" / "adapter.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert (
        json.loads((exp_dir / "champion" / "embinject.json").read_text())["config"]["train"]["divergence_factor"]
        == 10.0
    )
    study = _check_study(exp_dir)  # the diverged trial FAIL in Optuna's study too
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "FAIL"]


# ---------------------------------------------------------------- warm start from a damaged, repeated, narrowed source


def earlier_copy(exp_dir: Path, where: Path, keep=None) -> Path:
    """A copy of a search folder (without its checkpoints and models, which a warm start does not read); `keep`: only
    the trials whose summary row it accepts, as a search that ran only those would have left it."""
    copy = where / "earlier"
    shutil.copytree(exp_dir, copy, ignore=shutil.ignore_patterns("checkpoint_*", "champion*", "top_models"))
    if keep:
        header, *rows = (copy / "summary.csv").read_text().splitlines(keepends=True)
        names = header.strip().split(",")
        dropped = [r for r in rows if not keep(dict(zip(names, r.strip().split(","))))]
        (copy / "summary.csv").write_text(header + "".join(r for r in rows if r not in dropped), newline="")
        for r in dropped:
            shutil.rmtree(copy / f"trial_{r.split(',')[0]}")
    return copy


def nth_line_end(data: bytes, n: int) -> int:
    end = -1
    for _ in range(n):
        end = data.index(b"\n", end + 1)
    return end + 1


DAMAGED = [  # (file, what is done to its bytes, the reason the line gives)
    ("summary.csv", lambda b: random.Random(0).randbytes(2048), "not UTF-8 text"),
    ("summary.csv", lambda b: b.replace(b"trial_id", b"trial", 1), "its header lacks trial_id"),
    ("summary.csv", lambda b: b[: nth_line_end(b, 3) + 12], "cut mid-row"),
    ("summary.csv", lambda b: b"", "empty"),
    ("summary.csv", lambda b: b[: nth_line_end(b, 1)], "a header and no trial rows"),
    ("summary.csv", lambda b: b[: nth_line_end(b, 2)], "it lists 1 trial, but 2 more reported results in this folder"),
    ("search_space.txt", lambda b: b[: len(b) // 2], "not the JSON embinject writes"),
    ("embinject_search.state", lambda b: b[: len(b) // 2], "not the JSON embinject writes"),
    ("embinject_search.state", lambda b: b"", "empty"),
]


@pytest.mark.parametrize(
    "file, damage, reason",
    DAMAGED,
    ids=[
        "summary-random-bytes",
        "summary-header-renamed",
        "summary-cut-mid-row",
        "summary-empty",
        "summary-header-only",
        "summary-rows-lost",
        "space-truncated",
        "state-truncated",
        "state-empty",
    ],
)
def test_a_damaged_warm_start_folder_is_one_line_naming_the_file_and_nothing_is_created(
    diverged_search, tmp_path, file, damage, reason
):
    """A partial source (rows cut or lost) is refused like any other damage, never read in part. The real command,
    not a dry run: the search stops before it creates its folder or MLflow store."""
    home, exp_dir, _ = diverged_search
    copy = earlier_copy(exp_dir, tmp_path)
    (copy / file).write_bytes(damage((copy / file).read_bytes()))
    before = sorted(tmp_path.rglob("*"))
    store = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    sets = [f"tune.warm_start=[{copy}]", f"tune.storage_path={tmp_path / 'runs'}", f"mlflow.tracking_uri={store}"]
    code, out, err = run_main(tune_main, ["s.yaml", *[x for s in sets for x in ("--set", s)]], home)
    assert_one_error_line(code, err, f"tune.warm_start[0]: {copy / file} is damaged ({reason}")
    assert "restore it" in err
    assert sorted(tmp_path.rglob("*")) == before  # no search folder, no MLflow store, the copy as it was


@pytest.mark.parametrize(
    "case",
    [
        "named-three-times",
        "encoder-fixed-in-search",
        "encoder-fixed-in-base",
        "all-diverged-same-setup",
        "all-diverged-other-setup",
        "a-trial-never-started",
    ],
)
def test_warm_start_lines_count_each_search_once_leave_out_other_setups_and_say_what_informs_nothing(
    diverged_search, tmp_path, monkeypatch, case
):
    """The dry run prints what the search would start from (the search itself reads the same WarmStart)."""
    home, exp_dir, _ = diverged_search
    search = home / "s.yaml"
    label, parent = exp_dir.name, json.loads((exp_dir / "embinject_search.state").read_text())["parent"]
    same = f"warm start from {label}: the same setup; "
    if case == "named-three-times":  # by its folder, a link to it and its MLflow parent run
        (tmp_path / "link").symlink_to(exp_dir, target_is_directory=True)
        sets, informing = [f"tune.warm_start=[{exp_dir}, {tmp_path / 'link'}, runs:/{parent}]"], 2
        expected = [
            "warm start: tune.warm_start[1] names link, the same search as tune.warm_start[0]; its trials count once",
            f"warm start: tune.warm_start[2] names runs:/{parent} ({label}), the same search as "
            "tune.warm_start[0]; its trials count once",
            same + "2 of its 3 trials go to Optuna as completed trials (not trained again); the other 1 "
            "informs nothing (1 diverged)",
        ]
    elif case == "encoder-fixed-in-search":
        sets, informing = [f"tune.warm_start=[{exp_dir}]", "search.adapter.embedding_model=fourier"], 1
        expected = [
            same + "1 of its 3 trials go to Optuna as completed trials (not trained again); the other 2 inform "
            "nothing (1 diverged, 1 left out)",
            f"warm start: 1 trial of {label} is left out: trained with adapter.embedding_model=lm-mean, where "
            "this search fixes adapter.embedding_model=fourier (another setup)",
        ]
    elif case == "encoder-fixed-in-base":  # the file edited: the encoder no longer searched, lm-mean in its config
        spec = yaml.safe_load(search.read_text())
        del spec["search"]["adapter.embedding_model"]
        spec["adapter"]["embedding_model"], spec["tune"]["points_to_evaluate"] = "lm-mean", []
        search = tmp_path / "s.yaml"
        search.write_text(yaml.safe_dump(spec))
        sets, informing = [f"tune.warm_start=[{exp_dir}]"], 1
        expected = [
            same + "1 of its 3 trials go to Optuna as completed trials (not trained again); the other 2 inform "
            "nothing (2 left out)",
            f"warm start: 2 trials of {label} are left out: trained with adapter.embedding_model=fourier, "
            "where this search fixes adapter.embedding_model=lm-mean (another setup)",
        ]
    elif case == "a-trial-never-started":  # its time budget ended it before one trial ran: summarize's not_started row
        source = earlier_copy(exp_dir, tmp_path)
        with (source / "summary.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        row = next(r for r in rows if r["status"] == "diverged")
        shutil.rmtree(source / f"trial_{row['trial_id']}")
        row.update(
            {k: "" for k in row if k != "trial_id"},
            steps="0",
            evaluations="0",
            stopped_early="False",
            status="not_started",
        )
        with (source / "summary.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        sets, informing = [f"tune.warm_start=[{source}]"], 2
        expected = [
            "warm start from earlier: the same setup; 2 of its 3 trials go to Optuna as completed trials (not "
            "trained again); the other 1 informs nothing (1 cut by its search's end)"
        ]
    else:  # a search whose only trial diverged: the diverged one of the search above, kept alone
        source = earlier_copy(exp_dir, tmp_path, keep=lambda row: row["status"] == "diverged")
        sets, informing = [f"tune.warm_start=[{source}]"], 0
        sets += ["train.max_steps=9"] if case.endswith("other-setup") else []
        setup = "the same setup" if case.endswith("same-setup") else "another setup (train.max_steps differ)"
        expected = [
            f"warm start from earlier: {setup}; it informs nothing: no trial of it has a value TPE can use (1 diverged)"
        ]
    argv = [str(search), "--dry-run", *[x for s in sets for x in ("--set", s)]]
    code, out, err = run_main(tune_main, argv, home)
    assert code == 0, err
    assert [line for line in out.splitlines() if line.startswith("warm start")] == expected
    # and what Optuna is given: only the trials the line counts, once each
    monkeypatch.chdir(home)  # the search file's relative paths, as the command resolved them
    warm = read_warm_start(load_search_file(search, sets))
    assert sum(t.ok for t in warm.completed) + len(warm.prior) == informing


# ---------------------------------------------------------------- interrupting the driver


def long_search(tmp_path: Path, tiny_model: str, **extra) -> tuple[Path, Path]:
    storage = tmp_path / "runs"
    path = write_search(
        tmp_path / "s.yaml",
        tiny_model,
        "builtin:python-docs",
        storage,
        **{
            "train.max_steps": 150,
            "train.max_epochs": 100,
            "train.eval_every": 10,
            "tune.num_samples": 3,
            "tune.max_concurrent_trials": 1,
            "tune.scheduler": {"type": "none"},
            **extra,
        },
    )
    return path, storage


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupted_search_is_killed_not_finished_and_resumes_once(tmp_path, tiny_model, signum):
    # SIGINT: a packed search (two trials share each step), which --resume must finish with one champion as well
    packed = (
        {"tune.pack": 2, "tune.max_concurrent_trials": 2, "tune.resources": {"cpus": 2, "gpus": 0}}
        if signum == signal.SIGINT
        else {}
    )
    path, storage = long_search(tmp_path, tiny_model, **packed)
    proc = subprocess.Popen(
        tune_cmd(str(path)),
        cwd=ROOT,
        env=PY_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: (
                any(r and r[-1].get("final") for r in trial_rows(storage).values())
                and any(len(r) >= 2 and not r[-1].get("final") for r in trial_rows(storage).values())
            ),
            300,
            "one finished and one running trial",
            proc,
        )
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        kill_session(proc.pid, child=proc)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "resume with: python -m embinject.tune" in err and "--resume" in err
    client, parents, children = read_mlflow(f"sqlite:///{storage / 'mlflow.db'}", "test-search")
    assert parents[0].info.status == "KILLED"
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"} and any(
        c.info.status == "KILLED" for c in children
    )
    assert registered_versions(client, "test-adapter") == []  # nothing registered from a partial search
    finished_before = {t: len(r) for t, r in trial_rows(storage).items() if r and r[-1].get("final")}
    deleted = {}
    if (
        signum == signal.SIGTERM
    ):  # the finished trials' checkpoints are deleted: the champion must come from one on disk
        for trial in finished_before:
            for ckpt in storage.glob(f"*/{trial}/checkpoint_*"):
                shutil.rmtree(ckpt)
            deleted[trial.removeprefix("trial_")] = trial_rows(storage)[trial][-1]["best_val_perplexity"]

    # Ray restores its trials only with the trainable they started with (packed or alone): a resume under which
    # tune.pack resolves otherwise is refused in one line, before anything runs, and the parent run stays KILLED
    exp_dir = next(storage.glob("t-*"))
    alone, packs = "'off', every trial alone", "2, packs of 2"  # write_search sets tune.pack: off
    then, now, again = (packs, "'off', every trial alone", 2) if packed else (alone, packs, "off")
    other = subprocess.run(
        tune_cmd(str(path), "--resume", "--set", f"tune.pack={'off' if packed else 2}"),
        cwd=ROOT,
        env=PY_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    one_line = [line for line in other.stderr.splitlines() if line.strip()]
    assert other.returncode == 2 and one_line == [
        f"error: --resume: tune.pack resolves otherwise than when search {exp_dir.name} started ({then} then, {now} "
        f"now) and Ray restores its trials only as they started: resume with --set tune.pack={again}, or start a new "
        "search without --resume"
    ], other.stdout[-2000:] + other.stderr[-3000:]
    _, parents, _ = read_mlflow(f"sqlite:///{storage / 'mlflow.db'}", "test-search")
    assert parents[0].info.status == "KILLED" and parents[0].data.tags["stopped_by"] == signal.Signals(signum).name

    resumed = subprocess.run(
        tune_cmd(str(path), "--resume"), cwd=ROOT, env=PY_ENV, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    client, parents, children = read_mlflow(f"sqlite:///{storage / 'mlflow.db'}", "test-search")
    assert parents[0].info.status == "FINISHED" and len(children) == 3
    assert "stopped_by" not in parents[0].data.tags and "resumed_at" in parents[0].data.tags  # the signal is history
    assert all(c.info.status == "FINISHED" for c in children)
    assert len(registered_versions(client, "test-adapter")) == 1
    state = json.loads((exp_dir / "embinject_search.state").read_text())  # Ray's restore does not copy it back
    assert not (exp_dir / "embinject_search.json").exists()
    assert state["applied"] == len((exp_dir / "mlflow_journal.jsonl").read_text().splitlines())
    if deleted:
        version = registered_versions(client, "test-adapter")[0]
        winner = version.tags["trial_id"]
        assert winner not in deleted and f"best trial {winner}:" in resumed.stdout
        assert any(storage.glob(f"*/trial_{winner}/checkpoint_*"))
        better_gone = [t for t, ppl in deleted.items() if ppl < float(version.tags["val_perplexity"])]
        assert ("are not on disk; the champion is trial " + winner in resumed.stderr) == bool(better_gone), (
            resumed.stderr
        )
    for name, rows in trial_rows(storage).items():
        steps = [r["step"] for r in _without_redelivery(rows)]
        assert steps == sorted(set(steps)) and steps[-1] == 150, (name, steps)
        if name in finished_before:
            assert len(_without_redelivery(rows)) == finished_before[name]  # not run again
    _check_study(exp_dir, rel=1e-4)  # Optuna's study went on: each trial once (a redelivered step in rounding)

    code, out, err = run_main(tune_main, [str(path), "--resume"], ROOT)  # in this process: no Ray starts for it
    assert code == 0 and "already finished" in out, out + err
    assert len(registered_versions(client, "test-adapter")) == 1


# ---------------------------------------------------------------- a trial worker dies


@pytest.mark.parametrize("killed", ["member", "host"])
def test_a_killed_pack_member_or_host_restarts_from_checkpoints(tmp_path, tiny_model, killed):
    """A killed trial process restarts from its checkpoint and rejoins its pack; a killed pack host fails its members,
    which restart from their checkpoints in a host the search's starter starts (their processes cannot: no torch)."""
    path, storage = long_search(
        tmp_path,
        tiny_model,
        **{
            "tune.num_samples": 2,
            "tune.max_failures": 2,
            "tune.pack": 2,
            "tune.max_concurrent_trials": 2,
            "tune.resources": {"cpus": 2, "gpus": 0},
        },
    )
    proc = subprocess.Popen(
        tune_cmd(str(path)),
        cwd=ROOT,
        env=PY_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        victim, rows = wait_for(
            lambda: next(
                ((t, r) for t, r in trial_rows(storage).items() if len(r) >= 3 and not r[-1].get("final")), None
            ),
            300,
            "a running trial",
            proc,
        )
        os.kill(rows[-1]["pid" if killed == "member" else "pack_pid"], signal.SIGKILL)  # as the OOM killer would
        out, err = proc.communicate(timeout=600)
    finally:
        kill_session(proc.pid, child=proc)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    all_rows = trial_rows(storage)
    assert len(all_rows) == 2
    for name, trial in all_rows.items():
        steps = [r["step"] for r in _without_redelivery(trial)]
        assert steps == sorted(set(steps)) and steps[-1] == 150, (name, steps)  # continued, never restarted from 0
    hosts = {r["pack_pid"] for rows in all_rows.values() for r in rows}
    _, parents, children = read_mlflow(f"sqlite:///{storage / 'mlflow.db'}", "test-search")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    restarts = {c.data.tags["trial_id"]: c.data.tags.get("restarts") for c in children}
    if killed == "member":
        assert len({r["pid"] for r in all_rows[victim]}) == 2  # a new trial process took over ...
        assert len(hosts) == 1  # ... and rejoined the same pack
        assert restarts[victim.removeprefix("trial_")] == "1" and list(restarts.values()).count(None) == 1
    else:
        assert len(hosts) == 2  # a new host took the pack over
        # the victim's partner failed with it unless it had finished first
        assert restarts[victim.removeprefix("trial_")] == "1"


# ---------------------------------------------------------------- the tracking server goes away


def start_mlflow_server(db: Path, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--default-artifact-root",
            str(db.parent / "art"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    import urllib.request

    def up():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        except OSError:
            return False

    wait_for(up, 90, "the MLflow server")
    return proc


def _sent_before_the_first_report(storage: Path) -> bool:
    """Every trial has started and MLflow has received all the search sent so far, and no trial has reported yet; or
    a trial reported already (then the outage begins at once, later than this test would like, never flaky)."""
    journal = next(storage.glob("t-*/mlflow_journal.jsonl"), None)
    if journal is None:
        return False
    ops = [json.loads(line)["op"] for line in journal.read_text().splitlines() if line.endswith("}")]
    if "trial_result" in ops:
        return True
    state = json.loads((journal.parent / "embinject_search.state").read_text())
    return ops.count("trial_start") == 3 and state["applied"] == len(ops)


def test_tracking_server_down_mid_search_loses_nothing(tmp_path, tiny_model):
    """The server goes away once every trial started and before any reported: the first report of a trial is the
    record it fails on. Everything the journal holds reaches MLflow once it is back, once: every evaluation, each
    trial's constants (baseline perplexity, start-up seconds) and its dtype and start tags."""
    port, db = free_port(), tmp_path / "server" / "mlflow.db"
    db.parent.mkdir()
    server = start_mlflow_server(db, port)
    # packed (the three trials share each step): what a packed search sends is kept and sent as well
    path, storage = long_search(
        tmp_path,
        tiny_model,
        **{
            "train.max_steps": 60,
            "mlflow.tracking_uri": f"http://127.0.0.1:{port}",
            "tune.pack": 3,
            "tune.max_concurrent_trials": 3,
            "tune.resources": {"cpus": 2, "gpus": 0},
        },
    )
    proc = subprocess.Popen(
        tune_cmd(str(path)),
        cwd=ROOT,
        env=PY_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: _sent_before_the_first_report(storage), 300, "every trial's start sent to MLflow", proc)
        kill_session(server.pid, child=server)  # the server goes away mid-search and stays away until the search ends
        started = time.time()
        out, err = proc.communicate(timeout=600)
    finally:
        kill_session(proc.pid, child=proc)
        kill_session(server.pid, child=server)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert "cannot be reached" in err and "are kept in" in err and "--resume" in err, err[-3000:]
    assert time.time() - started < 240  # it neither died nor stalled
    assert (storage.glob("t-*").__next__() / "champion" / "adapter.safetensors").is_file()

    server = start_mlflow_server(db, port)  # back, with the same store
    try:
        resumed = subprocess.run(
            tune_cmd(str(path), "--resume"), cwd=ROOT, env=PY_ENV, capture_output=True, text=True, timeout=300
        )
        assert resumed.returncode == 0 and "already finished" in resumed.stdout, resumed.stdout + resumed.stderr
        client, parents, children = read_mlflow(f"http://127.0.0.1:{port}", "test-search")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 3
        for child in children:
            assert child.info.status == "FINISHED"
            trial = next(storage.glob(f"t-*/trial_{child.data.tags['trial_id']}"))
            history = client.get_metric_history(child.info.run_id, "val_perplexity")
            # every evaluation logged, once
            assert sorted(h.step for h in history) == sorted({r["step"] for r in _results(trial)})
            for constant in ("baseline_perplexity", "startup_seconds"):
                assert len(client.get_metric_history(child.info.run_id, constant)) == 1, (
                    child.data.tags["trial_id"],
                    constant,
                )
            assert child.data.tags.get("dtype") in ("float32", "bfloat16") and child.data.tags.get(
                "trainable_started_at"
            ), child.data.tags
        assert len(registered_versions(client, "test-adapter")) == 1
    finally:
        kill_session(server.pid, child=server)


# ---------------------------------------------------------------- corrupt files


def test_truncated_cache_entries_are_named_deleted_and_rebuilt(tmp_path, tiny_overrides, monkeypatch, capfd):
    monkeypatch.setenv("EMBINJECT_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, tiny_overrides + ["method=injection", "train.max_steps=3"])
    first, m = train(cfg)
    entries = [p for sub in ("data", "embeddings", "baseline") for p in (tmp_path / "cache" / sub).iterdir()]
    assert {p.parent.name for p in entries} == {"data", "embeddings", "baseline"}
    for p in entries:
        p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 2)])  # as a kill mid-write would have left it
    capfd.readouterr()
    second, _ = train(cfg)
    err = capfd.readouterr().err
    for p in entries:
        assert f"warning: cache entry {p} is corrupt" in err, err
    assert (
        second["val_perplexity"] == first["val_perplexity"]
        and second["baseline_perplexity"] == first["baseline_perplexity"]
    )
    for p in entries:  # rebuilt, whole
        assert p.is_file() and (p.suffix != ".json" or json.loads(p.read_text()))


def test_a_cache_entry_over_the_bound_is_computed_not_kept_and_says_so(tmp_path, monkeypatch, capfd):
    import torch

    monkeypatch.setenv("EMBINJECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fsutil, "MAX_CACHED_BYTES", 1000)
    ids = torch.arange(64).view(4, 16)
    made = cached_embeddings(
        "fourier:test", ids, lambda: type("E", (), {"encode": lambda self, x: torch.ones(4, 100)})()
    )
    assert made.shape == (4, 100)
    err = capfd.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("warning: fourier:test embeddings of 0.0 GiB not kept in ")
        and "every process computes them" in err[0]
    )
    assert not any((tmp_path / "cache").rglob("*.safetensors"))  # nothing kept, nothing half-written


@pytest.fixture
def saved_adapters(tmp_path, tiny_overrides):
    out = {}
    for method in ("prompt", "injection", "lora"):
        cfg = load_config(None, tiny_overrides + [f"method={method}", "train.max_steps=2"])
        result, trained = train(cfg)
        write_outputs(tmp_path / method, result, trained)
        trained.release()
        out[method] = tmp_path / method / "adapter"
    return out


def test_corrupt_adapter_directories_are_named_in_one_line(saved_adapters, tiny_model):
    lm = load_frozen_lm(tiny_model)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}

    def problem(method: str, damage) -> str:
        d = saved_adapters[method]
        weights, meta = d / "adapter.safetensors", d / "embinject.json"
        saved = weights.read_bytes(), meta.read_text()
        damage(weights, meta)
        try:
            with pytest.raises(ConfigError) as err:
                load_method(d, lm.model, lm.tokenizer)
            return str(err.value)
        finally:
            weights.write_bytes(saved[0])
            meta.write_text(saved[1])

    def edit(meta, fn):
        data = json.loads(meta.read_text())
        fn(data)
        meta.write_text(json.dumps(data))

    def nan_weights(w, m):
        state = load_file(str(w))
        save_file({k: torch.full_like(v, math.nan) for k, v in state.items()}, str(w))

    cases = [
        (
            "prompt",
            lambda w, m: w.write_bytes(w.read_bytes()[:40]),
            "adapter.safetensors: not a readable safetensors file",
        ),
        (
            "injection",
            lambda w, m: w.write_bytes(os.urandom(512)),
            "adapter.safetensors: not a readable safetensors file",
        ),
        ("prompt", lambda w, m: m.write_text("{not json"), "embinject.json: not valid JSON"),
        ("prompt", lambda w, m: m.write_text("[1, 2]"), "embinject.json: expected a JSON object"),
        (
            "injection",
            lambda w, m: edit(m, lambda d: d["config"]["adapter"].update(mlp_width=48)),
            "does not match the injection adapter",
        ),
        (
            "prompt",
            lambda w, m: edit(m, lambda d: d["config"]["adapter"].update(prefix_len=7)),
            "tensor 'prompt' is [4, 64], expected [7, 64]",
        ),
        (
            "lora",
            lambda w, m: edit(m, lambda d: d["config"]["adapter"].update(rank=3)),
            "does not match the lora adapter",
        ),
        ("injection", lambda w, m: edit(m, lambda d: d.pop("encoder_dim")), "an injection adapter needs 'encoder_dim'"),
        ("prompt", lambda w, m: edit(m, lambda d: d.update(method="lora")), "'method' must be one of"),
        (
            "prompt",
            lambda w, m: edit(m, lambda d: d["config"]["train"].update(lr="fast")),
            "embinject.json: config.train.lr: expected a number",
        ),
        ("prompt", nan_weights, "holds NaN or infinite values"),
        ("prompt", lambda w, m: w.unlink(), "adapter.safetensors: adapter weights not found"),
    ]
    for method, damage, expected in cases:
        message = problem(method, damage)
        assert expected in message and "\n" not in message, (method, expected, message)
        assert str(saved_adapters[method]) in message
    after = lm.model.state_dict()
    # LoRA taken out again
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert load_method(saved_adapters["lora"], lm.model, lm.tokenizer) is not None  # undamaged copies still load


def test_a_packed_trial_whose_host_starter_is_gone_says_so_in_one_line(tmp_path):
    """The search's driver owns the actor that starts pack hosts; where it is gone, a packed trial that finds no host
    says what is missing and what to do, not Ray's "failed to look up actor"."""
    probe = (
        "import ray; ray.init(address='local', num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "from embinject.config import Config\n"
        "from embinject.tune.worker.member import find_host\n"
        "from embinject.tune.worker.pack_names import PackPlan\n"
        "try:\n"
        "    find_host(PackPlan(2, 'a test', 'k0', 'embinject-pack-k0-starter'), Config(), 0)\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
        "ray.shutdown()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=PY_ENV, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == [
        "pack host starter embinject-pack-k0-starter is gone (the search's driver starts it and owns it; it ends with "
        "the driver): this trial cannot start its pack host; resume the search with --resume"
    ], proc.stdout + proc.stderr[-3000:]
