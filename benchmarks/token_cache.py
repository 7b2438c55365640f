"""Token-level encoder states: keep them in the cache, or compute them on the fly?

    python -m benchmarks.token_cache [--data ../shared/data/wikipedia_en_sample] [--windows 1024]

For each encoder and pooling that injection can read (pooled, chunk means, token states for the resampler; MiniLM
and the frozen SmolLM2-135M as its own encoder), on the preceding 64 tokens of real windows: the seconds to compute
them once (what computing on the fly costs every epoch), to write them to the cache, and to read them back (what a
cached trial or epoch costs), and their size on disk. Torch threads as the machine gives them. Writes
benchmarks/results/token_cache.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from embinject.data import select_windows, tokenize_documents
from embinject.encoders import Pooling, load_encoder
from embinject.fsutil import atomic_save_tensors, atomic_write_text
from embinject.models import load_frozen_lm

OUT = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikipedia_en_sample"
SETUPS = [
    ("all-MiniLM-L6-v2, pooled", "bundled:all-minilm-l6-v2", Pooling()),
    ("all-MiniLM-L6-v2, 8 chunk means", "bundled:all-minilm-l6-v2", Pooling("chunks", 8)),
    ("all-MiniLM-L6-v2, token states (resampler)", "bundled:all-minilm-l6-v2", Pooling("resampler")),
    ("SmolLM2-135M layer 15, 8 chunk means", "lm-hidden:15", Pooling("chunks", 8)),
    ("SmolLM2-135M layer 15, token states (resampler)", "lm-hidden:15", Pooling("resampler")),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED, help="a corpus folder with train.jsonl")
    p.add_argument("--windows", type=int, default=1024)
    p.add_argument("--out", type=Path, default=OUT / "token_cache.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        from safetensors.torch import load_file

        lm = load_frozen_lm("bundled:smollm2-135m")
        docs = [
            json.loads(line)["text"]
            for line in (args.data / "train.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        windows = select_windows(tokenize_documents(docs, lm.tokenizer, 64), args.windows, "previous", "train")
        ids = windows.previous
        rows = []
        for label, spec, pooling in SETUPS:
            t0 = time.perf_counter()
            encoder = load_encoder(spec, lm.model, lm.tokenizer, lm.path, pooling=pooling)
            load_s = time.perf_counter() - t0
            encoder.encode(ids[:8])  # first-call costs (thread pools, kernels) out of the timing
            t0 = time.perf_counter()
            states = encoder.encode(ids).contiguous()
            compute_s = time.perf_counter() - t0
            file = Path(cache) / f"{len(rows)}.safetensors"
            t0 = time.perf_counter()
            atomic_save_tensors({"embeddings": states}, file)
            write_s = time.perf_counter() - t0
            reads = []
            for _ in range(3):
                t0 = time.perf_counter()
                back = load_file(str(file))["embeddings"]
                back.float().sum()  # every byte read, not only mapped
                reads.append(time.perf_counter() - t0)
            assert torch.equal(back, states)
            rows.append(
                {
                    "setup": label,
                    "encoder": spec,
                    "pooling": pooling.kind,
                    "k": pooling.k,
                    "shape": list(states.shape),
                    "dtype": str(states.dtype),
                    "mb": file.stat().st_size / 2**20,
                    "load_encoder_s": load_s,
                    "compute_s": compute_s,
                    "write_s": write_s,
                    "read_s": sorted(reads)[1],
                }
            )
            print(
                f"{label}: {list(states.shape)} {rows[-1]['mb']:.1f} MB; "
                f"compute {compute_s:.2f} s, write {write_s:.3f} s, "
                f"read {rows[-1]['read_s']:.4f} s",
                flush=True,
            )
    atomic_write_text(
        args.out,
        json.dumps(
            {
                "windows": len(ids),
                "tokens_per_window": ids.shape[1],
                "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "rows": rows,
            },
            indent=1,
        ),
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
