"""Adaptation methods, one module each, behind the `AdapterMethod` interface."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import config_from_dict
from ..errors import ConfigError
from .base import ADAPTER_CONFIG, AdapterMethod, scored_nll
from .baseline import Baseline
from .injection import Injection
from .lora import LoRA
from .prefix import Prefix, mix_prefixes
from .prompt import Prompt

REGISTRY: dict[str, type[AdapterMethod]] = {m.name: m for m in (Baseline, Prompt, Injection, Prefix, LoRA)}


def build_method(cfg, lm, encoder_dim=None, tokenizer=None) -> AdapterMethod:
    return REGISTRY[cfg.method](cfg, lm, encoder_dim, tokenizer)


def read_adapter_config(directory: str | Path) -> dict:
    """The adapter's embinject.json, checked: one ConfigError naming the file for anything wrong in it."""
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise ConfigError(f"{directory}: not an embinject adapter directory (no {ADAPTER_CONFIG})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ConfigError(f"{path}: expected a JSON object with a 'config' mapping")
    if meta.get("method") not in REGISTRY or meta["config"].get("method", meta["method"]) != meta["method"]:
        raise ConfigError(f"{path}: 'method' must be one of {', '.join(REGISTRY)} and match config.method")
    dim = meta.get("encoder_dim")
    if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
        raise ConfigError(f"{path}: 'encoder_dim' must be a positive integer, got {dim!r}")
    if REGISTRY[meta["method"]].needs_encoder and dim is None:
        raise ConfigError(f"{path}: an {meta['method']} adapter needs 'encoder_dim'")
    try:
        meta["parsed_config"] = config_from_dict(meta["config"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: config.{exc}") from None
    return meta


def mix_adapters(a: AdapterMethod, b: AdapterMethod, alpha: float) -> AdapterMethod:
    """`alpha * a + (1 - alpha) * b` for two adapters of the same method and shape (controlled generation):
    prefixes mix in key/value space, soft prompts in input space."""
    if a.name != b.name or a.name not in ("prompt", "prefix"):
        raise ConfigError(f"--mix: mixing is defined for two prompt or two prefix adapters, got {a.name} and {b.name}")
    if isinstance(a, Prefix):
        if a.prefix_kv().shape != b.prefix_kv().shape:
            raise ConfigError(f"--mix: the prefixes differ in shape ({list(a.prefix_kv().shape)} vs {list(b.prefix_kv().shape)})")
        return mix_prefixes(a, b, alpha)
    if a.prompt.shape != b.prompt.shape or (a.deep is None) != (b.deep is None):
        raise ConfigError(f"--mix: the prompts differ in shape ({list(a.prompt.shape)} vs {list(b.prompt.shape)})")
    mixed = Prompt(a.cfg, a.lm, a.encoder_dim, a.tokenizer)
    with torch.no_grad():
        mixed.prompt.copy_(alpha * a.prompt + (1 - alpha) * b.prompt)
        if a.deep is not None:
            mixed.deep.copy_(alpha * a.deep + (1 - alpha) * b.deep)
    return mixed


def load_method(directory: str | Path, lm, tokenizer=None) -> AdapterMethod:
    """Rebuild a saved adapter around a frozen LM (safetensors + JSON only)."""
    meta = read_adapter_config(directory)
    method = build_method(meta["parsed_config"], lm, meta.get("encoder_dim"), tokenizer)
    try:
        return method.load(directory)
    except BaseException:
        method.release()  # a LoRA adapter must not stay in the shared LM
        raise


__all__ = ["AdapterMethod", "REGISTRY", "build_method", "load_method", "read_adapter_config", "scored_nll", "mix_prefixes", "mix_adapters",
           "ADAPTER_CONFIG"]
