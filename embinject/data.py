"""Text sources -> fixed-length token windows, cached on disk.

Each window keeps the `seq_len` tokens that precede it in the same document (`previous`), so
`embed_source: previous` can show the encoder text the LM never sees. Windows are shuffled with a
fixed seed (independent of the training seed) so every method and every trial is scored on the
same validation windows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DataConfig
from .errors import ConfigError, first_line
from .fsutil import cached_tensors
from .models import cache_dir, set_offline

DATA_SHUFFLE_SEED = 1234
TEXT_SUFFIXES = (".jsonl", ".json", ".txt", ".parquet")
LAZY_READ_BYTES = 64 << 20  # a larger local source is read only as far as the windows asked for need
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev")}


@dataclass
class Windows:
    tokens: torch.Tensor  # [N, seq_len] int64
    previous: torch.Tensor  # [N, seq_len] int64 (zeros where there is no preceding text)
    has_previous: torch.Tensor  # [N] bool
    scored: torch.Tensor | None = None  # [N, seq_len] bool: prompt/target examples score only the target

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, index: torch.Tensor) -> "Windows":
        scored = None if self.scored is None else self.scored[index]
        return Windows(self.tokens[index], self.previous[index], self.has_previous[index], scored)


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


def _iter_rows(path: Path):
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


def _split_docs(docs: list, val_fraction: float) -> tuple[list, list]:
    """Deterministic document-level split (every k-th document to validation)."""
    if len(docs) < 2:
        raise ConfigError("data.path: need at least 2 documents (rows) to split into train and validation")
    k = max(2, round(1 / val_fraction)) if val_fraction > 0 else len(docs)
    val = [d for i, d in enumerate(docs) if i % k == k - 1]
    train = [d for i, d in enumerate(docs) if i % k != k - 1]
    return train, val


def _local_sources(cfg: DataConfig) -> tuple[list[Path], list[Path] | None]:
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


def _items(files: list[Path], cfg: DataConfig):
    for f in files:
        for row in _iter_rows(f):
            yield from rows_to_items([row], cfg, str(f))


def load_documents(cfg: DataConfig) -> tuple[list, list]:
    """(train items, validation items) for local and builtin sources."""
    if cfg.path == "builtin:python-docs":
        return _split_docs(rows_to_items(_builtin_python_docs(), cfg, cfg.path), cfg.val_fraction)
    if cfg.path.startswith("builtin:"):
        raise ConfigError(f"data.path: unknown builtin data set '{cfg.path}' (known: builtin:python-docs)")
    train_files, val_files = _local_sources(cfg)
    if val_files is not None:
        return list(_items(train_files, cfg)), list(_items(val_files, cfg))
    return _split_docs(list(_items(train_files, cfg)), cfg.val_fraction)


def _large(cfg: DataConfig) -> bool:
    """A local source too large to read whole for a few hundred windows (a data file of hundreds of megabytes)."""
    if cfg.path.startswith("builtin:") or _is_hub(cfg.path):
        return False
    train_files, val_files = _local_sources(cfg)
    return sum(f.stat().st_size for f in train_files + (val_files or [])) > LAZY_READ_BYTES


def _read_until_enough(cfg: DataConfig, tokenizer) -> tuple[Windows, Windows]:
    """Windows of a large local source, read document by document only until each split holds twice the windows
    asked for (data.train_samples, data.val_samples), as a hub dataset is streamed; the split by document index
    is the one `_split_docs` makes."""
    train_files, val_files = _local_sources(cfg)
    examples = cfg.target_template is not None
    need = {"train": 2 * cfg.train_samples, "validation": 2 * cfg.val_samples}
    kept: dict[str, list] = {"train": [], "validation": []}
    counts = {"train": 0, "validation": 0}

    def add(split: str, item) -> None:
        if examples:
            kept[split].append(item)
            counts[split] += 1
        elif item and item.strip():
            ids = tokenizer(item, add_special_tokens=False)["input_ids"]  # tokenised once
            kept[split].append(ids)
            step = (cfg.train_stride or cfg.seq_len) if split == "train" else cfg.seq_len
            counts[split] += max(0, (len(ids) - 2 * cfg.seq_len) // step + 1)  # windows that also have preceding text

    if val_files is None:
        k = max(2, round(1 / cfg.val_fraction)) if cfg.val_fraction > 0 else 0
        for i, item in enumerate(_items(train_files, cfg)):
            split = "validation" if k and i % k == k - 1 else "train"
            if counts[split] < need[split]:
                add(split, item)
            if all(counts[s] >= need[s] for s in need):
                break
    else:
        for split, files in (("train", train_files), ("validation", val_files)):
            for item in _items(files, cfg):
                add(split, item)
                if counts[split] >= need[split]:
                    break
    if examples:
        return tokenize_examples(kept["train"], tokenizer, cfg.seq_len), tokenize_examples(
            kept["validation"], tokenizer, cfg.seq_len
        )
    shuffled = lambda w: w.select(torch.randperm(len(w), generator=torch.Generator().manual_seed(DATA_SHUFFLE_SEED)))  # noqa: E731
    return (
        shuffled(_windows_from_ids(kept["train"], cfg.seq_len, cfg.train_stride)),
        shuffled(_windows_from_ids(kept["validation"], cfg.seq_len)),
    )


# ---------------------------------------------------------------- documents -> windows


def _windows_from_ids(doc_ids: list[list[int]], seq_len: int, stride: int | None = None) -> Windows:
    """A window every `stride` tokens (seq_len: side by side), each with the seq_len tokens before it where the
    document has that many."""
    tokens, previous, has_prev = [], [], []
    zero = [0] * seq_len
    for ids in doc_ids:
        for start in range(0, len(ids) - seq_len + 1, stride or seq_len):
            tokens.append(ids[start : start + seq_len])
            previous.append(ids[start - seq_len : start] if start >= seq_len else zero)
            has_prev.append(start >= seq_len)
    if not tokens:
        return Windows(
            torch.zeros(0, seq_len, dtype=torch.long),
            torch.zeros(0, seq_len, dtype=torch.long),
            torch.zeros(0, dtype=torch.bool),
        )
    return Windows(torch.tensor(tokens), torch.tensor(previous), torch.tensor(has_prev))


def tokenize_documents(docs: list[str], tokenizer, seq_len: int, stride: int | None = None) -> Windows:
    """Fixed-length windows cut from each document every `stride` tokens (a tail shorter than seq_len is dropped)."""
    docs = [d for d in docs if d and d.strip()]
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []
    windows = _windows_from_ids(ids, seq_len, stride)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(DATA_SHUFFLE_SEED))
    return windows.select(order)


def tokenize_examples(pairs: list[tuple[str, str]], tokenizer, seq_len: int) -> Windows:
    """One right-padded sequence per example: [BOS] prompt target [EOS]. Only target and EOS are
    scored; a prompt that does not fit loses its oldest tokens, a target its last ones. Right
    padding keeps every real token's causal context (and position) unchanged."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n = len(pairs)
    tokens = torch.full((n, seq_len), pad, dtype=torch.long)
    scored = torch.zeros(n, seq_len, dtype=torch.bool)
    if n:
        prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
        targets = tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"]
        for i, (p_ids, t_ids) in enumerate(zip(prompts, targets)):
            t_ids = (t_ids + [tokenizer.eos_token_id])[: seq_len - 1]
            p_ids = ([start] + p_ids)[-(seq_len - len(t_ids)) :]
            row = p_ids + t_ids
            tokens[i, : len(row)] = torch.tensor(row)
            scored[i, len(p_ids) : len(row)] = True
    order = torch.randperm(n, generator=torch.Generator().manual_seed(DATA_SHUFFLE_SEED))
    none = torch.zeros(n, seq_len, dtype=torch.long)
    return Windows(tokens, none, torch.zeros(n, dtype=torch.bool), scored).select(order)


