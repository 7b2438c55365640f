"""A data source's documents: local JSON Lines, JSON, text or Parquet files, the built-in docs, or (by name) a hub
dataset, read as texts or prompt/target pairs. Every unreadable file, row or field is one ConfigError naming it."""

from __future__ import annotations

import json
from pathlib import Path

from .config import DataConfig
from .errors import ConfigError, first_line

TEXT_SUFFIXES = (".jsonl", ".json", ".txt", ".parquet")
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev")}


# ---------------------------------------------------------------- sources -> rows -> items
# An item is a document (str) for text windows, or a (prompt, target) pair for examples.


def _builtin_python_docs() -> list[dict]:
    from pydoc_data.topics import topics  # lazy: half a megabyte of text, only for builtin:python-docs

    return [{"text": topics[k]} for k in sorted(topics)]


def _decode_error(path: Path, exc: UnicodeDecodeError) -> ConfigError:
    with path.open("rb") as fh:
        line = fh.read(exc.start).count(b"\n") + 1
    return ConfigError(
        f"data.path: {path} line {line} is not UTF-8 text (byte {exc.start}); "
        "convert the file to UTF-8 or remove it from the data folder"
    )


def iter_rows(path: Path):
    """Rows of one local file, one at a time (JSON Lines by line, Parquet by batch, a text file whole); anything
    unreadable is one ConfigError naming the file (and line or row)."""
    if path.suffix in (".jsonl", ".json"):
        try:
            with path.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        raise ConfigError(f"data.path: {path} line {n} is not valid JSON") from None
                    if not isinstance(row, dict):
                        raise ConfigError(f"data.path: {path} line {n} is not a JSON object")
                    yield row
        except UnicodeDecodeError as exc:
            raise _decode_error(path, exc) from None
        return
    if path.suffix == ".parquet":
        import pyarrow as pa  # lazy: only Parquet files need it
        import pyarrow.parquet as pq

        try:
            for batch in pq.ParquetFile(path).iter_batches():
                yield from batch.to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise ConfigError(f"data.path: {path} is not a readable parquet file ({first_line(exc)})") from None
        return
    try:  # .txt: one document per file
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _decode_error(path, exc) from None
    if "\x00" in text:
        raise ConfigError(f"data.path: {path} holds binary data (NUL bytes), not text")
    yield {"text": text}


def _fill(template: str, row: dict, key: str, source: str) -> str:
    try:
        return template.format_map(row)
    except KeyError as exc:
        raise ConfigError(f"{key}: field {exc} not found in {source} (fields: {', '.join(row)})") from None
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{key}: not a valid template ({exc}); use {{field}} placeholders") from None


def rows_to_items(rows: list[dict], cfg: DataConfig, source: str) -> list:
    """Filter rows by `data.where`, then take the text field or fill the prompt/target templates."""
    if cfg.where is not None:
        field, value = cfg.where.split("=", 1)
        missing = next((r for r in rows if field not in r), None)
        if missing is not None:
            raise ConfigError(f"data.where: field '{field}' not found in {source} (fields: {', '.join(missing)})")
        rows = [r for r in rows if str(r[field]) == value]
    if cfg.target_template is not None:
        return [
            (
                _fill(cfg.prompt_template, r, "data.prompt_template", source),
                _fill(cfg.target_template, r, "data.target_template", source),
            )
            for r in rows
        ]
    missing = next((r for r in rows if cfg.text_field not in r), None)
    if missing is not None:
        raise ConfigError(f"data.text_field: '{cfg.text_field}' not found in {source} (fields: {', '.join(missing)})")
    return [str(r[cfg.text_field]) for r in rows]


def _local_files(folder: Path) -> dict[str, list[Path]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    splits: dict[str, list[Path]] = {"train": [], "validation": [], "other": []}
    for p in files:
        stem = p.stem.split(".")[0].split("-")[0].lower()
        split = next((s for s, names in SPLIT_NAMES.items() if stem in names), None)
        if split is None and stem == "test":
            continue  # a test split is never used for training or model selection
        splits[split or "other"].append(p)
    return splits


def split_docs(docs: list, val_fraction: float) -> tuple[list, list]:
    """Deterministic document-level split (every k-th document to validation)."""
    if len(docs) < 2:
        raise ConfigError("data.path: need at least 2 documents (rows) to split into train and validation")
    k = max(2, round(1 / val_fraction)) if val_fraction > 0 else len(docs)
    val = [d for i, d in enumerate(docs) if i % k == k - 1]
    train = [d for i, d in enumerate(docs) if i % k != k - 1]
    return train, val


def local_sources(cfg: DataConfig) -> tuple[list[Path], list[Path] | None]:
    """(train files, validation files) of a local source, or (all files, None) where documents are split by index."""
    path = Path(cfg.path).expanduser()
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES:
            raise ConfigError(f"data.path: {path} is not a {'/'.join(TEXT_SUFFIXES)} file")
        return [path], None
    if path.is_dir():
        splits = _local_files(path)
        if splits["train"] and splits["validation"]:
            return splits["train"], splits["validation"]
        files = splits["train"] + splits["validation"] + splits["other"]
        if not files:
            raise ConfigError(f"data.path: {path} holds no {'/'.join(TEXT_SUFFIXES)} files")
        return files, None
    raise ConfigError(f"data.path: {cfg.path} does not exist")


def items_of(files: list[Path], cfg: DataConfig):
    for f in files:
        for row in iter_rows(f):
            yield from rows_to_items([row], cfg, str(f))


def load_documents(cfg: DataConfig) -> tuple[list, list]:
    """(train items, validation items) for local and builtin sources."""
    if cfg.path == "builtin:python-docs":
        return split_docs(rows_to_items(_builtin_python_docs(), cfg, cfg.path), cfg.val_fraction)
    if cfg.path.startswith("builtin:"):
        raise ConfigError(f"data.path: unknown builtin data set '{cfg.path}' (known: builtin:python-docs)")
    train_files, val_files = local_sources(cfg)
    if val_files is not None:
        return list(items_of(train_files, cfg)), list(items_of(val_files, cfg))
    return split_docs(list(items_of(train_files, cfg)), cfg.val_fraction)


def is_hub(path: str) -> bool:
    return (
        not path.startswith("builtin:")
        and not Path(path).expanduser().exists()
        and path.count("/") == 1
        and not path.startswith((".", "/", "~"))
    )
