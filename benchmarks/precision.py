"""What `train.dtype: auto` changes in one run of each method: validation perplexity and time against float32.

    python -m benchmarks.precision [--steps 40] [--seeds 0 1 2]

Trains each method under float32 and under `auto` with otherwise identical settings (the quickstart's
data and budget on the bundled SmolLM2-135M, one thread, as a quickstart trial runs), once per seed,
and compares the final validation perplexity (scored on the same windows, each under its own
precision) and the training time. Several seeds show whether a change under `auto` is larger than
float32's own seed-to-seed spread. Writes benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from embinject.config_files import load_config
from embinject.fsutil import atomic_write_text
from embinject.train import train
from embinject.train.precision import resolve_dtype

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
METHODS = {
    "prompt": ["adapter.prefix_len=4", "train.lr=3e-3"],
    "injection": ["adapter.prefix_len=2", "adapter.mlp_width=512", "train.lr=1e-3"],
    "prefix": ["adapter.prefix_len=4", "adapter.mlp_width=0", "train.lr=1e-3"],
    "lora": ["adapter.rank=4", "train.lr=1e-3"],
}


def measure(method: str, seed: int, args) -> dict:
    """One run under float32 and one under `auto`, otherwise identical."""
    row = {"method": method, "seed": seed}
    for dtype in ("float32", "auto"):
        cfg = load_config(
            ROOT / "search_spaces" / "quickstart.yaml",
            [
                f"method={method}",
                *METHODS[method],
                f"train.dtype={dtype}",
                f"train.max_steps={args.steps}",
                f"train.seed={seed}",
                "train.eval_every=10",
                "train.patience=0",
                "train.progress=false",
                f"train.threads={args.threads}",
            ],
            extra_sections=("search", "tune", "mlflow"),
        )
        t0 = time.perf_counter()
        result, trained = train(cfg)
        trained.release()
        row[dtype] = {
            "dtype": result["dtype"],
            "val_perplexity": result["val_perplexity"],
            "baseline_perplexity": result["baseline_perplexity"],
            "train_seconds": result["train_seconds"],
            "eval_seconds": result["eval_seconds"],
            "wall_s": time.perf_counter() - t0,
        }
    row["ppl_change"] = row["auto"]["val_perplexity"] / row["float32"]["val_perplexity"] - 1
    row["step_speedup"] = row["float32"]["train_seconds"] / row["auto"]["train_seconds"]
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=OUT / "precision.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    auto = resolve_dtype("auto", "cpu")
    rows = [measure(method, seed, args) for method in METHODS for seed in args.seeds]
    result = {
        "benchmark": "precision",
        "steps": args.steps,
        "threads": args.threads,
        "seeds": args.seeds,
        "auto_means": auto,
        "rows": rows,
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
