"""Multi-trial packing: K prompt-tuning trials trained in one batch over the shared frozen model.

    python -m benchmarks.packing [--k 1 2 4] [--reps 5] [--batch 8] [--seq 64] [--prefix 8] [--device cuda --out FILE]

Each trial keeps its own soft prompt, optimizer and batch of `batch` windows; packed, the K batches
run as one forward/backward of K x batch rows, each row behind its own trial's prompt, and the loss
is the sum of the trials' mean losses. A prompt only reaches its own rows, so every trial receives
exactly the gradient it would get alone (checked here before timing). Reports tokens/s of the
packed step against K sequential steps, interleaved (A B A B ...), median of `reps`.
Writes benchmarks/results/packing.json, or --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from embinject.config_files import load_config
from embinject.fsutil import atomic_write_text
from embinject.methods import build_method
from embinject.models import load_frozen_lm

from .shape_model import model_label

OUT = Path(__file__).resolve().parent / "results"


def packed_loss(methods: list, batches: list[dict]) -> torch.Tensor:
    """Sum over trials of each trial's mean NLL, from one pass of all trials' rows."""
    lm = methods[0].lm
    inputs = [m.lm_inputs(b) for m, b in zip(methods, batches)]
    embeds = torch.cat([e for e, _, _, _ in inputs])
    n_prefix = inputs[0][1]
    labels = torch.cat([b["labels"] for b in batches])
    hidden = lm.get_decoder()(inputs_embeds=embeds, use_cache=False).last_hidden_state
    T = labels.shape[1]
    h, targets = hidden[:, n_prefix : n_prefix + T - 1], labels[:, 1:]
    mask = targets != -100
    logits = lm.get_output_embeddings()(h[mask])  # the LM head only where tokens are scored, as in training
    nll = torch.nn.functional.cross_entropy(logits.float(), targets[mask], reduction="none")
    rows = mask.nonzero()[:, 0]
    per_row = torch.zeros(targets.shape[0], dtype=nll.dtype, device=nll.device).index_add(0, rows, nll)
    loss, start = 0.0, 0
    for b in batches:
        n = b["labels"].shape[0]
        loss = loss + per_row[start : start + n].sum() / mask[start : start + n].sum()
        start += n
    return loss


def max_grad_difference(methods: list, batches: list[dict]) -> float:
    """Largest absolute difference between packed and separate gradients of every trial's prompt."""
    for m in methods:
        m.prompt.grad = None
    packed_loss(methods, batches).backward()
    packed = [m.prompt.grad.clone() for m in methods]
    worst = 0.0
    for m, b, g in zip(methods, batches, packed):
        m.prompt.grad = None
        nll, n = m.nll(b)
        (nll / n).backward()
        worst = max(worst, float((m.prompt.grad - g).abs().max()))
    return worst


def make_trials(
    lm, k: int, prefix: int, batch: int, seq: int, model: str, device: str = "cpu"
) -> tuple[list, list[dict]]:
    methods, batches = [], []
    for i in range(k):
        cfg = load_config(None, [f"model={model}", "method=prompt", f"adapter.prefix_len={prefix}", f"train.seed={i}"])
        methods.append(build_method(cfg, lm.model, tokenizer=lm.tokenizer))
        ids = torch.randint(0, lm.tokenizer.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(i)).to(
            device
        )
        batches.append({"input_ids": ids, "labels": ids})
    return methods, batches


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled:smollm2-135m")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--prefix", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=OUT / "packing.json")
    args = p.parse_args(argv)
    from .step import synchronize

    lm = load_frozen_lm(args.model, device=args.device)
    rows = []
    for k in args.k:
        methods, batches = make_trials(lm, k, args.prefix, args.batch, args.seq, args.model, args.device)
        diff = max_grad_difference(methods, batches)
        opts = [torch.optim.AdamW(m.trainable_parameters(), lr=1e-3) for m in methods]

        def sequential():
            for m, b, o in zip(methods, batches, opts):
                nll, n = m.nll(b)
                o.zero_grad(set_to_none=True)
                (nll / n).backward()
                o.step()

        def packed():
            for o in opts:
                o.zero_grad(set_to_none=True)
            packed_loss(methods, batches).backward()
            for o in opts:
                o.step()

        sequential(), packed()  # warm-up
        times = {"sequential": [], "packed": []}
        for _ in range(args.reps):
            for name, fn in (("sequential", sequential), ("packed", packed)):
                synchronize(args.device)
                t0 = time.perf_counter()
                fn()
                synchronize(args.device)
                times[name].append(time.perf_counter() - t0)
        tokens = k * args.batch * args.seq
        seq_s, packed_s = statistics.median(times["sequential"]), statistics.median(times["packed"])
        rows.append(
            {
                "k": k,
                "max_grad_diff": diff,
                "sequential_s": seq_s,
                "packed_s": packed_s,
                "sequential_tokens_per_s": tokens / seq_s,
                "packed_tokens_per_s": tokens / packed_s,
                "speedup": seq_s / packed_s,
            }
        )
        print(
            f"K={k}: sequential {seq_s:.2f} s, packed {packed_s:.2f} s (x{seq_s / packed_s:.2f}), "
            f"max gradient difference {diff:.2e}",
            flush=True,
        )
    out = {
        "benchmark": "packing",
        "model": model_label(args.model),
        "batch": args.batch,
        "seq": args.seq,
        "prefix": args.prefix,
        "reps": args.reps,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
