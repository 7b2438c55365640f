"""`train.dtype: auto` (the default): bfloat16 autocast where the hardware runs it fast, float32 elsewhere.

Fast means: a CUDA device with bf16 support, or a CPU with AVX512-BF16 or AMX instructions (read from
the CPU flags on Linux). Where the flags cannot be read, a matmul probe of about a second decides, and its
answer is cached per machine. On a CPU without bf16 instructions, autocast would emulate bf16 and run
slower than float32, so `auto` keeps float32 there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from ..fsutil import atomic_write_text
from ..models import cache_dir

FAST_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return None


def _probe() -> bool:
    """bf16 autocast matmuls at least 1.3x faster than float32 on this CPU (about 0.3 s; about a second where bf16 is
    emulated, which the probe stops at as soon as it is clearly slower)."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)

    def once(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for _ in range(4):
                a @ b
        return time.perf_counter() - t0

    with torch.autocast("cpu", dtype=torch.bfloat16):
        a @ b  # warm-up
    fp32 = min(once(False) for _ in range(5))
    bf16 = float("inf")
    for _ in range(5):
        bf16 = min(bf16, once(True))
        if bf16 > 3 * fp32:  # emulated (several times slower): more repeats cannot make it 1.3x faster
            break
    return fp32 / bf16 >= 1.3


def _probe_cached() -> bool:
    key = hashlib.sha256(f"{platform.node()}|{platform.machine()}|{platform.processor()}|{torch.__version__}".encode())
    file = cache_dir("precision") / f"{key.hexdigest()[:16]}.json"
    try:
        return bool(json.loads(file.read_text())["bf16_fast"])
    except (OSError, ValueError, KeyError):
        pass
    fast = _probe()
    atomic_write_text(file, json.dumps({"bf16_fast": fast, "how": "matmul probe"}))
    return fast


@functools.lru_cache(maxsize=None)
def cpu_bf16_fast() -> bool:
    override = os.environ.get("EMBINJECT_CPU_BF16")  # "0"/"1": a user's (or a test's) own decision
    if override in ("0", "1"):
        return override == "1"
    flags = cpu_flags()
    if flags is not None:
        return any(f in flags for f in FAST_CPU_FLAGS)
    return _probe_cached()


def resolve_dtype(name: str, device: str) -> str:
    """`float32` or `bfloat16` for `train.dtype` on this device."""
    if name != "auto":
        return name
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_bf16_fast() else "float32"


def autocast_dtype(name: str, device: str) -> torch.dtype | None:
    return torch.bfloat16 if resolve_dtype(name, device) == "bfloat16" else None
