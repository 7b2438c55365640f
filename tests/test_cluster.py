"""Multi-node for real: a Ray head and a second Ray node started with `ray start` on 127.0.0.1
(token authentication, as Ray 2.60 requires), a search run with --address, and MLflow showing
trials from both nodes."""

import os
import secrets
import shutil
import subprocess
import tempfile

import pytest

from .conftest import ROOT, free_port
from .test_tune import kill_session, read_mlflow, run_tune, write_search

pytestmark = pytest.mark.cluster
RAY = str(ROOT / ".venv" / "bin" / "ray") if (ROOT / ".venv" / "bin" / "ray").exists() else shutil.which("ray")


@pytest.fixture
def two_node_cluster():
    # A token of the cluster's own: a fresh machine has no ~/.ray/auth_token, and a user's must not be touched.
    # Workers at the nodes' priority, as README's cluster section says (Ray's default lowers them to nice +15).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_worker_niceness": "0"}
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-")
    sessions = []

    def start(*args):
        proc = subprocess.Popen(
            [RAY, "start", "--num-cpus=1", "--disable-usage-stats", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        out, _ = proc.communicate(timeout=120)
        sessions.append(proc.pid)
        assert proc.returncode == 0, out

    try:
        start("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}")
        start(f"--address=127.0.0.1:{port}")
        yield f"127.0.0.1:{port}", env, sessions
    finally:
        for sid in sessions:
            kill_session(sid)
        shutil.rmtree(temp, ignore_errors=True)


def test_search_on_a_two_node_cluster(tmp_path, tiny_model, shared_data, two_node_cluster, monkeypatch):
    from .test_faults import trial_rows

    address, env, _ = two_node_cluster
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    storage = tmp_path / "runs"  # one machine: both nodes see this path, as they would an NFS mount
    path = write_search(
        tmp_path / "s.yaml",
        tiny_model,
        str(shared_data / "wikitext2_valid_detok"),
        storage,
        **{"tune.num_samples": 4, "tune.max_concurrent_trials": 2},
    )
    proc = run_tune(str(path), "--address", address)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _, parents, children = read_mlflow(f"sqlite:///{storage / 'mlflow.db'}", "test-search")
    assert len(parents) == 1 and len(children) == 4
    nodes = {c.data.tags.get("node_id") for c in children}
    assert len(nodes) == 2 and None not in nodes  # trials ran on both nodes
    rows = trial_rows(storage)
    assert {r[0]["nice"] for r in rows.values()} == {os.nice(0)}  # RAY_worker_niceness=0 on `ray start` reached them
    assert all(c.data.metrics.get("val_perplexity") for c in children)


def test_trials_of_a_stopped_node_continue_on_the_head_from_their_checkpoints(
    tmp_path, tiny_model, two_node_cluster, monkeypatch
):
    import sys

    from .test_faults import PY_ENV, trial_rows, wait_for
    from .test_tune import _without_redelivery

    address, env, sessions = two_node_cluster
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    storage = tmp_path / "runs"
    path = write_search(
        tmp_path / "s.yaml",
        tiny_model,
        "builtin:python-docs",
        storage,
        **{
            "train.max_steps": 120,
            "train.max_epochs": 100,
            "train.eval_every": 5,
            "tune.num_samples": 3,
            "tune.max_concurrent_trials": 2,
            "tune.scheduler": {"type": "none"},
            "tune.max_failures": 2,
        },
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "embinject.tune", str(path), "--address", address],
        cwd=ROOT,
        env={**PY_ENV, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def on_second_node():
        for name, rows in trial_rows(storage).items():
            if len(rows) >= 3 and not rows[-1].get("final"):
                try:
                    if os.getsid(rows[-1]["pid"]) == sessions[1]:
                        return name
                except ProcessLookupError:
                    pass
        return None

    try:
        victim = wait_for(on_second_node, 300, "a trial running on the second node", proc)
        kill_session(sessions[1])  # the whole second node goes away: raylet, workers, everything
        out, err = proc.communicate(timeout=600)
    finally:
        kill_session(proc.pid, child=proc)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    rows = trial_rows(storage)
    assert len(rows) == 3
    for name, trial in rows.items():
        steps = [r["step"] for r in _without_redelivery(trial)]
        assert steps == sorted(set(steps)) and steps[-1] == 120, (name, steps)  # continued, nothing lost or repeated
    assert len({r["node_id"] for r in rows[victim]}) == 2  # it moved to the head node
    _, parents, children = read_mlflow(f"sqlite:///{storage / 'mlflow.db'}", "test-search")
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert next(c for c in children if f"trial_{c.data.tags['trial_id']}" == victim).data.tags.get("restarts") == "1"
