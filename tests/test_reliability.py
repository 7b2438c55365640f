"""Faults of long, shared searches, each tried for real (files, locks, a tmpfs, an MLflow SQLite store, the
command as a user runs it) and read back as a user sees it: the exit code, the one line, what is left on disk
and in MLflow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embinject.config_files import parse_override
from embinject.fsutil import scratch_dir, sweep_scratch
from embinject.space import load_search_file
from embinject.tracking import STATE_FILE, SearchTracker
from embinject.tune import __main__ as tune_cli
from embinject.tune.driver import folder
from embinject.tune.driver.run import BudgetEnd, ended_by_the_search
from embinject.tune.driver.folder import LOCK_FILE, new_search_dir, record_space, search_lock

from .conftest import ROOT
from .test_bad_input import assert_one_error_line, run_main
from .test_tune import write_search

PY_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def tune(*args, cwd=ROOT, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "embinject.tune", *args],
        cwd=cwd,
        env=PY_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(proc, expected: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (
        proc.stderr
    )


@pytest.mark.parametrize(
    "text, value",
    [
        ("tune.storage_path=runs/a #b", "runs/a #b"),  # YAML would have cut it at ' #'
        ("adapter.init_text=see #3 below", "see #3 below"),
        ("adapter.init_text=yes", "yes"),  # text stays text, not true
        ("adapter.init_text='quoted #1'", "quoted #1"),
        ("mlflow.register_as=null", None),
        ("train.patience=5", 5),
        ("search.adapter.init_text={choice: ['a #1', b]}", {"choice": ["a #1", "b"]}),
    ],
)
def test_set_values_are_yaml_only_where_the_key_needs_it(text, value):
    assert parse_override(text)[1] == value


def test_two_searches_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(folder.time, "strftime", lambda fmt: "20261130-120000")  # the same second, for certain
    first, second, third = (new_search_dir(tmp_path, "s") for _ in range(3))
    assert [p.name for p in (first, second, third)] == [
        "s-20261130-120000",
        "s-20261130-120000-2",
        "s-20261130-120000-3",
    ]
    for started in (first, third):
        (started / STATE_FILE).write_text("{}")
    assert folder.newest_search_dir(tmp_path, "s") == third  # --resume continues the newest that started


def test_resume_of_a_search_another_process_runs_is_refused(tmp_path, tiny_model):
    storage = tmp_path / "runs"
    path = write_search(tmp_path / "s.yaml", tiny_model, "builtin:python-docs", storage)
    exp_dir = new_search_dir(storage, "t")
    (exp_dir / STATE_FILE).write_text(json.dumps({"applied": 0}))
    with search_lock(exp_dir):  # held by this process, as a running search holds it
        before = sorted(p.name for p in exp_dir.iterdir())
        proc = tune(str(path), "--resume")
    one_error_line(proc, f"{exp_dir}: another embinject search (pid {os.getpid()}) is running in this folder")
    assert sorted(p.name for p in exp_dir.iterdir()) == before and (exp_dir / LOCK_FILE).is_file()


def test_resume_with_a_changed_search_file_is_refused(tmp_path, tiny_model):
    storage = tmp_path / "runs"
    path = write_search(tmp_path / "s.yaml", tiny_model, "builtin:python-docs", storage)
    exp_dir = new_search_dir(storage, "t")
    (exp_dir / STATE_FILE).write_text(json.dumps({"applied": 0}))
    record_space(exp_dir, load_search_file(path))  # as the search recorded it when it started
    spec = yaml.safe_load(path.read_text())
    spec["search"]["train.lr"] = {"loguniform": [1.0e-3, 1.0e-1]}
    path.write_text(yaml.safe_dump(spec))
    proc = tune(str(path), "--resume")
    one_error_line(proc, f"--resume: {path} is not the search {exp_dir.name} started with (search.train.lr: ")
    assert "start a new search without --resume" in proc.stderr


@pytest.mark.parametrize(
    "name, damage, what",
    [
        (STATE_FILE, "", "empty"),
        (
            STATE_FILE,
            '{"parent": "0a1b", "children": {"t1',
            "not the JSON embinject writes: cut or overwritten at line 1",
        ),
        (STATE_FILE, '{"parent": 7}', "not the search state embinject writes"),
        (folder.SPACE_FILE, '{"search": {}, "base": {}}', "no tune section"),
        (folder.SPACE_FILE, "[1, 2]", "a JSON list, not the object embinject writes"),
        (folder.PACK_FILE, "", "empty"),
        (folder.PACK_FILE, '{"setting": "off"}', "no tune.pack setting and pack size"),
    ],
    ids=[
        "state-empty",
        "state-cut",
        "state-overwritten",
        "space-no-tune",
        "space-a-list",
        "pack-empty",
        "pack-no-size",
    ],
)
def test_resume_of_a_search_whose_state_or_space_file_is_damaged_is_refused(tmp_path, tiny_model, name, damage, what):
    """The files --resume reads first (which MLflow runs the search continues, which space and pack size it started
    with), cut or
    overwritten: one line naming the file, exit 2, and the folder as it was (a traceback before)."""
    storage = tmp_path / "runs"
    path = write_search(tmp_path / "s.yaml", tiny_model, "builtin:python-docs", storage)
    exp_dir = new_search_dir(storage, "t")
    (exp_dir / STATE_FILE).write_text(json.dumps({"parent": "0a1b", "children": {}, "applied": 3}))
    record_space(exp_dir, load_search_file(path))
    # the file Tuner.can_restore looks for (never read here): the pack size is checked only where Ray restores trials
    (exp_dir / "tuner.pkl").write_bytes(b"")
    (exp_dir / name).write_text(damage)
    before = {p.name: p.read_bytes() for p in exp_dir.iterdir() if p.name != LOCK_FILE}
    code, out, err = run_main(tune_cli.main, [str(path), "--resume"], tmp_path)
    assert_one_error_line(code, err, f"error: --resume: {exp_dir / name} is damaged ({what}")
    assert err.rstrip().endswith("or start a new search without --resume"), err
    assert {p.name: p.read_bytes() for p in exp_dir.iterdir() if p.name != LOCK_FILE} == before
    assert sorted(p.name for p in storage.iterdir()) == [exp_dir.name]  # no MLflow store, no other folder


def test_registration_is_not_repeated_after_a_kill_before_the_state_was_saved(tmp_path):
    from mlflow.tracking import MlflowClient

    uri, exp_dir = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "search"
    exp_dir.mkdir()
    (tmp_path / "search.yaml").write_text("tune: {}\n")
    champion, model = tmp_path / "champion", tmp_path / "model"
    for d in (champion, model):
        d.mkdir()
        (d / "file.txt").write_text("x")
    tracker = SearchTracker(uri, "reg", exp_dir)
    tracker.start("search", {"a": 1}, tmp_path / "search.yaml", {})
    tracker.trial_started("t1", "trial t1", {"train.lr": 0.1})
    tracker.trial_finished("t1", "FINISHED", {})
    tracker.finish({"trials": 1}, [], champion, "reg-adapter", model, "t1", {"trial_id": "t1"})
    client = MlflowClient(uri, registry_uri=uri)
    assert [str(v.version) for v in client.search_model_versions("name='reg-adapter'")] == ["1"]
    # The kill: the version exists, but the state file says the search's end was neither applied nor registered.
    state = json.loads((exp_dir / STATE_FILE).read_text())
    state.update(applied=state["applied"] - 1, registered_version=None, finished=False)
    (exp_dir / STATE_FILE).write_text(json.dumps(state))
    resumed = SearchTracker(uri, "reg", exp_dir)
    assert resumed.sync(force=True)
    versions = client.search_model_versions("name='reg-adapter'")
    assert [str(v.version) for v in versions] == ["1"] and resumed.state["registered_version"] == "1"
    assert str(client.get_model_version_by_alias("reg-adapter", "champion").version) == "1"


def test_a_journal_record_cut_by_a_full_disk_loses_no_later_record(tmp_path):
    """A full disk can cut the journal's last record mid-line; once space is freed, --resume appends after it. The
    cut record was never complete; every record after it (the search's end among them) still reaches MLflow."""
    from mlflow.tracking import MlflowClient

    from embinject.tracking import JOURNAL_FILE

    uri, exp_dir = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "search"
    exp_dir.mkdir()
    (tmp_path / "search.yaml").write_text("tune: {}\n")
    tracker = SearchTracker(uri, "cut", exp_dir)
    tracker.start("search", {"a": 1}, tmp_path / "search.yaml", {})
    tracker.trial_started("t1", "trial t1", {"train.lr": 0.1})
    with open(exp_dir / JOURNAL_FILE, "a") as fh:
        fh.write('{"op": "trial_result", "trial": "t1", "st')  # where the disk filled
    resumed = SearchTracker(uri, "cut", exp_dir)
    resumed.start("search", {"a": 1}, tmp_path / "search.yaml", {})
    resumed.trial_finished("t1", "FINISHED", {})
    resumed.finish({"trials": 1}, [], None, None)
    assert resumed.pending == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cut").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]


def test_a_trial_ray_lost_in_a_kill_ends_killed_as_lost_and_a_cut_one_as_cut(tmp_path, capsys):
    """A kill just after Ray started a trial, before its saved state named it: after --resume Ray's results lack that
    trial (Optuna proposed another in its place). Its MLflow run must not pass for one the search's end cut."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    uri, exp_dir = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "search"
    exp_dir.mkdir()
    (tmp_path / "search.yaml").write_text("tune: {}\n")
    tracker = SearchTracker(uri, "lost", exp_dir)
    tracker.start("search", {"a": 1}, tmp_path / "search.yaml", {})
    for trial in ("done", "lost", "cut"):
        tracker.trial_started(trial, f"trial {trial}", {"train.lr": 0.1})
    tracker.trial_finished("done", "FINISHED", {})
    cut, note = ended_by_the_search(
        tracker, SimpleNamespace(tune=SimpleNamespace(time_budget_s=None)), {"done", "cut", "new"}, 1.0
    )
    assert cut == {"cut"} and note is None
    assert capsys.readouterr().out == (
        "trial lost started just before the search was killed and Ray's saved state did not "
        "name it: its MLflow run ends KILLED (stopped_by lost_at_kill); the search ran "
        "another trial in its place\n"
    )
    assert tracker.sync(force=True)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("lost").experiment_id], "tags.trial_id != ''")
    ended = {r.data.tags["trial_id"]: (r.info.status, r.data.tags.get("stopped_by")) for r in runs}
    assert ended == {"done": ("FINISHED", None), "lost": ("KILLED", "lost_at_kill"), "cut": ("KILLED", "search_end")}


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: no partly written block left for close() to flush
        try:
            while True:
                fh.write(bytes(1 << 16))
                fh.flush()
        except OSError:
            pass
    return filler


@pytest.fixture
def small_disk(tmp_path):
    """A 30 MiB tmpfs: a disk that can fill up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture
def full_disk(small_disk):
    _fill(small_disk)
    return small_disk


def test_a_full_disk_is_named_once_not_in_tracebacks(tmp_path, small_disk, capsys):
    """Ray logs a trial's failure and a failed save of the search's state with the whole traceback; a full disk is
    the command's one line instead (other errors still show). MLflow's SQLite store on a disk that fills is named
    with that reason, not SQLAlchemy's first line."""
    import errno
    import logging

    from embinject.tune.driver.cluster import DISK_FULL_LOGGERS, quiet_disk_full_tracebacks

    quiet_disk_full_tracebacks()
    pyarrow_like = RuntimeError("sync failed")
    pyarrow_like.__cause__ = OSError(
        errno.EIO, "Error writing bytes to file. Detail: [errno 28] No space left on device"
    )
    for name in DISK_FULL_LOGGERS:
        logger = logging.getLogger(name)
        for exc, shown in (
            (OSError(errno.ENOSPC, "No space left on device"), False),
            (pyarrow_like, False),
            (ValueError("a trial's own bug"), True),
        ):
            record = logger.makeRecord(
                name, logging.ERROR, __file__, 1, "failed with exception: ", (), (type(exc), exc, None)
            )
            assert bool(logger.filter(record)) is shown, (name, exc)
    exp_dir = tmp_path / "search"
    exp_dir.mkdir()
    (tmp_path / "search.yaml").write_text("tune: {}\n")
    tracker = SearchTracker(f"sqlite:///{small_disk / 'mlflow.db'}", "full", exp_dir)
    tracker.sync(force=True)  # the store is created while there is room
    _fill(small_disk)
    capsys.readouterr()
    tracker.start("search", {"a": 1}, tmp_path / "search.yaml", {})
    err = capsys.readouterr().err
    assert f"MLflow at sqlite:///{small_disk / 'mlflow.db'} cannot be reached (no space left on its device)" in err, err


def test_a_disk_full_at_start_is_one_line_and_leaves_nothing(tmp_path, tiny_model, full_disk):
    path = write_search(tmp_path / "s.yaml", tiny_model, "builtin:python-docs", full_disk / "runs")
    proc = tune(str(path))
    one_error_line(
        proc, f"tune.storage_path: cannot write to {full_disk / 'runs'} (No space left on device); free some space"
    )
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_a_time_budget_that_runs_out_mid_trial_is_said_and_the_cut_trial_ends_killed(tmp_path, tiny_model):
    """A budget far shorter than any trial (100,000 steps cannot fit in 15 s on any machine), so the outcome does not
    depend on load: no trial finishes. The budget, not a failure, is named, with what to raise; exit 3. How many
    trials started before it ran out does depend on load, so the line, summary.csv and MLflow are checked to agree."""
    import csv
    import re

    from .test_tune import _check_study, read_mlflow

    storage = tmp_path / "runs"
    path = write_search(
        tmp_path / "s.yaml",
        tiny_model,
        "builtin:python-docs",
        storage,
        **{
            "train.max_steps": 100000,
            "train.max_epochs": 100000,
            "train.eval_every": 5,
            "tune.num_samples": 2,
            "tune.scheduler": {"type": "none"},
            "tune.time_budget_s": 15,
        },
    )
    proc = tune(str(path), timeout=300)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no trial finished without failing" not in proc.stdout
    said = re.search(
        r"tune\.time_budget_s \(15 s\) ran out before any trial (?:started \(2 planned\)|finished: "
        r"(\d) of 2 trials started, (\d) of them cut mid-training); no result, nothing registered: raise "
        r"tune\.time_budget_s \(or remove it\), or lower train\.max_steps, so that a trial can finish "
        r"within it; see (\S+)/summary\.csv",
        proc.stdout,
    )
    assert said, proc.stdout[-3000:]
    started, cut = int(said.group(1) or 0), int(said.group(2) or 0)
    assert started == cut
    exp_dir = next(storage.glob("t-*"))
    assert said.group(3) == str(exp_dir)
    rows = list(csv.DictReader((exp_dir / "summary.csv").open()))
    assert sorted(r["status"] for r in rows if r["status"] != "not_started") == ["cut"] * cut, rows
    client, parents, children = read_mlflow(f"sqlite:///{storage / 'mlflow.db'}", "test-search")
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["trials_cut"] == cut
    assert sorted((c.info.status, c.data.tags.get("stopped_by")) for c in children) == [("KILLED", "time_budget")] * cut
    assert client.search_model_versions("name='test-adapter'") == []
    # Optuna's study: the cut trials PRUNED, those never started FAIL, each saying what ended it
    study = _check_study(exp_dir)
    assert sorted(t.user_attrs["ended_by"] for t in study.trials) == sorted(
        "time_budget" if r["status"] == "cut" else r["status"] for r in rows
    )


@pytest.mark.parametrize(
    "started, cut, finished, said",
    [
        (3, 1, True, "tune.time_budget_s (45 s) ran out: 3 of 4 trials started, 1 of them cut mid-training"),
        (
            2,
            2,
            False,
            "tune.time_budget_s (45 s) ran out before any trial finished: 2 of 4 trials started, 2 of them cut "
            "mid-training; no result, nothing registered: raise tune.time_budget_s (or remove it), or lower "
            "train.max_steps, so that a trial can finish within it",
        ),
        (
            0,
            0,
            False,
            "tune.time_budget_s (45 s) ran out before any trial started (4 planned); no result, nothing "
            "registered: raise tune.time_budget_s (or remove it), or lower train.max_steps, so that a trial can "
            "finish within it",
        ),
    ],
)
def test_the_time_budget_line_says_what_it_cut_and_what_to_raise(started, cut, finished, said):
    """Each case the search below meets only under one load or another, said for certain."""
    assert BudgetEnd(45, 4, started, cut).line(any_finished=finished) == said


def test_a_store_locked_right_after_a_run_was_created_gets_one_run_with_all_its_records(tmp_path, capfd):
    """Another process takes the SQLite store (BEGIN EXCLUSIVE) just after the parent run was created; once it lets
    go, that same run gets its params, artifact and dataset. A trial's run created just before a kill (the state
    file saved before it knew) is found again, not created twice, and gets its params."""
    import sqlite3

    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    uri, exp_dir = f"sqlite:///{db}", tmp_path / "search"
    exp_dir.mkdir()
    (tmp_path / "search.yaml").write_text("tune: {}\n")
    MlflowClient(uri).search_experiments()  # the store exists, as after earlier searches
    tracker = SearchTracker(uri, "locked", exp_dir)
    lock = []
    real_create = MlflowClient.create_run

    def create_then_lock(self, *args, **kwargs):
        run = real_create(self, *args, **kwargs)
        if not lock:
            lock.append(sqlite3.connect(db, isolation_level=None, timeout=0))
            lock[0].execute("BEGIN EXCLUSIVE")  # a real lock, held by another connection, at the worst moment
        return run

    MlflowClient.create_run = create_then_lock
    try:
        tracker.start(
            "search",
            {"train.lr": 0.1},
            tmp_path / "search.yaml",
            {},
            {"name": "d", "digest": "abc", "source_type": "local", "source": "d.jsonl"},
        )
        assert tracker.pending == 1 and tracker.state["parent"]  # the run exists; its params could not be written
    finally:
        MlflowClient.create_run = real_create
        if lock:
            lock[0].execute("ROLLBACK")
    assert tracker.sync(force=True)
    tracker.trial_started("t1", "trial t1", {"train.lr": 0.1})
    assert tracker.pending == 0
    # The kill: the trial's run exists, but the saved state knows neither it nor its params.
    state = json.loads((exp_dir / STATE_FILE).read_text())
    state.update(applied=state["applied"] - 1, children={}, params_logged=[])
    (exp_dir / STATE_FILE).write_text(json.dumps(state))
    assert SearchTracker(uri, "locked", exp_dir).sync(force=True)

    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("locked").experiment_id])
    parents = [r for r in runs if r.data.tags.get("embinject.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("embinject.kind") == "trial"]
    assert len(parents) == 1 and parents[0].data.params == {"train.lr": "0.1"}
    assert [a.path for a in client.list_artifacts(parents[0].info.run_id, "search")] == ["search/search.yaml"]
    assert len(children) == 1 and children[0].data.params == {"train.lr": "0.1"}
    assert [len(r.inputs.dataset_inputs) for r in parents + children] == [1, 1]
    err = capfd.readouterr().err
    assert err.count("cannot be reached") == 1 and "Traceback" not in err and " ERROR " not in err


def test_a_disk_that_fills_mid_search_stops_it_in_one_line_and_resume_recovers(tmp_path, tiny_model, small_disk):
    from .test_faults import kill_session, registered_versions, trial_rows, wait_for
    from .test_tune import read_mlflow

    storage = small_disk / "runs"
    path = write_search(
        tmp_path / "s.yaml",
        tiny_model,
        "builtin:python-docs",
        storage,
        **{
            "method": "prompt",
            "search": {"train.lr": {"loguniform": [1.0e-3, 5.0e-2]}},
            "tune.points_to_evaluate": [],
            "train.max_steps": 150,
            "train.max_epochs": 100,
            "train.eval_every": 5,
            "tune.num_samples": 2,
            "tune.max_concurrent_trials": 1,
            "tune.scheduler": {"type": "none"},
        },
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "embinject.tune", str(path)],
        cwd=ROOT,
        env=PY_ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(lambda: any(len(r) >= 2 for r in trial_rows(storage).values()), 300, "a trial's results", proc)
        filler = _fill(small_disk)
        _, err = proc.communicate(timeout=300)
    finally:
        kill_session(proc.pid, child=proc)
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and not line.startswith(("Current best trial", "Number of trials"))
    ]
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert lines[-1].startswith("error: no space left on the device holding ") and lines[-1].endswith(
        f"resume with: python -m embinject.tune {path} --resume"
    ), err[-3000:]
    filler.unlink()  # space freed: --resume finishes the search, registers one version, leaves no run RUNNING
    resumed = tune(str(path), "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    client, parents, children = read_mlflow(f"sqlite:///{storage / 'mlflow.db'}", "test-search")
    seen = [(c.data.tags.get("trial_id"), c.info.status, c.data.tags.get("stopped_by")) for c in children]
    finished = [trial_id for trial_id, status, _ in seen if status == "FINISHED"]
    assert [p.info.status for p in parents] == ["FINISHED"] and len(finished) == 2, seen
    # A trial Ray had started when the disk filled, before its snapshot named it, is forgotten by Ray and proposed again
    # under a new id (as after a kill, test_resume_after_the_driver_is_killed): its run ends KILLED, lost_at_kill
    assert all(why == "lost_at_kill" for _, status, why in seen if status != "FINISHED"), seen
    versions = registered_versions(client, "test-adapter")
    assert len(versions) == 1 and f"best trial {versions[0].tags['trial_id']}:" in resumed.stdout


def test_scratch_directories_of_killed_processes_are_swept_and_live_ones_kept(tmp_path, monkeypatch):
    """Trials that Ray stops, pack hosts and a command killed mid-download cannot remove their scratch directory;
    the next embinject process on the host does, once the owner is gone, and never a live process's."""
    import signal
    import socket
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    script = (
        "import sys, time; from embinject.fsutil import scratch_dir; d = scratch_dir('trial'); "
        "(d / 'checkpoint').write_bytes(bytes(1000)); print(d, flush=True); time.sleep(600)"
    )
    owners = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env={**PY_ENV, "TMPDIR": str(tmp_path)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        killed, alive = (Path(p.stdout.readline().strip()) for p in owners)
        mine = scratch_dir("adapter")  # (a new one sweeps first: made while every owner still runs)
        owners[0].send_signal(signal.SIGKILL)
        owners[0].wait(timeout=30)
        elsewhere = tmp_path / f"embinject-trial-another-host-{owners[0].pid}-x"  # the same /tmp seen from another host
        elsewhere.mkdir()
        assert killed.name.startswith(f"embinject-trial-{socket.gethostname()}-{owners[0].pid}-") and killed.is_dir()
        assert sweep_scratch() == 1
        assert not killed.exists() and alive.is_dir() and mine.is_dir() and elsewhere.is_dir()
    finally:
        for p in owners:
            p.kill()
            p.wait(timeout=30)


def test_a_registration_mlflow_refuses_at_the_end_ends_the_parent_and_resume_says_so(tmp_path, tiny_model):
    """A name no check of the search file can refuse: a prompt holds it in the registry. MLflow refuses it only at the
    search's very end. That is its answer, not an outage: the parent run ends (tagged with the refusal), no version is
    made under the prompt, the command ends on one error line naming the refusal and where the champion is (exit 1),
    and --resume says the same instead of claiming kept records were sent."""
    import sqlite3

    import mlflow

    from embinject.tracking import mlflow_global_uris

    from .test_tune import read_mlflow

    storage = tmp_path / "runs"
    storage.mkdir()
    uri = f"sqlite:///{storage / 'mlflow.db'}"
    with mlflow_global_uris(uri, uri):
        mlflow.genai.register_prompt(name="taken", template="Summarize {{text}}")
    path = write_search(
        tmp_path / "s.yaml",
        tiny_model,
        "builtin:python-docs",
        storage,
        **{
            "mlflow.register_as": "taken",
            "tune.num_samples": 1,
            "tune.scheduler": {"type": "none"},
            "train.max_steps": 4,
            "train.eval_every": 2,
        },
    )
    proc = tune(str(path), timeout=600)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    exp_dir = next(storage.glob("t-*"))
    refusal = (
        "error: MLflow refused to register the champion as 'taken' (Tried to create a registered model with name "
        "'taken', but the name is already taken by a prompt."
    )
    assert proc.returncode == 1 and lines[-1].startswith(refusal), proc.stdout[-2000:] + proc.stderr[-3000:]
    assert lines[-1].endswith(
        f"nothing was registered. The champion is {exp_dir / 'champion'} (as an MLflow model: "
        f"{exp_dir / 'champion_model'}); register it by hand with mlflow.register_model"
    ), lines[-1]
    assert (
        "cannot be reached" not in proc.stderr and "registered as" not in proc.stdout and "Traceback" not in proc.stderr
    )
    _, parents, children = read_mlflow(uri, "test-search")
    assert [p.info.status for p in parents] == ["FINISHED"] and {c.info.status for c in children} == {"FINISHED"}
    assert "already taken by a prompt" in parents[0].data.tags["registration_error"]
    with sqlite3.connect(storage / "mlflow.db") as db:  # the prompt keeps its one version; none was made under it
        assert db.execute("SELECT count(*) FROM model_versions WHERE name = 'taken'").fetchone() == (1,)

    resumed = tune(str(path), "--resume")
    assert resumed.returncode == 1 and resumed.stdout.strip().splitlines() == [
        f"resuming the newest search of {path}: loading torch, Ray Tune and MLflow",  # before the imports, at once
        f"search {exp_dir.name} has already finished; nothing to resume",
    ], resumed.stdout
    assert [line for line in resumed.stderr.splitlines() if line.strip()] == [lines[-1]], resumed.stderr
