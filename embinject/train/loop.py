"""The training loop for one adapter on a frozen LM: `train(cfg, report=...)`, callable from Python; it
knows nothing of Ray. After every evaluation it calls `report(metrics, write_checkpoint)`, where
`write_checkpoint(dir)` saves adapter + optimizer + loop state (safetensors + JSON) so a caller can
resume from it. A non-finite loss or a runaway validation perplexity stops it (`Diverged`), for every method.
"""

from __future__ import annotations

import math
import random
import resource
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from ..config import Config
from ..fsutil import atomic_save_tensors
from ..methods import AdapterMethod, build_method
from . import precision
from .checkpoint import TrainState, load_checkpoint, save_checkpoint
from .evaluation import batches, eval_subset, score_state, subset_and_full, windows_perplexity
from .optimizer import adamw
from .shared import Prepared, autocast_dtype, baseline_perplexity, prepare
from .steps import SoloSteps

Report = Callable[[dict, Callable[[Path], None]], None]


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
        raise Diverged(
            step,
            what,
            value,
            f", more than {factor:g}x the frozen model's {base_ppl:.4g} (train.divergence_factor)",
            cfg.train.lr,
        )


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train(
    cfg: Config,
    report: Report | None = None,
    resume_from: Path | None = None,
    prepared: Prepared | None = None,
    steps: SoloSteps | None = None,
) -> tuple[dict, AdapterMethod]:
    """Train one adapter; returns (result dict, trained method holding the best weights). `steps`: how each
    step is taken (alone by default, or as a member of a pack). A run that ends by an exception releases its method:
    Ray stops a trial by raising SystemExit inside its report, and a diverged run raises; a LoRA adapter left in the
    shared LM would change every later trial of a warm worker."""
    built: list[AdapterMethod] = []
    try:
        return _train(cfg, report, resume_from, prepared, steps or SoloSteps(), built)
    except BaseException:
        for method in built:
            method.release()
        raise


def _train(
    cfg: Config,
    report: Report | None,
    resume_from: Path | None,
    prepared: Prepared | None,
    steps: SoloSteps,
    built: list[AdapterMethod],
) -> tuple[dict, AdapterMethod]:
    entered = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    with steps.building():
        prep = prepared or prepare(cfg)
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        device = prep.device
        base_ppl = baseline_perplexity(prep, cfg)
        method = build_method(cfg, prep.lm.model, prep.encoder_dim, prep.lm.tokenizer)
        built.append(method)
    params = method.trainable_parameters()
    result = _describe(cfg, prep, method, params, base_ppl, device)
    if not params:  # baseline: evaluation only
        result.update(
            val_perplexity=base_ppl,
            best_epoch=0,
            epochs_run=0,
            steps=0,
            train_seconds=0.0,
            tokens_per_second=0.0,
            history=[],
            stopped_early=False,
            peak_memory_mb=_peak_memory_mb(device),
        )
        return result, method
    run = _Run(cfg, prep, method, params, steps, report, base_ppl, result)
    run.resume(resume_from)
    run.loop(entered, resumed=resume_from is not None)
    return run.finish(result), method


def _describe(cfg: Config, prep: Prepared, method: AdapterMethod, params: list, base_ppl: float, device: str) -> dict:
    """What a run's result says before it trains: its setup and sizes."""
    trainable = sum(p.numel() for p in params)
    frozen_total = sum(p.numel() for p in prep.lm.model.parameters() if not p.requires_grad)
    total = frozen_total + trainable
    return {
        "method": cfg.method,
        "model": cfg.model,
        "embedding_model": cfg.adapter.embedding_model if method.needs_encoder else None,
        "embed_source": cfg.adapter.embed_source,
        "scored_tokens_per_window": int((prep.val["labels"][0, 1:] != -100).sum()),
        "train_windows": len(prep.train["input_ids"]),
        "val_windows": len(prep.val["input_ids"]),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
        "baseline_perplexity": base_ppl,
        "prepare_seconds": prep.prepare_seconds,
        "config": cfg.to_dict(),
        "dtype": precision.resolve_dtype(cfg.train.dtype, device),
    }


