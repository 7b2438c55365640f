"""Adaptation methods, one module each, behind the `AdapterMethod` interface."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import ConfigError, config_from_dict
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
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise ConfigError(f"{directory}: not an embinject adapter directory (no {ADAPTER_CONFIG})")
    return json.loads(path.read_text())


def load_method(directory: str | Path, lm, tokenizer=None) -> AdapterMethod:
    """Rebuild a saved adapter around a frozen LM (safetensors + JSON only)."""
    meta = read_adapter_config(directory)
    cfg = config_from_dict(meta["config"])
    return build_method(cfg, lm, meta.get("encoder_dim"), tokenizer).load(directory)


__all__ = ["AdapterMethod", "REGISTRY", "build_method", "load_method", "read_adapter_config", "scored_nll", "mix_prefixes"]
