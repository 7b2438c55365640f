"""Per-op overhead: does `torch.compile` of the frozen LM's decoder pay for itself in a trial's steps and evaluations?

    python -m benchmarks.compile [--cases tiny-packed smollm-packed smollm-solo] [--dynamic false auto true] [--reps 15]
                                 [--mode default] [--threads 1] [--model-dir DIR] [--device cpu] [--out FILE] [--keep]

Cases: `tiny-packed`, the tests' random Llama at width 32 x 2 layers with K=8 prompt-tuning trials of batch 8 x 32
packed (the size where per-op overhead dominates); `smollm-packed`, the bundled SmolLM2-135M with K=2 of batch 8 x 64
packed; `smollm-solo`, one trial of batch 8 x 64 alone (`SoloSteps`). `--model-dir` stands in for the bundled model
(a shape model on a GPU, as benchmarks/gpu_rows.sh does). For each case and `dynamic` setting of `torch.compile`:

- the compile seconds: the first compiled call less an eager call, with an empty inductor cache (the first trial on a
  machine) and again after `torch._dynamo.reset()` with the cache filled (a later trial process on it);
- seconds per training step (forward, backward, AdamW) and per packed evaluation pass (eval batch 32 per member,
  no gradient), eager and compiled interleaved (A B A B ...), median of `reps`, on the same model object;
- the break-even step count (compile seconds / seconds saved per step; none where compiled is not faster);
- the max relative difference of the loss, the gradients and the evaluation's per-window NLL against eager;
- for packed cases: members join and leave and their prefixes differ, so packs change shape. A sequence of packs of
  varying size and prefix lengths runs compiled (counting the graphs compiled and its seconds, compiles included) and
  again once compiled, against eager.

What is compiled is the decoder's forward, the call where the per-op overhead is (layers x ops); the LM head, the
loss and the packing around it stay eager, as they are a handful of ops and hold data-dependent shapes. Writes
benchmarks/results/compile.json (or --out), rewritten after every case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from embinject.config_files import load_config
from embinject.fsutil import atomic_write_text
from embinject.methods import build_method
from embinject.models import load_frozen_lm
from embinject.train.evaluation import window_nll
from embinject.train.loop import SoloSteps
from embinject.train.packing import packed_nll

from .shape_model import model_label
from .step import synchronize
from .tiny_model import make_tiny_model

OUT = Path(__file__).resolve().parent / "results"
CASES = {
    "tiny-packed": {"model": "tiny", "k": 8, "batch": 8, "seq": 32, "packed": True},
    "smollm-packed": {"model": "bundled:smollm2-135m", "k": 2, "batch": 8, "seq": 64, "packed": True},
    "smollm-solo": {"model": "bundled:smollm2-135m", "k": 1, "batch": 8, "seq": 64, "packed": False},
}
PREFIX = 8
EVAL_BATCH = 32  # train.eval_batch_size's default
# pack compositions as a search's members join and leave: (member indices); members' prefix lengths differ
SEQUENCE = [range(8), range(7), range(1, 7), range(6), range(2, 8), range(4), range(3), (0, 5), (6,), range(8)]
SEQUENCE_PREFIXES = [1, 8, 3, 5, 8, 2, 7, 4]  # adapter.prefix_len: {randint: [1, 8]} in the search spaces


def trials(lm, model: str, prefixes: list[int]) -> list:
    """Prompt-tuning methods with these prefix lengths."""
    return [
        build_method(
            load_config(None, [f"model={model}", "method=prompt", f"adapter.prefix_len={prefix}", f"train.seed={i}"]),
            lm.model,
            tokenizer=lm.tokenizer,
        )
        for i, prefix in enumerate(prefixes)
    ]


def random_batches(lm, n: int, rows: int, seq: int, device: str, seed: int) -> list[dict]:
    out = []
    for i in range(n):
        ids = torch.randint(0, lm.tokenizer.vocab_size, (rows, seq), generator=torch.Generator().manual_seed(seed + i))
        out.append({"input_ids": ids.to(device), "labels": ids.to(device)})
    return out


class DecoderSwitch:
    """The decoder's forward eager or compiled, chosen per call, so both sides run interleaved on one model object."""

    def __init__(self, decoder, dynamic: bool | None, mode: str):
        self.decoder, self.eager = decoder, decoder.forward
        self.compiled = torch.compile(self.eager, dynamic=dynamic, mode=None if mode == "default" else mode)

    def use(self, compiled: bool) -> None:
        self.decoder.forward = self.compiled if compiled else self.eager

    def close(self) -> None:
        vars(self.decoder).pop("forward", None)


