"""docs/config-keys.md, rendered from the typed config's dataclasses: every key, its type, default and help line.

The page is generated so that it cannot drift from embinject/config.py: `python -m embinject.config_reference`
(or `make docs`) rewrites it, `--check` says whether it is stale, and tests/test_config_reference.py fails when it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

from .config import Config
from .search_settings import MlflowSettings, TuneSettings
from .fsutil import atomic_write_text

PAGE = Path(__file__).resolve().parent.parent / "docs" / "config-keys.md"

SECTIONS = (
    (
        "The training config",
        Config,
        "",
        "A training config file (`embinject train CONFIG`) and the top level of a search file hold these keys; "
        "`--set KEY=VALUE` sets one on the command line. What they mean in detail: [training.md](training.md).",
    ),
    (
        "The `tune:` section of a search file",
        TuneSettings,
        "tune.",
        "How the search runs: [search-file.md](search-file.md).",
    ),
    (
        "The `mlflow:` section of a search file",
        MlflowSettings,
        "mlflow.",
        "Where the search is recorded and what it registers: [results.md](results.md).",
    ),
)

HEADER = (
    "# Config keys\n\n"
    "Generated from the typed config (`embinject/config.py`, `embinject/search_settings.py`) "
    "by `python -m embinject.config_reference` "
    "(`make docs`); do not edit it by hand. A test fails when this page and the config differ.\n\n"
    "A search file's `search:` section maps these dotted keys to values or distributions: "
    "[search-file.md](search-file.md).\n"
)


def keys(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, declared type) of every value of `cls`, nested sections flattened in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, f, hints[f.name]))
    return out


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if value == "":
        return '""'
    return str(value)


def _bounds(meta: dict) -> str:
    if meta.get("positive"):
        return " > 0"
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    return f" >= {low}" if low is not None else ""


def type_name(tp: Any, meta: dict) -> str:
    """How a key's values are written, for a reader: its choices, its type and bounds, and whether null is allowed."""
    if meta.get("pack"):
        return "auto, off or integer >= 1"
    if meta.get("warm_start"):
        return "list of earlier searches"
    if "choices" in meta:
        return "one of " + ", ".join(meta["choices"])
    args = typing.get_args(tp)
    nullable = typing.get_origin(tp) is typing.Union and type(None) in args
    if nullable:
        tp = next(a for a in args if a is not type(None))
    names = {str: "text", int: "integer", float: "number", bool: "true or false", list: "list"}
    if typing.get_origin(tp) is list:
        name = "list of mappings" if typing.get_args(tp) == (dict,) else "list of text"
    else:
        name = names[tp]
    return name + _bounds(meta) + (" or null" if nullable else "")


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _cell(text: str) -> str:
    """Table-cell text: a `|` would end the cell, and `<name>` would read as an HTML tag and vanish."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def render() -> str:
    """The whole page, from the dataclasses."""
    parts = [HEADER]
    for title, cls, prefix, intro in SECTIONS:
        rows = [
            f"| `{key}` | {_cell(type_name(tp, dict(f.metadata)))} | `{_cell(_yaml(_default(f)))}` | "
            f"{_cell(f.metadata.get('help', ''))} |"
            for key, f, tp in keys(cls, prefix)
        ]
        parts.append(
            f"\n## {title}\n\n{intro}\n\n| key | type | default | what it sets |\n|---|---|---|---|\n"
            + "\n".join(rows)
            + "\n"
        )
    return "".join(parts)


def missing_help() -> list[str]:
    """Keys whose field has no help line (each must have one: it is the key's row in the page)."""
    return [key for _, cls, prefix, _ in SECTIONS for key, f, _ in keys(cls, prefix) if not f.metadata.get("help")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embinject.config_reference", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether the page is stale (exit 1 if so)")
    parser.add_argument("--output", type=Path, default=PAGE, help=f"the page to write (default: {PAGE})")
    args = parser.parse_args(argv)
    missing = missing_help()
    if missing:
        print(
            f"error: embinject/config.py or search_settings.py: no help line for {', '.join(missing)}; "
            "add metadata help to the field",
            file=sys.stderr,
        )
        return 2
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(
                f"error: {args.output} is stale; run python -m embinject.config_reference (make docs)", file=sys.stderr
            )
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
