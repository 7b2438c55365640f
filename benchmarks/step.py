"""Training-step throughput: embinject's trainers against the stock PEFT equivalents.

    python -m benchmarks.step [--reps 5] [--batch 8] [--seq 64] [--prefix 8] [--bf16] [--device cuda --out FILE]

Same frozen model object, same batch, same adapter size; steps of the two sides are interleaved
(A B A B ...) and the median is reported, because this machine is noisy. Achieved GFLOP/s counts the
frozen model's forward plus activation-gradient matmul FLOPs (4 x params x tokens, LM head only on
the positions each side actually projects) and is compared with a large fp32 matmul measured in the
same run at the same thread count (on a GPU: the device's fp32 matmul, timed after a synchronise). Writes
benchmarks/results/step.json, or --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

from embinject.config_files import load_config
from embinject.data import build_windows, select_windows
from embinject.fsutil import atomic_write_text
from embinject.methods import build_method
from embinject.models import load_frozen_lm, tokenizer_fingerprint

from .shape_model import model_label

OUT = Path(__file__).resolve().parent / "results"


def synchronize(device: str) -> None:
    """CUDA kernels run asynchronously: a timer must wait for them."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak_gflops(device: str = "cpu", n: int = 2048, reps: int = 5) -> float:
    n = 8192 if device.startswith("cuda") else n  # a GPU needs a larger product to reach its peak
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def matmul_params(lm) -> tuple[int, int]:
    """(linear params inside the decoder layers, LM head params)."""
    head = lm.get_output_embeddings().weight.numel()
    body = sum(m.weight.numel() for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    return body, head


def step_fn_ours(method, batch):
    opt = torch.optim.AdamW(method.trainable_parameters(), lr=1e-3)

    def step():
        nll, n = method.nll(batch)
        loss = nll / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def step_fn_peft(peft_model, batch):
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids, labels = batch["input_ids"], batch["labels"]

    def step():
        loss = peft_model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def with_bf16(fn, device: str = "cpu"):
    """The same step under bf16 autocast (CPUs with AVX512-BF16/AMX and recent GPUs run it on bf16 kernels)."""

    def step():
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            fn()

    return step


def interleave(fns: dict, reps: int, device: str = "cpu") -> dict[str, list[float]]:
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up (allocator, first-call overheads)
    for _ in range(reps):
        for k, fn in fns.items():
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[k].append(time.perf_counter() - t0)
    return times


def _args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled:smollm2-135m")
    p.add_argument("--data", default="builtin:python-docs")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--prefix", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--methods", nargs="+", default=["prompt", "injection", "prefix", "lora"])
    p.add_argument("--bf16", action="store_true", help="also time both sides under bf16 autocast")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=OUT / "step.json")
    return p.parse_args(argv)


def train_batch(args, lm) -> dict:
    """The first --batch training windows of --data at --seq tokens, as inputs and labels."""
    cfg_data = load_config(None, [f"data.path={args.data}", f"data.seq_len={args.seq}"]).data
    train_w, _ = build_windows(cfg_data, lm.tokenizer, tokenizer_fingerprint(lm.tokenizer))
    ids = select_windows(train_w, args.batch, "window", "train").tokens.to(args.device)
    return {"input_ids": ids, "labels": ids.clone()}


def build_ours(args, name: str, lm, batch: dict):
    """embinject's trainer for one method at the benchmark's adapter size, and the batch it trains on."""
    P = args.prefix
    over = [
        f"model={args.model}",
        f"method={name}",
        f"adapter.prefix_len={P if name != 'injection' else P - 1}",
        "adapter.inject_tokens=1",
        "adapter.mlp_width=0" if name == "prefix" else "adapter.mlp_width=512",
        "adapter.embedding_model=fourier",
        "adapter.rank=8",
    ]
    cfg = load_config(None, over)
    b = dict(batch)
    if name == "injection":
        b["sentence_embedding"] = torch.randn(args.batch, 2 * cfg.adapter.fourier_features, device=args.device)
    ours = build_method(cfg, lm.model, encoder_dim=2 * cfg.adapter.fourier_features, tokenizer=lm.tokenizer)
    return ours, b


def peft_peer(name: str, lm, ours, prefix: int):
    """The stock PEFT model a method is timed against (None where there is none)."""
    if name in ("prompt", "injection"):
        # Injection's peer is PEFT prompt tuning with as many prefix vectors (P - 1 static + 1 injected), timed in
        # the same interleaved loop so the ratio is one run's, not two blocks'.
        return get_peft_model(lm.model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prefix))
    if name == "prefix":
        return get_peft_model(lm.model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prefix))
    if name == "lora":
        return ours.peft_model  # the same LoRA layers: only the loss path differs
    return None


