"""Train one adapter on a frozen LM: `python -m embinject.train CONFIG.yaml [--set k=v ...]`.

`train(cfg, report=...)` is the whole loop, callable from Python; it knows nothing of Ray. After
every evaluation it calls `report(metrics, write_checkpoint)`, where `write_checkpoint(dir)`
saves adapter + optimizer + loop state (safetensors + JSON) so a caller can resume from it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from .cli import prog, run_command
from .config import Config, ConfigError, keys_help, load_config
from .data import Windows, build_windows, select_windows
from .encoders import cached_embeddings, encoder_key, load_encoder
from .evaluate import batches, perplexity, window_nll
from .fsutil import atomic_save_tensors, atomic_write_text, check_writable, discard_corrupt, first_line
from .methods import REGISTRY, AdapterMethod, build_method
from .methods.baseline import Baseline
from .models import FrozenLM, cache_dir, cache_root, load_frozen_lm, tokenizer_fingerprint
from .precision import resolve_dtype

Report = Callable[[dict, Callable[[Path], None]], None]


# ---------------------------------------------------------------- shared preparation

@dataclass
class Prepared:
    """Everything a trial needs that does not depend on the adapter: built once, reused."""

    lm: FrozenLM
    train: dict[str, torch.Tensor]  # input_ids, labels[, sentence_embedding]
    val: dict[str, torch.Tensor]
    encoder_dim: int | None
    device: str
    prepare_seconds: float = 0.0


_LM_CACHE: dict[tuple, FrozenLM] = {}


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no GPU is visible")
    return name


def shared_lm(model: str, device: str) -> FrozenLM:
    """One frozen LM per process and (model, device); methods never change its weights."""
    key = (model, device)
    if key not in _LM_CACHE:
        _LM_CACHE[key] = load_frozen_lm(model, device=device)
    return _LM_CACHE[key]


def encoder_ids(w: Windows, cfg: Config) -> torch.Tensor:
    """What the sentence encoder sees, per `adapter.embed_source`."""
    src = cfg.adapter.embed_source
    if src == "window":
        return w.tokens
    if src == "context":
        return w.tokens[:, : cfg.adapter.context_tokens]
    return w.previous


def scored_labels(w: Windows, cfg: Config) -> torch.Tensor:
    """Labels for the LM: examples score only their targets; windows with `context` keep the first
    context_tokens tokens as input only."""
    labels = w.tokens.clone()
    if w.scored is not None:
        labels[~w.scored] = -100
    elif cfg.adapter.embed_source == "context":
        labels[:, : cfg.adapter.context_tokens] = -100
    return labels


def prepare(cfg: Config) -> Prepared:
    t0 = time.perf_counter()
    device = resolve_device(cfg.train.device)
    lm = shared_lm(cfg.model, device)
    train_w, val_w = build_windows(cfg.data, lm.tokenizer, tokenizer_fingerprint(lm.tokenizer))
    train_w = select_windows(train_w, cfg.data.train_samples, cfg.adapter.embed_source, "train")
    val_w = select_windows(val_w, cfg.data.val_samples, cfg.adapter.embed_source, "validation")
    train = {"input_ids": train_w.tokens, "labels": scored_labels(train_w, cfg)}
    val = {"input_ids": val_w.tokens, "labels": scored_labels(val_w, cfg)}
    encoder_dim = None
    if REGISTRY[cfg.method].needs_encoder:
        a = cfg.adapter
        key = encoder_key(a.embedding_model, lm.tokenizer, a.fourier_features, lm.path)
        encoder = []  # loaded at most once, and only on a cache miss

        def make():
            if not encoder:
                encoder.append(load_encoder(a.embedding_model, lm.model, lm.tokenizer, lm.path, a.fourier_features, device))
            return encoder[0]

        train["sentence_embedding"] = cached_embeddings(key, encoder_ids(train_w, cfg), make)
        val["sentence_embedding"] = cached_embeddings(key, encoder_ids(val_w, cfg), make)
        encoder_dim = train["sentence_embedding"].shape[1]
    return Prepared(lm, train, val, encoder_dim, device, time.perf_counter() - t0)


def baseline_perplexity(prep: Prepared, cfg: Config) -> float:
    """The frozen model's perplexity on exactly the validation tokens the adapter is scored on,
    cached on disk: every trial of a search shares it."""
    h = hashlib.sha256(f"{prep.lm.path}|{resolve_dtype(cfg.train.dtype, prep.device)}|{prep.device}".encode())
    for k in ("input_ids", "labels"):
        h.update(prep.val[k].numpy().tobytes())
    file = cache_dir("baseline") / f"{h.hexdigest()[:24]}.json"
    if file.is_file():
        try:
            ppl = float(json.loads(file.read_text())["perplexity"])
            if math.isfinite(ppl) and ppl > 0:
                return ppl
            raise ValueError(f"perplexity {ppl}")
        except Exception as exc:  # truncated or edited: rebuild it
            discard_corrupt(file, first_line(exc))
    ppl = perplexity(Baseline(cfg, prep.lm.model), prep.val, cfg.train.eval_batch_size, prep.device,
                     autocast_dtype(cfg, prep.device))
    atomic_write_text(file, json.dumps({"perplexity": ppl}))
    return ppl


def autocast_dtype(cfg: Config, device: str) -> torch.dtype | None:
    """The autocast dtype `train.dtype` means on this device (`auto`: bf16 only where it is fast)."""
    from .precision import autocast_dtype as resolved

    return resolved(cfg.train.dtype, device)


# ---------------------------------------------------------------- checkpoints (no pickles)

def save_checkpoint(directory: Path, method: AdapterMethod, opt: torch.optim.Optimizer, state: dict) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(method.adapter_state(), directory / "adapter.safetensors")
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in sd["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    if tensors:
        atomic_save_tensors(tensors, directory / "optimizer.safetensors")
    atomic_write_text(directory / "trainer_state.json", json.dumps(
        {"loop": state, "param_groups": sd["param_groups"], "optimizer_scalars": scalars}, indent=1))


def load_checkpoint(directory: Path, method: AdapterMethod, opt: torch.optim.Optimizer, device: str) -> dict:
    directory = Path(directory)
    method.load_adapter_state({k: v.to(device) for k, v in load_file(str(directory / "adapter.safetensors")).items()})
    meta = json.loads((directory / "trainer_state.json").read_text())
    state: dict[int, dict] = {}
    opt_file = directory / "optimizer.safetensors"
    for key, value in (load_file(str(opt_file)) if opt_file.is_file() else {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value.to(device) if name != "step" else value
    for key, value in meta["optimizer_scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta["loop"]


# ---------------------------------------------------------------- the loop

class Diverged(RuntimeError):
    """Training went non-finite, or validation perplexity went far above the frozen baseline's."""

    def __init__(self, step: int, what: str, value: float, detail: str, lr: float):
        self.step, self.what, self.value = step, what, value
        super().__init__(f"training diverged at step {step}: {what} {value:.6g}{detail}; lower train.lr (now {lr:g})")


