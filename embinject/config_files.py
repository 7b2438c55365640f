"""Reading a config: YAML files (a key given twice is refused), `--set key=value` overrides, and local
paths resolved once against the directory the command runs in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .config import Config, config_from_dict
from .fields import is_text
from .search_settings import value_type
from .errors import ConfigError
from .fsutil import resolve_local
from .specs import names_an_encoder


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value). A key whose type is text keeps the value as typed (YAML would end it at
    ` #` or turn `yes` into true); other values are YAML (numbers, booleans, lists, `search:` distributions)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected dotted.key=value")
    key, value = text.split("=", 1)
    key = key.strip()
    return key, override_value(key, value)


def override_value(key: str, text: str) -> Any:
    tp = value_type(key)
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
    if tp is not None and is_text(tp) and not quoted:
        text = text.strip()  # as YAML would
        return None if text in ("null", "~", "") and tp is not str else text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if "#" in text and _unmark(_safe_load(text.replace("#", _MARK))) != value:
        raise ConfigError(
            f"--set {key}={text}: ' #' starts a YAML comment here and would drop the rest of the value; "
            "quote the value if the # belongs to it"
        )
    return value


_MARK = "\ue000"  # stands in for '#' to see whether YAML read one as the start of a comment


def _safe_load(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _unmark(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(_MARK, "#")
    if isinstance(value, list):
        return [_unmark(v) for v in value]
    if isinstance(value, dict):
        return {_unmark(k): _unmark(v) for k, v in value.items()}
    return value


def set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: '{part}' is not a section")
        node = nxt
    node[parts[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    return raw


def load_config(path: str | Path | None, overrides: list[str] = (), extra_sections: tuple[str, ...] = ()) -> Config:
    """Read a YAML file (or defaults when path is None), apply --set overrides, validate.

    `extra_sections` are top-level keys that belong to another layer (e.g. `search`, `tune`)
    and are ignored here.
    """
    raw = read_yaml(path) if path else {}
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    raw = {k: v for k, v in raw.items() if k not in extra_sections}
    return config_from_dict(resolve_paths(raw))


PATH_KEYS = ("model", "data.path", "adapter.embedding_model")  # keys whose values may be local paths


def resolve_location(value: Any) -> Any:
    """`resolve_local`, except for an encoder's name (`fourier`, `lm-hidden:3`: embinject.specs), which a directory of
    that name where the command runs does not turn into a path."""
    return value if names_an_encoder(value) else resolve_local(value)


def resolve_paths(raw: dict) -> dict:
    """Local paths in a raw config made absolute against the directory the command runs in, once, so
    that trials (which run in their own directories, perhaps on other nodes) read the same files."""
    for key in PATH_KEYS:
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(last), str):
            node[last] = resolve_location(node[last])
    return raw
