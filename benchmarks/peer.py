"""The same small search through transformers' `Trainer.hyperparameter_search(backend="ray")` with a
PEFT prompt-tuning model, and through `python -m embinject.tune`.

    python -m benchmarks.peer [--trials 4] [--steps 20]

Both search prompt tuning over the learning rate (log-uniform 1e-4..1e-2) and the prompt length
(1..8) with the same number of trials, each trial the same number of steps of batch 8 on the same
token windows of the bundled SmolLM2-135M, 1 CPU per trial, 2 trials at a time, one evaluation at
the end on the same validation windows (so last = best for both), scoring the same tokens (window
positions 1..T-1), constant learning rate on both sides. Neither uses early stopping.
Reported: end-to-end wall clock of each search (Ray start, model loading, everything) and the best
validation perplexity each found. A third run is embinject as users run it: the same search with its
default ASHA early stopping (evaluations every quarter of the steps, cuts after the first quarter),
reported with the time it took to first reach the HF search's best perplexity.
Each side runs as users run it by default (embinject: `train.dtype: auto`, bf16 autocast where the CPU has
bf16 instructions; the HF Trainer: float32), and embinject once more at float32, so the same-precision
ratio shows where the gain comes from. A last arm gives PEFT embinject's kind of prompt initialisation
(`prompt_tuning_init=SAMPLE_VOCAB`: real token embeddings, as embinject's `vocab` prior), separating the
search system's own contribution from the initialisation's. Every arm runs `--repeats` times,
interleaved; medians are reported. Writes benchmarks/results/peer.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from embinject.config_files import load_config
from embinject.data import build_windows, select_windows
from embinject.fsutil import atomic_write_text
from embinject.models import load_frozen_lm, tokenizer_fingerprint
from embinject.space import load_search_file
from embinject.tune.driver.outcome import SearchOutcome

from .search_efficiency import run_search

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
MODEL = "bundled:smollm2-135m"


def windows(seq: int, n_train: int, n_val: int):
    lm = load_frozen_lm(MODEL)
    cfg = load_config(None, [f"data.seq_len={seq}"]).data
    train_w, val_w = build_windows(cfg, lm.tokenizer, tokenizer_fingerprint(lm.tokenizer))
    return (
        select_windows(train_w, n_train, "window", "train").tokens,
        select_windows(val_w, n_val, "window", "validation").tokens,
        lm.path,
    )


class Windows(torch.utils.data.Dataset):
    def __init__(self, tokens):
        self.tokens = tokens

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        labels = self.tokens[i].clone()
        labels[0] = -100  # score positions 1..T-1, exactly the tokens embinject scores
        return {"input_ids": self.tokens[i], "labels": labels}


def run_hf(args, train_t, val_t, model_path: str, init: str = "RANDOM") -> dict:
    from peft import PromptTuningConfig, get_peft_model
    from ray import tune
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    def model_init(trial):
        n = int(trial["prefix_len"]) if trial else 8
        base = AutoModelForCausalLM.from_pretrained(model_path)
        return get_peft_model(
            base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, prompt_tuning_init=init)
        )

    out = tempfile.mkdtemp(prefix="hf-peer-")
    targs = TrainingArguments(
        output_dir=out,
        max_steps=args.steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        eval_strategy="steps",
        eval_steps=args.steps,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        lr_scheduler_type="constant",
    )  # embinject's AdamW runs at a constant rate too
    trainer = Trainer(model_init=model_init, args=targs, train_dataset=Windows(train_t), eval_dataset=Windows(val_t))
    t0 = time.time()
    best = trainer.hyperparameter_search(
        hp_space=lambda _: {"learning_rate": tune.loguniform(1e-4, 1e-2), "prefix_len": tune.randint(1, 9)},
        backend="ray",
        n_trials=args.trials,
        direction="minimize",
        resources_per_trial={"cpu": 1},
        max_concurrent_trials=2,
        storage_path=tempfile.mkdtemp(prefix="hf-peer-ray-"),
    )
    wall = time.time() - t0
    import ray

    ray.shutdown()
    return {"wall_s": wall, "best_val_perplexity": math.exp(best.objective), "best_params": best.hyperparameters}


def perplexity_timeline(outcome: SearchOutcome) -> list[tuple[float, float]]:
    """(unix seconds, val perplexity) of every evaluation of every trial, from the MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(outcome.tracking_uri)
    exp = client.get_experiment_by_name(outcome.experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    return sorted(
        (m.timestamp / 1000, m.value) for r in runs for m in client.get_metric_history(r.info.run_id, "val_perplexity")
    )


def run_embinject(args, seq: int, asha: bool = False, dtype: str = "auto") -> dict:
    storage = tempfile.mkdtemp(prefix="embinject-peer-")
    quarter = max(1, args.steps // 4)
    schedule = (
        [
            f"train.eval_every={quarter}",
            "tune.scheduler.type=asha",
            f"tune.scheduler.max_t={args.steps}",
            f"tune.scheduler.grace_period={quarter}",
            "tune.scheduler.reduction_factor=2",
        ]
        if asha
        else [f"train.eval_every={args.steps}", "tune.scheduler.type=none"]
    )
    search = load_search_file(
        ROOT / "search_spaces" / "quickstart.yaml",
        [
            "method=prompt",
            "adapter.embed_source=window",
            f"data.seq_len={seq}",
            f"data.train_samples={args.train}",
            f"data.val_samples={args.val}",
            "train.batch_size=8",
            "train.eval_batch_size=32",
            f"train.max_steps={args.steps}",
            "train.patience=0",
            f"train.dtype={dtype}",
            "search={train.lr: {loguniform: [1.0e-4, 1.0e-2]}, adapter.prefix_len: {randint: [1, 8]}}",
            f"tune.num_samples={args.trials}",
            "tune.max_concurrent_trials=2",
            *schedule,
            "tune.points_to_evaluate=[]",
            "tune.time_budget_s=null",
            f"tune.storage_path={storage}",
            "mlflow.register_as=null",
        ],
    )
    t0 = time.time()
    outcome = run_search(search, verbose=0)
    return {
        "wall_s": time.time() - t0,
        "best_val_perplexity": outcome.best["best_val_perplexity"],
        "best_params": {k: outcome.best[k] for k in ("train.lr", "adapter.prefix_len")},
        "timeline": [(t - t0, v) for t, v in perplexity_timeline(outcome)],
    }


def _median_run(runs: list[dict]) -> dict:
    """The run with the median wall time, with every repeat's wall time and best perplexity beside it."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    mid = dict(ordered[(len(ordered) - 1) // 2])
    mid["walls_s"] = [r["wall_s"] for r in runs]
    mid["best_val_perplexities"] = [r["best_val_perplexity"] for r in runs]
    mid["wall_s"] = statistics.median(r["wall_s"] for r in runs)
    return mid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--train", type=int, default=256)
    p.add_argument("--val", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    train_t, val_t, model_path = windows(args.seq, args.train, args.val)
    arms = {
        "embinject": lambda: run_embinject(args, args.seq),
        "hf_trainer_ray_peft": lambda: run_hf(args, train_t, val_t, model_path),
        "embinject_float32": lambda: run_embinject(args, args.seq, dtype="float32"),
        "hf_trainer_ray_peft_vocab_init": lambda: run_hf(args, train_t, val_t, model_path, init="SAMPLE_VOCAB"),
        "embinject_asha": lambda: run_embinject(args, args.seq, asha=True),
    }
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for rep in range(args.repeats):  # interleaved, so a slow spell of the machine hits every arm alike
        for name, run in arms.items():
            runs[name].append(run())
            print(
                f"repeat {rep + 1}: {name} {runs[name][-1]['wall_s']:.1f} s, "
                f"best {runs[name][-1]['best_val_perplexity']:.3f}",
                flush=True,
            )
    med = {name: _median_run(r) for name, r in runs.items()}
    ours, hf, ours32, ours_asha = (
        med["embinject"],
        med["hf_trainer_ray_peft"],
        med["embinject_float32"],
        med["embinject_asha"],
    )
    hf_best = statistics.median(hf["best_val_perplexities"])
    reached = [next((t for t, v in r["timeline"] if v <= hf_best), None) for r in runs["embinject_asha"]]
    reached = [t for t in reached if t is not None]
    ours_asha["seconds_to_hf_best"] = statistics.median(reached) if reached else None
    result = {
        "benchmark": "peer",
        "trials": args.trials,
        "steps": args.steps,
        "seq_len": args.seq,
        "batch": 8,
        "train_windows": args.train,
        "val_windows": args.val,
        "repeats": args.repeats,
        **med,
        "speedup": hf["wall_s"] / ours["wall_s"],  # equal work, each side as users run it by default
        "speedup_same_precision": hf["wall_s"] / ours32["wall_s"],
        "speedup_asha": hf["wall_s"] / ours_asha["wall_s"],
        "speedup_to_hf_best": None
        if ours_asha["seconds_to_hf_best"] is None
        else hf["wall_s"] / ours_asha["seconds_to_hf_best"],
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    OUT.mkdir(exist_ok=True)
    atomic_write_text(OUT / "peer.json", json.dumps(result, indent=1, default=str))
    print(json.dumps({k: v for k, v in result.items() if k.startswith("speedup")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
