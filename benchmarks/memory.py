"""Memory of concurrent trials on one node: are the frozen weights shared or copied?

    python -m benchmarks.memory [--steps 6]

Runs one, then two concurrent training processes (the same work as a trial: bundled SmolLM2-135M
loaded from the cached safetensors checkpoint, prompt tuning, batch 8 x 64), without and with
`train.gradient_checkpointing` (which trades recomputation for activation memory). Reports the peak of the
summed proportional set size (PSS: pages shared between processes are split between them, so the
sum is what the node really spends), the peak summed RSS, and their difference at that moment (the
memory the processes share: the checkpoint, which transformers memory-maps, and shared libraries).
Writes benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil

from embinject.fsutil import atomic_write_text

OUT = Path(__file__).resolve().parent / "results"

WORKER = r"""
import json, sys, time, torch
from embinject.config_files import load_config
from embinject.fsutil import atomic_write_text
from embinject.methods import build_method
from embinject.models import load_frozen_lm
from embinject.train import checkpointed_lm
steps, checkpointing = int(sys.argv[1]), sys.argv[2] == "1"
torch.set_num_threads(1)
lm = load_frozen_lm("bundled:smollm2-135m")
cfg = load_config(None, ["method=prompt"])
m = build_method(cfg, lm.model, tokenizer=lm.tokenizer)
opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-3)
ids = torch.randint(0, 49000, (8, 64))
times = []
with checkpointed_lm(lm.model, checkpointing):
    for _ in range(steps):
        t0 = time.perf_counter()
        nll, n = m.nll({"input_ids": ids, "labels": ids})
        opt.zero_grad(); (nll / n).backward(); opt.step()
        times.append(time.perf_counter() - t0)
print(json.dumps({"step_s": sorted(times[1:])[len(times[1:]) // 2]}))
"""


def measure(n_procs: int, steps: int, checkpointing: bool = False) -> dict:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(steps), str(int(checkpointing))], stdout=subprocess.PIPE, text=True
        )
        for _ in range(n_procs)
    ]
    peak_pss = peak_rss = shared_at_peak = 0
    t0 = time.time()
    while any(p.poll() is None for p in procs):
        pss = rss = 0
        for p in procs:
            try:
                info = psutil.Process(p.pid).memory_full_info()
                pss += info.pss
                rss += info.rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        if pss > peak_pss:
            peak_pss, shared_at_peak = pss, rss - pss
        peak_rss = max(peak_rss, rss)
        time.sleep(0.2)
    if any(p.returncode for p in procs):
        raise RuntimeError("a worker failed")
    step_s = [json.loads(p.stdout.read().strip().splitlines()[-1])["step_s"] for p in procs]
    return {
        "processes": n_procs,
        "gradient_checkpointing": checkpointing,
        "peak_pss_mb": peak_pss / 2**20,
        "peak_rss_mb": peak_rss / 2**20,
        "shared_at_peak_mb": shared_at_peak / 2**20,
        "seconds": time.time() - t0,
        "median_step_s": sorted(step_s)[len(step_s) // 2],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args(argv)
    rows = []
    for checkpointing in (False, True):
        one, two = measure(1, args.steps, checkpointing), measure(2, args.steps, checkpointing)
        two["ratio_to_one"] = two["peak_pss_mb"] / one["peak_pss_mb"]
        rows += [one, two]
    plain_one = rows[0]
    for r in rows[2:]:
        r["ratio_to_one_plain"] = r["peak_pss_mb"] / plain_one["peak_pss_mb"]
    OUT.mkdir(exist_ok=True)
    out = {
        "benchmark": "memory",
        "steps": args.steps,
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rows": rows,
    }
    atomic_write_text(OUT / "memory.json", json.dumps(out, indent=1))
    for r in rows:
        print(
            f"{r['processes']} process(es), checkpointing {r['gradient_checkpointing']}: "
            f"peak PSS {r['peak_pss_mb']:.0f} MB, peak RSS {r['peak_rss_mb']:.0f} MB, "
            f"shared {r['shared_at_peak_mb']:.0f} MB"
            + (f", x{r['ratio_to_one']:.2f} of one" if "ratio_to_one" in r else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
