"""A trial's state on disk with no pickles: adapter and optimizer tensors as safetensors, the loop's
counters as JSON; and a finished run's result.json + adapter/, moved into place whole."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..fsutil import atomic_save_tensors, atomic_write_text
from ..methods import AdapterMethod


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