class _Run:
    """One training run of a built method: its optimizer, its state (`TrainState`), the best adapter so far and how
    it reports; `loop` trains it, `finish` loads the best adapter and completes the result."""

    def __init__(
        self,
        cfg: Config,
        prep: Prepared,
        method: AdapterMethod,
        params: list,
        steps: SoloSteps,
        report: Report | None,
        base_ppl: float,
        result: dict,
    ):
        self.cfg, self.prep, self.method, self.steps, self.report, self.base_ppl = (
            cfg,
            prep,
            method,
            steps,
            report,
            base_ppl,
        )
        self.device, self.amp = prep.device, autocast_dtype(cfg, prep.device)
        self.trainable, self.dtype = result["trainable_params"], result["dtype"]
        self.opt = adamw(params, cfg.train.lr, cfg.train.weight_decay)
        self.n_train = len(prep.train["input_ids"])
        self.steps_per_epoch = math.ceil(self.n_train / cfg.train.batch_size)
        self.max_steps = min(cfg.train.max_steps or 10**12, self.steps_per_epoch * cfg.train.max_epochs)
        self.eval_every = cfg.train.eval_every or self.steps_per_epoch
        self.state = TrainState()
        self.best_state: dict | None = None
        self.val_eval = self.subset_index = None
        self.startup_seconds = 0.0
        self.this_process: dict = {}

    def resume(self, resume_from: Path | None) -> None:
        if resume_from is not None:
            with self.steps.building():
                self.state = TrainState.from_dict(load_checkpoint(resume_from, self.method, self.opt, self.device))
                best_file = Path(resume_from) / "best_adapter" / "adapter.safetensors"
                self.best_state = load_file(str(best_file)) if best_file.is_file() else None
        self.val_eval, self.subset_index = eval_subset(self.prep.val, self.cfg.train.eval_windows)

    def write_checkpoint(self, directory: Path) -> None:
        """Resumable state, plus the best adapter so far in a form `load_method` reads
        (best_adapter/: adapter.safetensors + embinject.json)."""
        save_checkpoint(directory, self.method, self.opt, self.state.to_dict())
        if self.best_state is not None:
            best_dir = Path(directory) / "best_adapter"
            best_dir.mkdir(exist_ok=True)
            atomic_save_tensors(self.best_state, best_dir / "adapter.safetensors")
            self.method.write_meta(best_dir, {"val_perplexity": self.state.kept_ppl, "step": self.state.best_step})

    def spent(self) -> dict:
        """Where this process's seconds went so far, for a search's time table
        (embinject.tune.driver.callback.time_split)."""
        turn, at_steps, at_evals = self.steps.waited()  # a pack's waits, inside the steps' and the evaluations' seconds
        return {
            "spent_waiting": turn,
            "spent_setup": self.startup_seconds - turn,
            "spent_rendezvous": at_steps + at_evals,
            "spent_steps": self.state.train_seconds - self.this_process["train"] - at_steps,
            "spent_eval": self.state.eval_seconds - self.this_process["eval"] - at_evals,
            "spent_report": self.this_process["report"],
            "sent_at": time.time(),
        }

    def send(self, entry: dict, final: bool) -> None:
        if self.report is not None:
            t_report = time.perf_counter()
            state, steps = self.state, self.steps
            tps = state.train_tokens / max(state.train_seconds, 1e-9)
            self.report(
                {
                    **entry,
                    "pack_size": steps.pack_size(),
                    "eval_pack_size": steps.eval_pack_size(),
                    "best_val_perplexity": state.kept_ppl,
                    "tokens_per_second": tps,
                    "baseline_perplexity": self.base_ppl,
                    "final": final,
                    "train_seconds": state.train_seconds,
                    "trainable_params": self.trainable,
                    "dtype": self.dtype,
                    "eval_seconds": state.eval_seconds,
                    "startup_seconds": self.startup_seconds,
                    **self.spent(),
                },
                self.write_checkpoint,
            )
            # the checkpoint written, relayed and acknowledged
            self.this_process["report"] += time.perf_counter() - t_report

    def loop(self, entered: float, resumed: bool) -> None:
        """Steps and evaluations until max_steps, train.patience, or an exception (divergence, a stop)."""
        cfg, state = self.cfg, self.state
        progress = None
        if cfg.train.progress and sys.stderr.isatty():
            from tqdm import tqdm  # lazy: only a terminal shows a progress bar

            progress = tqdm(total=self.max_steps, initial=state.step, desc=cfg.method, unit="step", leave=False)
        self.method.train()
        self.startup_seconds = time.perf_counter() - entered  # everything before the first step of this process
        # counted from this process's start (a resumed run's earlier processes are not counted again): see `spent`
        self.this_process = {"train": state.train_seconds, "eval": state.eval_seconds, "report": 0.0}
        done = state.stopped_early or state.step >= self.max_steps
        if done and resumed and state.history:
            # Resumed from a finished run's last checkpoint: the process that wrote it may have died before
            # its caller recorded the final report, so deliver that report (again).
            with self.steps.away():
                self.send(state.history[-1], final=True)
        try:
            with self.steps.training(self.prep.lm.model, cfg.train.gradient_checkpointing):
                while not done:
                    done = self._epoch(progress)
        finally:
            if progress:
                progress.close()

    def _epoch(self, progress) -> bool:
        """The rest of the current epoch, or up to the run's end; whether the run has ended."""
        epoch, in_epoch = divmod(self.state.step, self.steps_per_epoch)
        order = torch.randperm(
            self.n_train, generator=torch.Generator().manual_seed(self.cfg.train.seed * 1000 + epoch)
        )
        for batch in batches(self.prep.train, self.cfg.train.batch_size, order, start=in_epoch):
            loss_value = self._step(batch)
            if progress:
                progress.update(1)
                progress.set_postfix(loss=f"{loss_value:.3f}")
            last = self.state.step >= self.max_steps
            if self.state.step % self.eval_every == 0 or last:
                with self.steps.away(evaluating=True):  # evaluating and reporting: a pack steps on without this trial
                    final = self._evaluate(last)
                if final:
                    return True
        return False

    def _step(self, batch: dict) -> float:
        state = self.state
        t0 = time.perf_counter()
        batch = {k: v.to(self.device) for k, v in batch.items()}
        loss_value = self.steps.step(self.method, self.opt, batch, self.amp, self.device)  # the gradients are set
        check_divergence(self.cfg, state.step + 1, "training loss", loss_value)
        self.opt.step()
        state.train_seconds += time.perf_counter() - t0
        state.train_tokens += batch["input_ids"].numel()
        state.loss_sum += loss_value
        state.loss_steps += 1
        state.step += 1
        return loss_value

    def _evaluate(self, last: bool) -> bool:
        """One evaluation, the best adapter kept, its report sent; whether it is the run's last."""
        cfg, state, subset = self.cfg, self.state, self.subset_index is not None
        t_eval = time.perf_counter()
        full_now = None  # this adapter's score on every window, where that pass is needed anyway
        if subset and (last or cfg.train.eval_audit):
            # the last evaluation's adapter is usually the one kept, whose full-set score is the result
            ppl, full_now = subset_and_full(
                self.method,
                self.prep.val,
                self.subset_index,
                cfg.train.eval_batch_size,
                self.device,
                self.amp,
                self.steps.evaluate,
            )
        else:  # a pack's members evaluating at this step score their windows in packed passes
            ppl = windows_perplexity(
                *self.steps.evaluate(self.method, self.val_eval, cfg.train.eval_batch_size, self.device, self.amp)
            )
        entry = {
            "step": state.step,
            "epoch": state.step / self.steps_per_epoch,
            "train_loss": state.loss_sum / max(state.loss_steps, 1),
            "val_perplexity": ppl,
        }
        if subset and cfg.train.eval_audit:
            entry["val_perplexity_full"] = full_now
        state.eval_seconds += time.perf_counter() - t_eval
        check_divergence(cfg, state.step, "validation perplexity", ppl, self.base_ppl)
        state.history.append(entry)
        state.loss_sum, state.loss_steps = 0.0, 0
        if ppl < state.best_ppl:
            state.best_ppl, state.best_step, state.bad_evals = ppl, state.step, 0
            self.best_state = self.method.adapter_state()
        else:
            state.bad_evals += 1
        if cfg.train.patience and state.bad_evals >= cfg.train.patience:
            state.stopped_early = True
        final = state.stopped_early or last  # no further evaluation will follow
        if final and subset:
            # The adapter this run keeps (chosen on the subset) is scored on every window; that is the run's result,
            # and the final report's val_perplexity.
            full = self._score_kept(full_now)
            entry.update(val_perplexity_subset=ppl, val_perplexity=full)
        self.send(entry, final)
        return final

    def _score_kept(self, full_now: float | None) -> float:
        """The kept adapter's perplexity on every validation window (`full_now`: the adapter just evaluated's)."""
        state = self.state
        t_eval = time.perf_counter()
        if full_now is not None and state.best_step == state.step:
            full = full_now  # the kept adapter is the one just scored on every window
        else:
            full = score_state(
                self.method,
                self.best_state,
                self.prep.val,
                self.cfg.train.eval_batch_size,
                self.device,
                self.amp,
                self.steps.evaluate,
            )
        state.eval_seconds += time.perf_counter() - t_eval
        check_divergence(self.cfg, state.step, "validation perplexity", full, self.base_ppl)
        state.best_ppl_full = full
        return full

    def finish(self, result: dict) -> dict:
        """The result of a run that trained: the best adapter loaded into the method."""
        state, device = self.state, self.device
        if self.best_state is not None:
            self.method.load_adapter_state({k: v.to(device) for k, v in self.best_state.items()})
        kept = state.kept_ppl  # scored on every validation window
        result.update(
            val_perplexity=kept,
            improvement_percent=100.0 * (1 - kept / self.base_ppl),
            eval_windows=len(self.val_eval["input_ids"]),
            best_step=state.best_step,
            best_epoch=math.ceil(state.best_step / self.steps_per_epoch),
            epochs_run=state.step / self.steps_per_epoch,
            steps=state.step,
            stopped_early=state.stopped_early,
            train_seconds=state.train_seconds,
            eval_seconds=state.eval_seconds,
            tokens_per_second=state.train_tokens / max(state.train_seconds, 1e-9),
            history=state.history,
            peak_memory_mb=_peak_memory_mb(device),
        )
        return result
