"""Typed settings' building blocks: fields that carry their bounds and help, and reading a mapping into such
dataclasses with every value checked. Each problem is a `ConfigError` naming the dotted key and what was expected.

`embinject.config` (the training config) and `embinject.search_settings` (a search file's `tune:`/`mlflow:`) are
built from these.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field
from typing import Any

from .errors import ConfigError
from .mlflow_names import MLFLOW_NAME_RULES


def choice(*options: str, default: str, help: str) -> Any:
    return field(default=default, metadata={"choices": options, "help": help})


def number(
    default: Any, *, min: float | None = None, max: float | None = None, positive: bool = False, help: str
) -> Any:
    return field(default=default, metadata={"min": min, "max": max, "positive": positive, "help": help})


def setting(default: Any = None, *, help: str, factory: Any = None) -> Any:
    """A field with no bounds beyond its type; `help` is its line in docs/config-keys.md
    (embinject.config_reference)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def choices_read_when_asked(cls: type, name: str, choices: Any) -> None:
    """Give a field allowed values that are read when asked (`MethodNames`) rather than fixed when the class was
    made."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    f.metadata = types.MappingProxyType({**f.metadata, "choices": choices})


def _check_warm_start(key: str, value: Any) -> list:
    """`tune.warm_start`: one source or a list of them, each a non-empty string or a {run|experiment, tracking_uri}
    mapping."""
    items = value if isinstance(value, list) else [] if value is None else [value]
    for i, item in enumerate(items):
        if isinstance(item, str) and item.strip():
            continue
        if (
            isinstance(item, dict)
            and len({"run", "experiment"} & set(item)) == 1
            and set(item) <= {"run", "experiment", "tracking_uri"}
            and all(isinstance(v, str) and v for v in item.values())
        ):
            continue
        raise ConfigError(
            f"{key}[{i}]: expected a search folder, runs:/PARENT_RUN_ID, experiment:NAME or "
            f"{{run: ..., tracking_uri: ...}}, got {item!r}"
        )
    return items


def check_field_value(key: str, value: Any, tp: Any, meta: dict) -> Any:
    if meta.get("pack"):
        if value is False:  # YAML reads a bare `off` as false
            value = "off"
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if value in ("auto", "off") or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ConfigError(f"{key}: expected auto, off or a number of trials per pack (1 or more), got {value!r}")
    if meta.get("warm_start"):
        return _check_warm_start(key, value)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
    if origin is list and args == (dict,):
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{key}: expected a list of mappings, got {value!r}")
        return list(value)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return list(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        value = int(value)
    elif tp is float:
        if isinstance(value, str):
            try:  # YAML reads "1e-3" (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    if meta.get("mlflow_name"):
        problem = MLFLOW_NAME_RULES[meta["mlflow_name"]](value)
        if problem:
            raise ConfigError(f"{key}: {problem}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key}: expected one of {', '.join(meta['choices'])}; got {value!r}")
    if meta.get("positive") and value <= 0:
        raise ConfigError(f"{key}: expected a value > 0, got {value!r}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{key}: expected a value >= {meta['min']}, got {value!r}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{key}: expected a value <= {meta['max']}, got {value!r}")
    return value


def unknown_key(key: str, known: list[str], name: str | None = None) -> ConfigError:
    name = name or key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
    return ConfigError(f"{key}: unknown key{hint}")


def build_settings(cls: type, raw: dict, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise unknown_key(prefix + str(key), list(fields))
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = build_settings(hints[key], value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = check_field_value(prefix + key, value, hints[key], dict(fields[key].metadata))
    return cls(**kwargs)


def settings_from_dict(cls: type, raw: dict | None, section: str) -> Any:
    """Build a settings section (e.g. `tune`, `mlflow`) with key-naming errors."""
    return build_settings(cls, raw or {}, f"{section}.")


def walk_fields(key: str, cls: type) -> tuple[Any, dict, bool]:
    """(type, metadata, is a section) of a dotted key of the settings class `cls`, or ConfigError naming it."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            raise unknown_key(key, list(fields), name=part)
        tp = typing.get_type_hints(cls)[part]
        if i == len(parts) - 1:
            return tp, dict(fields[part].metadata), dataclasses.is_dataclass(tp)
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{key}: '{part}' is a value, not a section")
        cls = tp
    raise ConfigError(f"{key}: empty key")


def is_text(tp: Any) -> bool:
    """Whether values of this declared type are free text (`str` or `Optional[str]`)."""
    return tp is str or (
        typing.get_origin(tp) is typing.Union
        and str in typing.get_args(tp)
        and set(typing.get_args(tp)) <= {str, type(None)}
    )


def field_keys(cls: type, prefix: str = "") -> list[tuple[str, Any, tuple]]:
    """Every key of the settings class `cls` with its default and allowed values, read from the dataclasses."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += field_keys(hints[f.name], f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out.append((f"{prefix}{f.name}", default, tuple(f.metadata.get("choices", ()))))
    return out
