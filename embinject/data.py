"""Text sources -> fixed-length token windows, cached on disk.

Each window keeps the `seq_len` tokens that precede it in the same document (`previous`), so
`embed_source: previous` can show the encoder text the LM never sees. Windows are shuffled with a
fixed seed (independent of the training seed) so every method and every trial is scored on the
same validation windows.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ConfigError, DataConfig
from .models import cache_dir, set_offline

DATA_SHUFFLE_SEED = 1234
TEXT_SUFFIXES = (".jsonl", ".json", ".txt", ".parquet")
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev")}


@dataclass
class Windows:
    tokens: torch.Tensor  # [N, seq_len] int64
    previous: torch.Tensor  # [N, seq_len] int64 (zeros where there is no preceding text)
    has_previous: torch.Tensor  # [N] bool

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, index: torch.Tensor) -> "Windows":
        return Windows(self.tokens[index], self.previous[index], self.has_previous[index])


# ---------------------------------------------------------------- sources -> documents

def _builtin_python_docs() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _read_file(path: Path, text_field: str) -> list[str]:
    if path.suffix in (".jsonl", ".json"):
        docs = []
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise ConfigError(f"data.path: {path} line {n} is not valid JSON") from None
                if text_field not in row:
                    raise ConfigError(
                        f"data.text_field: '{text_field}' not found in {path} line {n} (fields: {', '.join(row)})"
                    )
                docs.append(str(row[text_field]))
        return docs
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise ConfigError(
                f"data.text_field: '{text_field}' not found in {path} (columns: {', '.join(table.column_names)})"
            )
        return [str(t) for t in table.column(text_field).to_pylist()]
    return [path.read_text(encoding="utf-8")]  # .txt: one document per file


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


def _split_docs(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic document-level split (every k-th document to validation)."""
    if len(docs) < 2:
        raise ConfigError("data.path: need at least 2 documents to split into train and validation")
    k = max(2, round(1 / val_fraction)) if val_fraction > 0 else len(docs)
    val = [d for i, d in enumerate(docs) if i % k == k - 1]
    train = [d for i, d in enumerate(docs) if i % k != k - 1]
    return train, val


