"""A trial's state on disk with no pickles: adapter and optimizer tensors as safetensors, the loop's
counters (`TrainState`) as JSON; and a finished run's result.json + adapter/, moved into place whole."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..fsutil import atomic_save_tensors, atomic_write_text
from ..methods import AdapterMethod


@dataclasses.dataclass
class TrainState:
    """The loop's counters: saved with each checkpoint (trainer_state.json's `loop`, as `to_dict`) and read back
    on resume."""

    step: int = 0
    best_ppl: float = math.inf  # the best evaluation's perplexity (on the subset, where evaluations score one)
    best_step: int = 0
    bad_evals: int = 0  # evaluations since the best one (train.patience)
    history: list = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    train_tokens: int = 0
    loss_sum: float = 0.0  # since the last evaluation
    loss_steps: int = 0
    stopped_early: bool = False
    best_ppl_full: float | None = None  # the kept adapter on every window, once the last evaluation scored it

    @property
    def kept_ppl(self) -> float:
        """The kept adapter's perplexity: on every validation window where that is known."""
        return self.best_ppl if self.best_ppl_full is None else self.best_ppl_full

    def to_dict(self) -> dict:
        state = dataclasses.asdict(self)
        if state["best_ppl_full"] is None:
            del state["best_ppl_full"]  # as checkpoints have always been written
        return state

    @classmethod
    def from_dict(cls, state: dict) -> "TrainState":
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls) if f.name in state})


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
    atomic_write_text(
        directory / "trainer_state.json",
        json.dumps({"loop": state, "param_groups": sd["param_groups"], "optimizer_scalars": scalars}, indent=1),
    )


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