def tokenize_items(items: list, tokenizer, cfg: DataConfig, stride: int | None = None) -> Windows:
    if cfg.target_template is not None:
        return tokenize_examples(items, tokenizer, cfg.seq_len)
    return tokenize_documents(items, tokenizer, cfg.seq_len, stride)


def _hub_windows(cfg: DataConfig, tokenizer, n_train: int, n_val: int) -> tuple[Windows, Windows]:
    """Stream a hub dataset; without a validation split, take the first documents for training
    and the following ones (skip) for validation, as the reference experiment did."""
    import datasets  # lazy: seconds to import, only for hub datasets

    try:
        stream = datasets.load_dataset(cfg.path, cfg.hub_config, split="train", streaming=True)
    except Exception as exc:  # the hub reports missing sets and network failures in many types
        raise ConfigError(f"data.path: cannot open hub dataset '{cfg.path}' ({str(exc).splitlines()[0]})") from None
    try:
        val_stream = datasets.load_dataset(cfg.path, cfg.hub_config, split="validation", streaming=True)
    except Exception:
        val_stream = None

    def collect(rows, need: int, stride: int | None = None) -> tuple[Windows, object]:
        examples, docs, count = [], [], 0
        it = iter(rows)
        for row in it:
            new = rows_to_items([row], cfg, f"hub dataset '{cfg.path}'")
            if cfg.target_template is not None:
                examples += new
                count += len(new)
            else:
                for ids in (tokenizer(d, add_special_tokens=False)["input_ids"] for d in new):  # tokenised once
                    docs.append(ids)
                    count += len(ids) // cfg.seq_len
            if count >= need * 2:  # headroom for `previous` filtering
                break
        if cfg.target_template is not None:
            return tokenize_examples(examples, tokenizer, cfg.seq_len), it
        return _windows_from_ids(docs, cfg.seq_len, stride), it

    train, rest = collect(stream, n_train, cfg.train_stride)
    val, _ = collect(val_stream if val_stream is not None else rest, n_val)
    return train, val