def time_sides(args, name: str, fns: dict, rows: list[dict]) -> dict[str, list[float]]:
    """Every side's step times; where a stock side fails, embinject's alone and the failure recorded in `rows`."""
    try:
        return interleave(fns, args.reps, args.device)
    except Exception as exc:  # a stock path that breaks is a result worth recording, not a crash
        times = interleave({k: f for k, f in fns.items() if k.startswith("embinject")}, args.reps, args.device)
        rows.append({"method": name, "side": "peft", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"})
        return times


def side_row(args, name: str, side: str, ts: list[float], matmul: tuple[int, int], peak: float) -> dict:
    """One side's median step, its tokens/s, and the FLOP/s of the frozen model's matmuls it achieved."""
    B, T, P = args.batch, args.seq, args.prefix
    body, head = matmul
    med = statistics.median(ts)
    prefix_tokens = 0 if name in ("lora", "prefix") else P
    body_tokens = B * (T + prefix_tokens)
    head_tokens = B * (T - 1) if side.startswith("embinject") else B * (T + prefix_tokens)
    flops = 4 * (body * body_tokens + head * head_tokens)
    return {
        "method": name,
        "side": side,
        "median_s": med,
        "all_s": ts,
        "tokens_per_s": B * T / med,
        "gflops": flops / med / 1e9,
        "peak_fraction": flops / med / 1e9 / peak,
    }


def method_rows(args, name: str, lm, batch: dict, matmul: tuple[int, int], peak: float) -> list[dict]:
    """One method's rows: embinject's step and its PEFT peer's, interleaved, each also under bf16 with --bf16."""
    ours, b = build_ours(args, name, lm, batch)
    fns = {"embinject": step_fn_ours(ours, b)}
    peft_model = peft_peer(name, lm, ours, args.prefix)
    if peft_model is not None:
        fns["peft"] = step_fn_peft(peft_model, batch)
    if args.bf16:
        fns.update({f"{k}+bf16": with_bf16(f, args.device) for k, f in list(fns.items())})
    rows = []
    times = time_sides(args, name, fns, rows)
    rows += [side_row(args, name, side, ts, matmul, peak) for side, ts in times.items()]
    ours.release()
    return rows


def add_speedups(rows: list[dict], methods: list[str]) -> None:
    """Every side's speed against stock PEFT in fp32, where the run has that side."""
    for name in methods:
        sides = {r["side"]: r for r in rows if r["method"] == name and "median_s" in r}
        if "peft" in sides:
            for side, r in sides.items():
                if side != "peft":
                    r["speedup_vs_peft"] = sides["peft"]["median_s"] / r["median_s"]


def print_rows(rows: list[dict], peak: float) -> None:
    for r in rows:
        if "median_s" in r:
            extra = f"  x{r['speedup_vs_peft']:.2f} vs PEFT fp32" if "speedup_vs_peft" in r else ""
            print(
                f"{r['method']:10s} {r['side']:15s} {r['median_s']:.2f} s/step  {r['tokens_per_s']:.0f} tok/s  "
                f"{r['gflops']:.0f} GFLOP/s ({100 * r['peak_fraction']:.0f}% of {peak:.0f}){extra}"
            )
        else:
            print(f"{r['method']:10s} {r['side']:10s} failed: {r['error']}")


def main(argv=None) -> int:
    args = _args(argv)
    dev = args.device
    torch.manual_seed(0)
    lm = load_frozen_lm(args.model, device=dev)
    batch = train_batch(args, lm)
    matmul = matmul_params(lm.model)
    peak = matmul_peak_gflops(dev)
    threads = torch.get_num_threads()
    rows = [r for name in args.methods for r in method_rows(args, name, lm, batch, matmul, peak)]
    add_speedups(rows, args.methods)
    device_name = torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"
    out = {
        "benchmark": "step",
        "model": model_label(args.model),
        "device": dev,
        "device_name": device_name,
        "batch": args.batch,
        "seq_len": args.seq,
        "prefix": args.prefix,
        "reps": args.reps,
        "bf16": args.bf16,
        "threads": threads,
        "matmul_peak_gflops": peak,
        "machine": platform.platform(),
        "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=1))
    print_rows(rows, peak)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