def check_divergence(cfg: Config, step: int, what: str, value: float, base_ppl: float | None = None) -> None:
    if not math.isfinite(value):
        raise Diverged(step, what, value, "", cfg.train.lr)
    factor = cfg.train.divergence_factor
    if base_ppl is not None and factor and value > factor * base_ppl:
        raise Diverged(step, what, value, f", more than {factor:g}x the frozen model's {base_ppl:.4g} "
                       "(train.divergence_factor)", cfg.train.lr)


class checkpointed_lm:
    """Gradient checkpointing of the frozen LM for the training loop only (transformers applies it in
    train mode, which changes nothing else for a frozen LM without dropout); eval mode is restored
    afterwards, so generation and other methods see the usual model."""

    def __init__(self, model, enabled: bool):
        self.model, self.enabled = model, enabled

    def __enter__(self):
        if self.enabled:
            if hasattr(self.model, "activation_checkpointing_enable"):  # the newer name; the old one warns
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.train()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            (getattr(self.model, "activation_checkpointing_disable", None) or self.model.gradient_checkpointing_disable)()
            self.model.eval()


def eval_subset(val: dict[str, torch.Tensor], n: int | None) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The windows intermediate evaluations score: a fixed subset, the same for every trial and seed (so that
    trials are compared on the same windows), with its row index; or all of them (index None)."""
    total = len(val["input_ids"])
    if not n or n >= total:
        return val, None
    index = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:n].sort().values
    return {k: v[index] for k, v in val.items()}, index


def subset_and_full(method: AdapterMethod, val: dict, index: torch.Tensor, batch_size: int, device: str,
                    amp) -> tuple[float, float]:
    """(perplexity on the subset `index`, perplexity on every window) from one pass over every window: the
    subset's windows are among them, so scoring them separately would be paid twice."""
    nll, count = window_nll(method, val, batch_size, device, amp)
    ppl = lambda rows: math.exp(float(nll[rows].sum()) / max(int(count[rows].sum()), 1))  # noqa: E731
    return ppl(index), ppl(slice(None))