def load_documents(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(train documents, validation documents) for local and builtin sources."""
    if cfg.path == "builtin:python-docs":
        return _split_docs(_builtin_python_docs(), cfg.val_fraction)
    if cfg.path.startswith("builtin:"):
        raise ConfigError(f"data.path: unknown builtin data set '{cfg.path}' (known: builtin:python-docs)")
    path = Path(cfg.path).expanduser()
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES:
            raise ConfigError(f"data.path: {path} is not a {'/'.join(TEXT_SUFFIXES)} file")
        return _split_docs(_read_file(path, cfg.text_field), cfg.val_fraction)
    if path.is_dir():
        splits = _local_files(path)
        if splits["train"] and splits["validation"]:
            read = lambda files: [d for f in files for d in _read_file(f, cfg.text_field)]  # noqa: E731
            return read(splits["train"]), read(splits["validation"])
        files = splits["train"] + splits["validation"] + splits["other"]
        if not files:
            raise ConfigError(f"data.path: {path} holds no {'/'.join(TEXT_SUFFIXES)} files")
        return _split_docs([d for f in files for d in _read_file(f, cfg.text_field)], cfg.val_fraction)
    raise ConfigError(f"data.path: {cfg.path} does not exist")


# ---------------------------------------------------------------- documents -> windows

def _windows_from_ids(doc_ids: list[list[int]], seq_len: int) -> Windows:
    tokens, previous, has_prev = [], [], []
    zero = [0] * seq_len
    for ids in doc_ids:
        chunks = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
        for j, chunk in enumerate(chunks):
            tokens.append(chunk)
            previous.append(chunks[j - 1] if j > 0 else zero)
            has_prev.append(j > 0)
    if not tokens:
        return Windows(torch.zeros(0, seq_len, dtype=torch.long), torch.zeros(0, seq_len, dtype=torch.long),
                       torch.zeros(0, dtype=torch.bool))
    return Windows(torch.tensor(tokens), torch.tensor(previous), torch.tensor(has_prev))


def tokenize_documents(docs: list[str], tokenizer, seq_len: int) -> Windows:
    docs = [d for d in docs if d and d.strip()]
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []
    windows = _windows_from_ids(ids, seq_len)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(DATA_SHUFFLE_SEED))
    return windows.select(order)


def _hub_windows(cfg: DataConfig, tokenizer, n_train: int, n_val: int) -> tuple[Windows, Windows]:
    """Stream a hub dataset; without a validation split, take the first documents for training
    and the following ones (skip) for validation, as the reference experiment did."""
    import datasets

    try:
        stream = datasets.load_dataset(cfg.path, cfg.hub_config, split="train", streaming=True)
    except Exception as exc:  # the hub reports missing sets and network failures in many types
        raise ConfigError(f"data.path: cannot open hub dataset '{cfg.path}' ({str(exc).splitlines()[0]})") from None
    try:
        val_stream = datasets.load_dataset(cfg.path, cfg.hub_config, split="validation", streaming=True)
    except Exception:
        val_stream = None

    def collect(rows, need: int) -> tuple[Windows, object]:
        docs, count = [], 0
        it = iter(rows)
        for row in it:
            if cfg.text_field not in row:
                raise ConfigError(f"data.text_field: '{cfg.text_field}' not in hub dataset '{cfg.path}' (fields: {', '.join(row)})")
            ids = tokenizer(row[cfg.text_field], add_special_tokens=False)["input_ids"]
            docs.append(ids)
            count += len(ids) // cfg.seq_len
            if count >= need * 2:  # headroom for `previous` filtering
                break
        return _windows_from_ids(docs, cfg.seq_len), it

    train, rest = collect(stream, n_train)
    val, _ = collect(val_stream if val_stream is not None else rest, n_val)
    return train, val


def _is_hub(path: str) -> bool:
    return not path.startswith("builtin:") and not Path(path).expanduser().exists() and path.count("/") == 1 \
        and not path.startswith((".", "/", "~"))


def _source_fingerprint(cfg: DataConfig) -> str:
    if cfg.path.startswith("builtin:") or _is_hub(cfg.path):
        return cfg.path
    path = Path(cfg.path).expanduser().resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
    return str(path) + "|" + "|".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)


def build_windows(cfg: DataConfig, tokenizer, tokenizer_key: str) -> tuple[Windows, Windows]:
    """All windows of the source (cached on disk, keyed by tokenizer, source, field and seq_len)."""
    hub = _is_hub(cfg.path)
    parts = [tokenizer_key, _source_fingerprint(cfg), cfg.text_field, str(cfg.seq_len), str(cfg.val_fraction)]
    if hub:
        parts += [str(cfg.hub_config), str(cfg.train_samples), str(cfg.val_samples)]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
    file = cache_dir("data") / f"{key}.safetensors"
    if file.is_file():
        t = load_file(str(file))
        return (Windows(t["train.tokens"], t["train.previous"], t["train.has_previous"]),
                Windows(t["val.tokens"], t["val.previous"], t["val.has_previous"]))
    if hub:
        train, val = _hub_windows(cfg, tokenizer, cfg.train_samples, cfg.val_samples)
    else:
        set_offline()
        train_docs, val_docs = load_documents(cfg)
        train = tokenize_documents(train_docs, tokenizer, cfg.seq_len)
        val = tokenize_documents(val_docs, tokenizer, cfg.seq_len)
    tensors = {}
    for name, w in (("train", train), ("val", val)):
        tensors.update({f"{name}.tokens": w.tokens.contiguous(), f"{name}.previous": w.previous.contiguous(),
                        f"{name}.has_previous": w.has_previous.contiguous()})
    tmp = file.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp))
    tmp.replace(file)  # atomic: concurrent trials never read a half-written cache
    return train, val


def select_windows(windows: Windows, n: int, embed_source: str, split: str) -> Windows:
    """The first `n` windows; with `previous`, only windows that have preceding text, for every method alike."""
    if embed_source == "previous":
        windows = windows.select(windows.has_previous.nonzero().flatten())
    if len(windows) == 0:
        hint = " with preceding text in the same document (embed_source: previous)" if embed_source == "previous" else ""
        raise ConfigError(f"data.path: the {split} split has no windows{hint}; use longer documents or a smaller data.seq_len")
    return windows.select(torch.arange(min(n, len(windows))))
