"""How exactly a packed trial follows its unpacked run on the real model, and why not bit for bit.

    python -m benchmarks.pack_exactness [--steps 24] [--eval-every 4] [--data ../shared/data/sst2]

Trials of the quickstart space on the bundled SmolLM2-135M (float32), one per encoder the space offers and its
points_to_evaluate shape: (1) one step's loss and gradients, packed with the others against each trial alone;
(2) each trial's validation curve trained alone with 1 and with 2 torch threads, and packed with the others (a
`StepPack` in this process, as a pack host runs it). A packed step is the unpacked step up to float32 rounding
(matrix products of another shape sum in another order); training amplifies rounding, so the curves are compared
with the same trial trained alone at another thread count, whose rounding differs as much.
Writes benchmarks/results/pack_exactness.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from pathlib import Path

import torch
import yaml

from embinject.fsutil import atomic_write_text
from embinject.methods import build_method
from embinject.space import load_search_file, trial_config
from embinject.train import prepare, train
from embinject.train.packing import PackedSteps, StepPack, packed_nll

OUT = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
TRIALS = {  # name -> the searched values (quickstart.yaml's space)
    "minilm-reference": [
        "train.lr=0.001",
        "adapter.prefix_len=2",
        "adapter.mlp_width=512",
        "adapter.embedding_model=bundled:all-minilm-l6-v2",
    ],  # its points_to_evaluate trial
    "minilm-high-lr": [
        "train.lr=0.0088",
        "adapter.prefix_len=4",
        "adapter.mlp_width=64",
        "adapter.embedding_model=bundled:all-minilm-l6-v2",
    ],
    "fourier": ["train.lr=0.003", "adapter.prefix_len=5", "adapter.mlp_width=256", "adapter.embedding_model=fourier"],
    "lm-mean": ["train.lr=0.002", "adapter.prefix_len=6", "adapter.mlp_width=64", "adapter.embedding_model=lm-mean"],
}


def configs(args) -> dict:
    """Each trial's config as the quickstart search makes it (its base, these values), on `args.data`."""
    search = load_search_file(str(ROOT / "search_spaces" / "quickstart.yaml"))
    out = {}
    for name, values in TRIALS.items():
        cfg = trial_config(search.base, {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in values)})
        cfg.data.path, cfg.train.max_steps, cfg.train.eval_every = args.data, args.steps, args.eval_every
        cfg.train.patience, cfg.train.dtype, cfg.train.progress = 0, "float32", False
        out[name] = cfg
    return out


def step_agreement(cfgs: dict) -> dict:
    """Per trial: relative differences of one packed step's NLL and gradients against the trial's step alone."""
    members = []
    for cfg in cfgs.values():
        prep = prepare(cfg)
        torch.manual_seed(cfg.train.seed)
        method = build_method(cfg, prep.lm.model, prep.encoder_dim, prep.lm.tokenizer)
        rows = torch.arange(cfg.train.batch_size)  # indexing copies: cached tensors are inference tensors
        members.append((method, {k: v[rows] for k, v in prep.train.items()}))
    packed = packed_nll(members)
    sum(nll / n for nll, n in packed).backward()
    out = {}
    for name, (method, batch), (nll, n) in zip(cfgs, members, packed):
        grads = [p.grad.clone() for p in method.trainable_parameters()]
        method.zero_grad(set_to_none=True)
        solo_nll, solo_n = method.nll(batch)
        (solo_nll / solo_n).backward()
        out[name] = {
            "nll_rel": abs(nll.item() - solo_nll.item()) / solo_nll.item(),
            "grad_rel": max(
                float((p.grad - g).abs().max() / p.grad.abs().max())
                for p, g in zip(method.trainable_parameters(), grads)
            ),
        }
        method.release()
    return out


def curve(result: dict) -> dict:
    return {h["step"]: h["val_perplexity"] for h in result["history"]}


def solo_curves(cfgs: dict, threads: int) -> dict:
    torch.set_num_threads(threads)
    out = {}
    for name, cfg in cfgs.items():
        result, method = train(cfg)
        method.release()
        out[name] = curve(result)
    return out


def packed_curves(cfgs: dict, threads: int) -> dict:
    torch.set_num_threads(threads)
    # patience long enough that every step packs every member: the comparison is of arithmetic, not of timing
    pack, lock, out = StepPack("cpu", None, patience_s=600.0), threading.Lock(), {}

    def member(name: str) -> None:
        try:
            result, method = train(cfgs[name], steps=PackedSteps(pack, name, lock))
            method.release()
            out[name] = curve(result)
        finally:
            pack.leave(name)

    for name in cfgs:
        pack.join(name)
    threads_ = [threading.Thread(target=member, args=(name,)) for name in cfgs]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    return out


def max_rel(a: dict, b: dict) -> float:
    return max(abs(b[s] - a[s]) / a[s] for s in a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    p.add_argument("--out", default=str(OUT / "pack_exactness.json"))
    args = p.parse_args()
    cfgs = configs(args)
    t0 = time.time()
    steps = step_agreement(cfgs)
    arms = {
        "solo_1_thread": solo_curves(cfgs, 1),
        "solo_2_threads": solo_curves(cfgs, 2),
        "packed_2_threads": packed_curves(cfgs, 2),
    }
    trials = {}
    for name in cfgs:
        ref = arms["solo_1_thread"][name]
        trials[name] = {
            "values": TRIALS[name],
            "step": steps[name],
            "curves": {arm: {str(s): v for s, v in c[name].items()} for arm, c in arms.items()},
            "packed_vs_solo": max_rel(ref, arms["packed_2_threads"][name]),
            "solo_threads_vs_solo": max_rel(ref, arms["solo_2_threads"][name]),
            "first_eval": {
                "packed_vs_solo": abs(arms["packed_2_threads"][name][min(ref)] - ref[min(ref)]) / ref[min(ref)],
                "solo_threads_vs_solo": abs(arms["solo_2_threads"][name][min(ref)] - ref[min(ref)]) / ref[min(ref)],
            },
        }
    data = {
        "time": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "model": "bundled:smollm2-135m",
        "data": Path(args.data).name,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "dtype": "float32",
        "trials": trials,
        "seconds": time.time() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out), json.dumps(data, indent=1))
    print(
        json.dumps(
            {n: {k: t[k] for k in ("step", "packed_vs_solo", "solo_threads_vs_solo")} for n, t in trials.items()},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