def train_step(methods: list, batches: list, opts: list | None, packed: bool) -> tuple[list[float], list[torch.Tensor]]:
    """One training step (packed: as `StepPack._forward_backward`; alone: `SoloSteps.step`); the losses and each
    member's gradient. `opts` None: the gradients only, no optimizer step (for comparing them)."""
    for m in methods:
        m.prompt.grad = None
    if packed:
        losses = [nll / max(n, 1) for nll, n in packed_nll(list(zip(methods, batches)))]
        torch.stack(losses).sum().backward()
        values = [float(v) for v in torch.stack(losses).detach().cpu()]
    else:
        opt = opts[0] if opts else torch.optim.SGD(methods[0].trainable_parameters(), lr=0.0)
        values = [SoloSteps().step(methods[0], opt, batches[0], None, str(batches[0]["input_ids"].device))]
    grads = [m.prompt.grad.detach().clone() for m in methods]
    for o in opts or []:
        o.step()
    return values, grads


def evaluate(methods: list, inputs: list, packed: bool) -> list[torch.Tensor]:
    """Each member's per-window NLL over its evaluation windows (packed: as `StepPack._forward`; alone:
    `window_nll`)."""
    if not packed:
        return [window_nll(methods[0], inputs[0], EVAL_BATCH, str(inputs[0]["input_ids"].device))[0]]
    for m in methods:
        m.eval()
    try:
        with torch.no_grad():
            return [nll.double().cpu() for nll, _ in packed_nll(list(zip(methods, inputs)), per_window=True)]
    finally:
        for m in methods:
            m.train()


def relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Max over members of max |a - b| / max |b|."""
    return max(
        float((x.double() - y.double()).abs().max() / y.double().abs().max().clamp_min(1e-30)) for x, y in zip(a, b)
    )


def timed(fn, device: str) -> tuple[float, object]:
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def first_calls(switch: DecoderSwitch, step, ev, device: str) -> dict:
    """The compiled side's first training step and first evaluation (where it compiles), and the eager ones' results."""
    switch.use(False)
    loss_e, grad_e = step(None)
    nll_e = ev()
    switch.use(True)
    before = graphs()
    train_s, (loss_c, grad_c) = timed(lambda: step(None), device)
    eval_s, nll_c = timed(ev, device)
    return {
        "first_train_s": train_s,
        "first_eval_s": eval_s,
        "graphs": graphs() - before,
        "loss_rel_diff": relative([torch.tensor(loss_c)], [torch.tensor(loss_e)]),
        "grad_rel_diff": relative(grad_c, grad_e),
        "eval_nll_rel_diff": relative(nll_c, nll_e),
    }


def interleaved(switch: DecoderSwitch, fn, reps: int, device: str) -> tuple[float, float]:
    """Median seconds of `fn` eager and compiled, interleaved."""
    times = {False: [], True: []}
    for _ in range(reps):
        for compiled in (False, True):
            switch.use(compiled)
            times[compiled].append(timed(fn, device)[0])
    return statistics.median(times[False]), statistics.median(times[True])


def fixed_pack(lm, model: str, spec: dict, dynamic: bool | None, args) -> dict:
    """One pack (or trial) of fixed shape: compile seconds (cold and warm inductor cache), seconds per step and per
    evaluation pass eager and compiled, and the differences against eager."""
    k, packed, device = spec["k"], spec["packed"], args.device
    methods = trials(lm, model, [PREFIX] * k)
    batches = random_batches(lm, k, spec["batch"], spec["seq"], device, seed=0)
    evals = random_batches(lm, k, EVAL_BATCH, spec["seq"], device, seed=100)
    opts = [torch.optim.AdamW(m.trainable_parameters(), lr=1e-3) for m in methods]

    def step(optimizers):
        return train_step(methods, batches, optimizers, packed)

    def ev():
        return evaluate(methods, evals, packed)

    step(opts), ev()  # eager warm-up
    torch._dynamo.reset()
    switch = DecoderSwitch(lm.model.get_decoder(), dynamic, args.mode)
    try:
        cold = first_calls(switch, step, ev, device)
        train_e, train_c = interleaved(switch, lambda: step(opts), args.reps, device)
        eval_e, eval_c = interleaved(switch, ev, args.reps, device)
    finally:
        switch.close()
    torch._dynamo.reset()  # a new trial process: nothing compiled in memory, the inductor cache on disk filled
    switch = DecoderSwitch(lm.model.get_decoder(), dynamic, args.mode)
    try:
        warm = first_calls(switch, step, ev, device)
    finally:
        switch.close()
    row = {
        "eager_train_s": train_e,
        "compiled_train_s": train_c,
        "eager_eval_s": eval_e,
        "compiled_eval_s": eval_c,
        "cold": cold,
        "warm": warm,
    }
    for cache in ("cold", "warm"):
        row[f"compile_train_s_{cache}"] = row[cache]["first_train_s"] - train_e
        row[f"compile_eval_s_{cache}"] = row[cache]["first_eval_s"] - eval_e
        saved = train_e - train_c
        row[f"break_even_steps_{cache}"] = row[f"compile_train_s_{cache}"] / saved if saved > 0 else None
    return row


def varying_packs(lm, model: str, spec: dict, dynamic: bool | None, args) -> dict:
    """Packs whose members join and leave (SEQUENCE, members with SEQUENCE_PREFIXES' prefix lengths, at most the
    case's K): graphs compiled and seconds over the sequence, compiled from nothing in memory, then again."""
    k, device = spec["k"], args.device
    packs = [c for c in ([i for i in comp if i < k] for comp in SEQUENCE) if c]
    methods = trials(lm, model, SEQUENCE_PREFIXES[:k])
    batches = random_batches(lm, k, spec["batch"], spec["seq"], device, seed=0)

    def run(compiled: bool, switch: DecoderSwitch) -> float:
        switch.use(compiled)
        return sum(
            timed(lambda: train_step([methods[i] for i in c], [batches[i] for i in c], None, True), device)[0]
            for c in packs
        )

    torch._dynamo.reset()
    switch = DecoderSwitch(lm.model.get_decoder(), dynamic, args.mode)
    try:
        eager_first = run(False, switch)
        before = graphs()
        compiled_first = run(True, switch)
        compiled_graphs = graphs() - before
        again = [(run(False, switch), run(True, switch)) for _ in range(3)]
    finally:
        switch.close()
    return {
        "packs": [len(c) for c in packs],
        "prefixes": SEQUENCE_PREFIXES[:k],
        "graphs": compiled_graphs,
        "eager_first_s": eager_first,
        "compiled_first_s": compiled_first,
        "eager_s": statistics.median(a for a, _ in again),
        "compiled_s": statistics.median(b for _, b in again),
    }


def load_case_model(spec: dict, args, tiny: Path):
    if spec["model"] == "tiny":
        return str(tiny), load_frozen_lm(str(tiny), device=args.device)
    name = args.model_dir or spec["model"]
    return name, load_frozen_lm(name, device=args.device)


def run_cases(args, out: dict, tiny: Path) -> None:
    """Every case and `dynamic` setting asked for, `out` (with its rows) rewritten after each."""
    for case in args.cases:
        spec = CASES[case]
        model, lm = load_case_model(spec, args, tiny)
        for dynamic in args.dynamic:
            flag = {"false": False, "auto": None, "true": True}[dynamic]
            row = {
                "case": case,
                **spec,
                "model": "tiny random Llama 32 x 2" if spec["model"] == "tiny" else model_label(model),
                "dynamic": dynamic,
                **fixed_pack(lm, model, spec, flag, args),
            }
            if spec["packed"]:
                row["sequence"] = varying_packs(lm, model, spec, flag, args)
            out["rows"] = [r for r in out["rows"] if (r["case"], r["dynamic"]) != (case, dynamic)] + [row]
            out["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out, json.dumps(out, indent=1))
            print(
                f"{case} dynamic={dynamic}: train eager {row['eager_train_s']:.4f} s, "
                f"compiled {row['compiled_train_s']:.4f} s, "
                f"compile {row['compile_train_s_cold']:.1f} s cold / {row['compile_train_s_warm']:.1f} s warm, "
                f"loss diff {row['cold']['loss_rel_diff']:.1e}",
                flush=True,
            )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument(
        "--dynamic",
        nargs="+",
        choices=["false", "auto", "true"],
        default=["false", "auto", "true"],
        help="torch.compile's dynamic: False, None (automatic after a recompile) or True",
    )
    p.add_argument("--mode", default="default", help="torch.compile's mode (reduce-overhead: CUDA graphs on a GPU)")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (a search's trials set train.threads)")
    p.add_argument("--model-dir", help="in place of the bundled model (benchmarks.shape_model's copy on a GPU)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=OUT / "compile.json")
    p.add_argument("--keep", action="store_true", help="keep --out's rows of the cases and settings not run now")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="embinject-compile-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor")  # empty: the first compile is a cold one
    tiny = make_tiny_model(scratch / "tiny", hidden=32, layers=2)
    out = {
        "benchmark": "compile",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{os.cpu_count()} CPUs",
        "machine": platform.platform(),
        "mode": args.mode,
        "reps": args.reps,
        "eval_batch": EVAL_BATCH,
        "recompile_limit": torch._dynamo.config.recompile_limit,
        "rows": json.loads(args.out.read_text())["rows"] if args.keep and args.out.is_file() else [],
    }
    try:
        run_cases(args, out, tiny)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the tiny model and inductor's cache: this run's own
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