def score_state(method: AdapterMethod, state: dict | None, val: dict, batch_size: int, device: str, amp) -> float:
    """Perplexity of `method` with the adapter weights `state` (None: as it is), leaving it as it was."""
    if state is None:
        return perplexity(method, val, batch_size, device, amp)
    current = method.adapter_state()
    method.load_adapter_state({k: v.to(device) for k, v in state.items()})
    try:
        return perplexity(method, val, batch_size, device, amp)
    finally:
        method.load_adapter_state({k: v.to(device) for k, v in current.items()})


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train(cfg: Config, report: Report | None = None, resume_from: Path | None = None,
          prepared: Prepared | None = None) -> tuple[dict, AdapterMethod]:
    """Train one adapter; returns (result dict, trained method holding the best weights)."""
    entered = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    prep = prepared or prepare(cfg)
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    device, amp = prep.device, autocast_dtype(cfg, prep.device)
    base_ppl = baseline_perplexity(prep, cfg)
    method = build_method(cfg, prep.lm.model, prep.encoder_dim, prep.lm.tokenizer)
    params = method.trainable_parameters()
    trainable = sum(p.numel() for p in params)
    frozen_total = sum(p.numel() for p in prep.lm.model.parameters() if not p.requires_grad)
    total = frozen_total + trainable
    result = {
        "method": cfg.method, "model": cfg.model,
        "embedding_model": cfg.adapter.embedding_model if method.needs_encoder else None,
        "embed_source": cfg.adapter.embed_source, "scored_tokens_per_window": int((prep.val["labels"][0, 1:] != -100).sum()),
        "train_windows": len(prep.train["input_ids"]), "val_windows": len(prep.val["input_ids"]),
        "trainable_params": trainable, "total_params": total, "trainable_percent": 100.0 * trainable / total,
        "baseline_perplexity": base_ppl, "prepare_seconds": prep.prepare_seconds, "config": cfg.to_dict(),
        "dtype": resolve_dtype(cfg.train.dtype, device),
    }
    if not params:  # baseline: evaluation only
        result.update(val_perplexity=base_ppl, best_epoch=0, epochs_run=0, steps=0, train_seconds=0.0,
                      tokens_per_second=0.0, history=[], stopped_early=False, peak_memory_mb=_peak_memory_mb(device))
        return result, method

    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    n_train = len(prep.train["input_ids"])
    steps_per_epoch = math.ceil(n_train / cfg.train.batch_size)
    max_steps = min(cfg.train.max_steps or 10**12, steps_per_epoch * cfg.train.max_epochs)
    eval_every = cfg.train.eval_every or steps_per_epoch
    loop = {"step": 0, "best_ppl": math.inf, "best_step": 0, "bad_evals": 0, "history": [], "train_seconds": 0.0,
            "eval_seconds": 0.0, "train_tokens": 0, "loss_sum": 0.0, "loss_steps": 0, "stopped_early": False}
    best_state = None
    if resume_from is not None:
        loop = load_checkpoint(resume_from, method, opt, device)
        best_file = Path(resume_from) / "best_adapter" / "adapter.safetensors"
        best_state = load_file(str(best_file)) if best_file.is_file() else None

    def write_checkpoint(directory: Path) -> None:
        """Resumable state, plus the best adapter so far in a form `load_method` reads
        (best_adapter/: adapter.safetensors + embinject.json)."""
        save_checkpoint(directory, method, opt, loop)
        if best_state is not None:
            best_dir = Path(directory) / "best_adapter"
            best_dir.mkdir(exist_ok=True)
            atomic_save_tensors(best_state, best_dir / "adapter.safetensors")
            method.write_meta(best_dir, {"val_perplexity": loop.get("best_ppl_full", loop["best_ppl"]), "step": loop["best_step"]})

    val_eval, subset_index = eval_subset(prep.val, cfg.train.eval_windows)
    subset = subset_index is not None

    progress = None
    if cfg.train.progress and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=max_steps, initial=loop["step"], desc=cfg.method, unit="step", leave=False)
    method.train()
    startup_seconds = time.perf_counter() - entered  # everything before the first step of this process

    def send(entry: dict, final: bool) -> None:
        if report is not None:
            tps = loop["train_tokens"] / max(loop["train_seconds"], 1e-9)
            report({**entry, "best_val_perplexity": loop.get("best_ppl_full", loop["best_ppl"]), "tokens_per_second": tps,
                    "baseline_perplexity": base_ppl, "final": final, "train_seconds": loop["train_seconds"],
                    "trainable_params": trainable, "dtype": result["dtype"],
                    "eval_seconds": loop["eval_seconds"], "startup_seconds": startup_seconds}, write_checkpoint)

    done = loop["stopped_early"] or loop["step"] >= max_steps
    if done and resume_from is not None and loop["history"]:
        # Resumed from a finished run's last checkpoint: the process that wrote it may have died before
        # its caller recorded the final report, so deliver that report (again).
        send(loop["history"][-1], final=True)
    try:
        with checkpointed_lm(prep.lm.model, cfg.train.gradient_checkpointing):
            while not done:
                epoch, in_epoch = divmod(loop["step"], steps_per_epoch)
                order = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.train.seed * 1000 + epoch))
                for batch in batches(prep.train, cfg.train.batch_size, order, start=in_epoch):
                    t0 = time.perf_counter()
                    batch = {k: v.to(device) for k, v in batch.items()}
                    with torch.autocast(device_type=device.split(":")[0], dtype=amp, enabled=amp is not None):
                        nll, count = method.nll(batch)
                    loss = nll / max(count, 1)
                    loss_value = loss.item()
                    check_divergence(cfg, loop["step"] + 1, "training loss", loss_value)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loop["train_seconds"] += time.perf_counter() - t0
                    loop["train_tokens"] += batch["input_ids"].numel()
                    loop["loss_sum"] += loss_value
                    loop["loss_steps"] += 1
                    loop["step"] += 1
                    if progress:
                        progress.update(1)
                        progress.set_postfix(loss=f"{loss_value:.3f}")
                    last = loop["step"] >= max_steps
                    if loop["step"] % eval_every == 0 or last:
                        t_eval = time.perf_counter()
                        full_now = None  # this adapter's score on every window, where that pass is needed anyway
                        if subset and (last or cfg.train.eval_audit):
                            # the last evaluation's adapter is usually the one kept, whose full-set score is the result
                            ppl, full_now = subset_and_full(method, prep.val, subset_index, cfg.train.eval_batch_size,
                                                            device, amp)
                        else:
                            ppl = perplexity(method, val_eval, cfg.train.eval_batch_size, device, amp)
                        entry = {"step": loop["step"], "epoch": loop["step"] / steps_per_epoch,
                                 "train_loss": loop["loss_sum"] / max(loop["loss_steps"], 1), "val_perplexity": ppl}
                        if subset and cfg.train.eval_audit:
                            entry["val_perplexity_full"] = full_now
                        loop["eval_seconds"] += time.perf_counter() - t_eval
                        check_divergence(cfg, loop["step"], "validation perplexity", ppl, base_ppl)
                        loop["history"].append(entry)
                        loop["loss_sum"], loop["loss_steps"] = 0.0, 0
                        if ppl < loop["best_ppl"]:
                            loop.update(best_ppl=ppl, best_step=loop["step"], bad_evals=0)
                            best_state = method.adapter_state()
                        else:
                            loop["bad_evals"] += 1
                        if cfg.train.patience and loop["bad_evals"] >= cfg.train.patience:
                            loop["stopped_early"] = True
                        final = loop["stopped_early"] or last  # no further evaluation will follow
                        if final and subset:
                            # The adapter this run keeps (chosen on the subset) is scored on every window; that is
                            # the run's result, and the final report's val_perplexity.
                            t_eval = time.perf_counter()
                            if full_now is not None and loop["best_step"] == loop["step"]:
                                full = full_now  # the kept adapter is the one just scored on every window
                            else:
                                full = score_state(method, best_state, prep.val, cfg.train.eval_batch_size, device, amp)
                            loop["eval_seconds"] += time.perf_counter() - t_eval
                            check_divergence(cfg, loop["step"], "validation perplexity", full, base_ppl)
                            loop["best_ppl_full"] = full
                            entry.update(val_perplexity_subset=ppl, val_perplexity=full)
                        send(entry, final)
                        if final:
                            done = True
                            break
    finally:
        if progress:
            progress.close()
    if best_state is not None:
        method.load_adapter_state({k: v.to(device) for k, v in best_state.items()})
    kept = loop.get("best_ppl_full", loop["best_ppl"])  # scored on every validation window
    result.update(
        val_perplexity=kept, improvement_percent=100.0 * (1 - kept / base_ppl), eval_windows=len(val_eval["input_ids"]),
        best_step=loop["best_step"], best_epoch=math.ceil(loop["best_step"] / steps_per_epoch),
        epochs_run=loop["step"] / steps_per_epoch, steps=loop["step"], stopped_early=loop["stopped_early"],
        train_seconds=loop["train_seconds"], eval_seconds=loop["eval_seconds"], tokens_per_second=loop["train_tokens"] / max(loop["train_seconds"], 1e-9),
        history=loop["history"], peak_memory_mb=_peak_memory_mb(device),
    )
    return result, method


