"""Shared fixtures: a tiny random Llama with its own small BPE tokenizer (fast unit tests), the
real shared data folder, and an isolated cache directory per test session."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from benchmarks.tiny_model import make_tiny_model  # noqa: F401  - tests import it from here too

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # test processes side by side: their threads share the cores instead of each taking them all
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ.setdefault("OMP_NUM_THREADS", threads)  # for the subprocesses and Ray workers tests start
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Data/embedding caches per session; converted bundled models are reused from the user cache
    when present (conversion is deterministic and takes ~20 s)."""
    cache = tmp_path_factory.mktemp("cache")
    user_models = Path(os.environ.get("EMBINJECT_CACHE", Path.home() / ".cache" / "embinject")) / "models"
    user_models.mkdir(parents=True, exist_ok=True)
    (cache / "models").symlink_to(user_models, target_is_directory=True)
    old = os.environ.get("EMBINJECT_CACHE")
    os.environ["EMBINJECT_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("EMBINJECT_CACHE", None)
    else:
        os.environ["EMBINJECT_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def tiny_overrides(tiny_model):
    """Overrides for a fast run on the tiny model and the builtin Python docs."""
    return [
        f"model={tiny_model}",
        "data.seq_len=32",
        "data.train_samples=64",
        "data.val_samples=32",
        "train.batch_size=8",
        "train.eval_batch_size=32",
        "train.max_steps=6",
        "train.eval_every=3",
        "train.progress=false",
        "adapter.prefix_len=4",
        "adapter.mlp_width=32",
        "adapter.embedding_model=fourier",
        "adapter.fourier_features=16",
        "adapter.context_tokens=8",
    ]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