def _is_hub(path: str) -> bool:
    return (
        not path.startswith("builtin:")
        and not Path(path).expanduser().exists()
        and path.count("/") == 1
        and not path.startswith((".", "/", "~"))
    )


def _source_fingerprint(cfg: DataConfig) -> str:
    if cfg.path.startswith("builtin:") or _is_hub(cfg.path):
        return cfg.path
    path = Path(cfg.path).expanduser().resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
    return str(path) + "|" + "|".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)


def build_windows(cfg: DataConfig, tokenizer, tokenizer_key: str) -> tuple[Windows, Windows]:
    """All windows of the source (cached on disk, keyed by tokenizer, source, field and seq_len)."""
    hub, large = _is_hub(cfg.path), _large(cfg)
    parts = [
        tokenizer_key,
        _source_fingerprint(cfg),
        cfg.text_field,
        str(cfg.seq_len),
        str(cfg.val_fraction),
        repr((cfg.target_template, cfg.prompt_template, cfg.where)),
    ]
    if hub:
        parts += [str(cfg.hub_config), str(cfg.train_samples), str(cfg.val_samples)]
    elif large:  # read only as far as these need
        parts += ["read until enough", str(cfg.train_samples), str(cfg.val_samples)]
    if cfg.train_stride is not None:  # only then: caches made before the key existed stay valid
        parts.append(f"train_stride={cfg.train_stride}")
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
    file = cache_dir("data") / f"{key}.safetensors"

    def make() -> dict[str, torch.Tensor]:
        if hub:
            train, val = _hub_windows(cfg, tokenizer, cfg.train_samples, cfg.val_samples)
        elif large:
            train, val = _read_until_enough(cfg, tokenizer)
        else:
            set_offline()
            train_docs, val_docs = load_documents(cfg)
            train, val = (
                tokenize_items(train_docs, tokenizer, cfg, cfg.train_stride),
                tokenize_items(val_docs, tokenizer, cfg),
            )
        tensors = {}
        for name, w in (("train", train), ("val", val)):
            tensors.update(
                {f"{name}.tokens": w.tokens, f"{name}.previous": w.previous, f"{name}.has_previous": w.has_previous}
            )
            if w.scored is not None:
                tensors[f"{name}.scored"] = w.scored
        return tensors

    def problem(t: dict) -> str | None:
        missing = [
            f"{n}.{part}"
            for n in ("train", "val")
            for part in ("tokens", "previous", "has_previous")
            if f"{n}.{part}" not in t
        ]
        return f"no tensor {missing[0]}" if missing else None

    t = cached_tensors(file, make, problem, "token windows")  # concurrent trials never read a half-written entry
    return tuple(
        Windows(t[f"{n}.tokens"], t[f"{n}.previous"], t[f"{n}.has_previous"], t.get(f"{n}.scored"))
        for n in ("train", "val")
    )


def select_windows(windows: Windows, n: int, embed_source: str, split: str) -> Windows:
    """The first `n` windows; with `previous`, only windows that have preceding text, for every method alike."""
    if embed_source == "previous" and windows.scored is None:
        windows = windows.select(windows.has_previous.nonzero().flatten())
    if len(windows) == 0:
        hint = (
            " with preceding text in the same document (embed_source: previous)" if embed_source == "previous" else ""
        )
        raise ConfigError(
            f"data.path: the {split} split has no windows{hint}; use longer documents or a smaller data.seq_len"
        )
    return windows.select(torch.arange(min(n, len(windows))))