def write_outputs(output_dir: Path, result: dict, method: AdapterMethod) -> None:
    """result.json + adapter/, written beside the target and moved in whole."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}-"))
    try:
        method.save(tmp / "adapter", extra={"val_perplexity": result["val_perplexity"]})
        (tmp / "result.json").write_text(json.dumps(result, indent=2))
        output_dir.mkdir(exist_ok=True)
        for name in ("adapter", "result.json"):
            target = output_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            (tmp / name).replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("train"), description=__doc__.splitlines()[0], epilog=keys_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML config (defaults are used for missing keys)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=3e-4 (repeatable)")
    parser.add_argument("--output-dir", default="runs/train", help="where result.json and adapter/ go")
    args = parser.parse_args(argv)
    output_dir = Path(os.path.abspath(os.path.expanduser(args.output_dir)))

    def body() -> int:
        cfg = load_config(args.config, args.overrides, extra_sections=("search", "tune", "mlflow"))
        check_writable(output_dir, "--output-dir")  # before any work, not after the training
        check_writable(cache_root(), "EMBINJECT_CACHE")
        try:
            result, method = train(cfg)
        except Diverged as exc:
            print(f"error: {exc}; nothing written", file=sys.stderr)
            return 1
        try:
            write_outputs(output_dir, result, method)
        finally:
            method.release()  # a LoRA adapter must not stay in this process's shared LM
        summary = {k: result[k] for k in ("method", "dtype", "baseline_perplexity", "val_perplexity", "trainable_params",
                                          "steps", "train_seconds")}
        print(json.dumps(summary))
        print(f"wrote {output_dir / 'result.json'} and {output_dir / 'adapter'}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
