"""Text sources -> fixed-length token windows, cached on disk.

Each window keeps the `seq_len` tokens that precede it in the same document (`previous`), so
`embed_source: previous` can show the encoder text the LM never sees. Windows are shuffled with a
fixed seed (independent of the training seed) so every method and every trial is scored on the
same validation windows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DataConfig
from .documents import TEXT_SUFFIXES, is_hub, items_of, load_documents, local_sources, rows_to_items
from .errors import ConfigError
from .fsutil import cached_tensors
from .models import cache_dir, set_offline

DATA_SHUFFLE_SEED = 1234
LAZY_READ_BYTES = 64 << 20  # a larger local source is read only as far as the windows asked for need


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


def _large(cfg: DataConfig) -> bool:
    """A local source too large to read whole for a few hundred windows (a data file of hundreds of megabytes)."""
    if cfg.path.startswith("builtin:") or is_hub(cfg.path):
        return False
    train_files, val_files = local_sources(cfg)
    return sum(f.stat().st_size for f in train_files + (val_files or [])) > LAZY_READ_BYTES


def _read_until_enough(cfg: DataConfig, tokenizer) -> tuple[Windows, Windows]:
    """Windows of a large local source, read document by document only until each split holds twice the windows
    asked for (data.train_samples, data.val_samples), as a hub dataset is streamed; the split by document index
    is the one `_split_docs` makes."""
    train_files, val_files = local_sources(cfg)
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
        for i, item in enumerate(items_of(train_files, cfg)):
            split = "validation" if k and i % k == k - 1 else "train"
            if counts[split] < need[split]:
                add(split, item)
            if all(counts[s] >= need[s] for s in need):
                break
    else:
        for split, files in (("train", train_files), ("validation", val_files)):
            for item in items_of(files, cfg):
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


def tokenizeitems_of(items: list, tokenizer, cfg: DataConfig, stride: int | None = None) -> Windows:
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


def _source_fingerprint(cfg: DataConfig) -> str:
    if cfg.path.startswith("builtin:") or is_hub(cfg.path):
        return cfg.path
    path = Path(cfg.path).expanduser().resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
    return str(path) + "|" + "|".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)


def build_windows(cfg: DataConfig, tokenizer, tokenizer_key: str) -> tuple[Windows, Windows]:
    """All windows of the source (cached on disk, keyed by tokenizer, source, field and seq_len)."""
    hub, large = is_hub(cfg.path), _large(cfg)
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
                tokenizeitems_of(train_docs, tokenizer, cfg, cfg.train_stride),
                tokenizeitems_of(val_docs, tokenizer, cfg),
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
