"""Adaptation methods, one module each, behind the `AdapterMethod` interface.

Method X is `embinject/methods/X.py`, an `AdapterMethod` subclass named X, declared by its spec in `embinject.specs`:
this package imports the module of every spec registered there, and a method registered later (a plugin, a test's
toy) is added with `add_method`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from ..config import config_from_dict
from ..errors import ConfigError
from ..specs import METHOD_SPECS, MethodSpec, method_spec, mixing_methods, register_method
from .base import ADAPTER_CONFIG, AdapterMethod, scored_nll
from .prefix import mix_prefixes


def _implementation(module) -> type[AdapterMethod]:
    name = module.__name__.rsplit(".", 1)[1]
    found = [
        v for v in vars(module).values() if isinstance(v, type) and issubclass(v, AdapterMethod) and v.name == name
    ]
    if len(found) != 1:
        raise TypeError(f"{module.__name__}: expected one AdapterMethod subclass named {name!r}, found {len(found)}")
    return found[0]


# the method modules are named by the specs, not listed here: adding a method is its module and its spec
REGISTRY: dict[str, type[AdapterMethod]] = {
    name: _implementation(importlib.import_module(f"{__name__}.{name}")) for name in list(METHOD_SPECS)
}


def add_method(spec: MethodSpec, implementation: type[AdapterMethod]) -> None:
    """Register a method from outside this package: its spec (validation, packing, export read it) and its class."""
    register_method(spec)
    REGISTRY[spec.name] = implementation


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
    if method_spec(meta["method"]).needs_encoder and dim is None:
        raise ConfigError(f"{path}: an {meta['method']} adapter needs 'encoder_dim'")
    try:
        meta["parsed_config"] = config_from_dict(meta["config"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: config.{exc}") from None
    return meta


def mix_adapters(a: AdapterMethod, b: AdapterMethod, alpha: float) -> AdapterMethod:
    """`alpha * a + (1 - alpha) * b` for two adapters of the same method and shape (controlled generation), for the
    methods whose spec says they mix: prefixes mix in key/value space, soft prompts in input space."""
    if a.name != b.name or not method_spec(a.name).mixes:
        kinds = " or ".join(f"two {s.name}" for s in mixing_methods())
        raise ConfigError(f"--mix: mixing is defined for {kinds} adapters, got {a.name} and {b.name}")
    return a.mixed_with(b, alpha)


def load_method(directory: str | Path, lm, tokenizer=None) -> AdapterMethod:
    """Rebuild a saved adapter around a frozen LM (safetensors + JSON only)."""
    meta = read_adapter_config(directory)
    method = build_method(meta["parsed_config"], lm, meta.get("encoder_dim"), tokenizer)
    try:
        return method.load(directory)
    except BaseException:
        method.release()  # a LoRA adapter must not stay in the shared LM
        raise


__all__ = [
    "AdapterMethod",
    "REGISTRY",
    "add_method",
    "build_method",
    "load_method",
    "read_adapter_config",
    "scored_nll",
    "mix_prefixes",
    "mix_adapters",
    "ADAPTER_CONFIG",
]
