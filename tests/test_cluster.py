"""Multi-node for real: a Ray head and a second Ray node started with `ray start` on 127.0.0.1
(token authentication, as Ray 2.60 requires), a search run with --address, and MLflow showing
trials from both nodes."""
import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from .conftest import ROOT
from .test_tune import kill_session, read_mlflow, run_tune, write_search

pytestmark = pytest.mark.cluster
RAY = str(ROOT / ".venv" / "bin" / "ray") if (ROOT / ".venv" / "bin" / "ray").exists() else shutil.which("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_node_cluster():
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-")
    sessions = []

    def start(*args):
        proc = subprocess.Popen([RAY, "start", "--num-cpus=1", "--disable-usage-stats", *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        out, _ = proc.communicate(timeout=120)
        sessions.append(proc.pid)
        assert proc.returncode == 0, out

    try:
        start("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}")
        start(f"--address=127.0.0.1:{port}")
        yield f"127.0.0.1:{port}", env
    finally:
        for sid in sessions:
            kill_session(sid)
        shutil.rmtree(temp, ignore_errors=True)


def test_search_on_a_two_node_cluster(tmp_path, tiny_model, shared_data, two_node_cluster, monkeypatch):
    address, env = two_node_cluster
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    storage = tmp_path / "runs"  # one machine: both nodes see this path, as they would an NFS mount
    path = write_search(tmp_path / "s.yaml", tiny_model, str(shared_data / "wikitext2_valid_detok"), storage,
                        **{"tune.num_samples": 4, "tune.max_concurrent_trials": 2})
    proc = run_tune(str(path), "--address", address)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _, parents, children = read_mlflow(f"sqlite:///{storage / 'mlflow.db'}", "test-search")
    assert len(parents) == 1 and len(children) == 4
    nodes = {c.data.tags.get("node_id") for c in children}
    assert len(nodes) == 2 and None not in nodes  # trials ran on both nodes
    assert all(c.data.metrics.get("val_perplexity") for c in children)
