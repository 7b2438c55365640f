"""What every trial of a search shares, built once per process: the frozen LM, the token windows, the
encoder's sentence embeddings (from their disk cache) and the frozen model's baseline perplexity."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass

import torch

from ..config import Config
from ..data import Windows, build_windows, select_windows
from ..encoders import cached_embeddings, check_lm_layer, encoder_key, lm_hidden_layer, load_encoder, pooling_of
from ..errors import ConfigError, first_line
from ..fsutil import atomic_write_text, discard_corrupt
from ..methods.baseline import Baseline
from ..models import FrozenLM, cache_dir, load_frozen_lm, tokenizer_fingerprint
from ..specs import method_spec
from . import precision
from .distill import cached_teacher
from .evaluation import perplexity


@dataclass
class Prepared:
    """Everything a trial needs that does not depend on the adapter: built once, reused."""

    lm: FrozenLM
    train: dict[str, torch.Tensor]  # input_ids, labels[, sentence_embedding][, teacher_index, teacher_logp]
    val: dict[str, torch.Tensor]
    encoder_dim: int | None
    device: str
    prepare_seconds: float = 0.0


_LM_CACHE: dict[tuple, FrozenLM] = {}
# the frozen baselines this process has computed or read, by their disk cache's key, and one lock per key: a pack's
# members (threads of one host) that prepare at once compute a baseline once, and none again if its file is not kept
_BASELINES: dict[str, float] = {}
_BASELINE_LOCKS: dict[str, threading.Lock] = {}
_BASELINES_GUARD = threading.Lock()


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no GPU is visible")
    return name


def shared_lm(model: str, device: str) -> FrozenLM:
    """One frozen LM per process and (model, device); methods never change its weights."""
    key = (model, device)
    if key not in _LM_CACHE:
        _LM_CACHE[key] = load_frozen_lm(model, device=device)
    return _LM_CACHE[key]


def encoder_ids(w: Windows, cfg: Config) -> torch.Tensor:
    """What the sentence encoder sees, per `adapter.embed_source`."""
    src = cfg.adapter.embed_source
    if src == "window":
        return w.tokens
    if src == "context":
        return w.tokens[:, : cfg.adapter.context_tokens]
    return w.previous


def scored_labels(w: Windows, cfg: Config) -> torch.Tensor:
    """Labels for the LM: examples score only their targets; windows with `context` keep the first
    context_tokens tokens as input only."""
    labels = w.tokens.clone()
    if w.scored is not None:
        labels[~w.scored] = -100
    elif cfg.adapter.embed_source == "context":
        labels[:, : cfg.adapter.context_tokens] = -100
    return labels


def ablated(embeddings: torch.Tensor, how: str, train_mean: torch.Tensor, seed: int, split: int) -> torch.Tensor:
    """What a control feeds the MLP instead of each window's own embedding (`adapter.ablation`): `train_mean` (the
    training split's mean embedding, [1, ...]) for every window, or the embeddings of one split (`split`: 0 train,
    1 validation, 2 and on: others) in a fixed order drawn from `seed`."""
    if (
        how == "constant"
    ):  # train_mean's own shape: token states are padded to each split's longest text, not one length
        return train_mean.expand(len(embeddings), *train_mean.shape[1:]).contiguous()
    if how == "shuffled":
        return embeddings[torch.randperm(len(embeddings), generator=torch.Generator().manual_seed(1000 * seed + split))]
    return embeddings


def prepare(cfg: Config) -> Prepared:
    t0 = time.perf_counter()
    device = resolve_device(cfg.train.device)
    lm = shared_lm(cfg.model, device)
    train_w, val_w = build_windows(cfg.data, lm.tokenizer, tokenizer_fingerprint(lm.tokenizer))
    train_w = select_windows(train_w, cfg.data.train_samples, cfg.adapter.embed_source, "train")
    val_w = select_windows(val_w, cfg.data.val_samples, cfg.adapter.embed_source, "validation")
    train = {"input_ids": train_w.tokens, "labels": scored_labels(train_w, cfg)}
    val = {"input_ids": val_w.tokens, "labels": scored_labels(val_w, cfg)}
    encoder_dim = None
    if method_spec(cfg.method).needs_encoder:
        a = cfg.adapter
        pooling = pooling_of(a)
        key = encoder_key(a.embedding_model, lm.tokenizer, a.fourier_features, lm.path, pooling)
        encoder = []  # loaded at most once, and only on a cache miss

        def make():
            if not encoder:
                encoder.append(
                    load_encoder(
                        a.embedding_model, lm.model, lm.tokenizer, lm.path, a.fourier_features, device, pooling
                    )
                )
            return encoder[0]

        if a.encoder_rank:  # a trained encoder: each step encodes the text anew
            check_lm_layer(lm.model, lm_hidden_layer(a.embedding_model))  # here, so a search says so before any trial
            train["encoder_ids"], val["encoder_ids"] = encoder_ids(train_w, cfg), encoder_ids(val_w, cfg)
            encoder_dim = lm.model.get_input_embeddings().weight.shape[1]
        else:
            train["sentence_embedding"] = cached_embeddings(key, encoder_ids(train_w, cfg), make)
            val["sentence_embedding"] = cached_embeddings(key, encoder_ids(val_w, cfg), make)
            encoder_dim = train["sentence_embedding"].shape[-1]
            if a.ablation != "none":
                mean = train["sentence_embedding"].mean(0, keepdim=True)
                for i, split in enumerate((train, val)):
                    split["sentence_embedding"] = ablated(
                        split["sentence_embedding"], a.ablation, mean, cfg.train.seed, i
                    )
    if cfg.train.distill and method_spec(cfg.method).trains:  # the teacher only ever trains an adapter
        train.update(
            cached_teacher(
                lm.model,
                lm.path,
                train_w.previous,
                train_w.tokens,
                cfg.train.distill_top_k,
                device,
                autocast_dtype(cfg, device),
            )
        )
    return Prepared(lm, train, val, encoder_dim, device, time.perf_counter() - t0)


def baseline_perplexity(prep: Prepared, cfg: Config) -> float:
    """The frozen model's perplexity on exactly the validation tokens the adapter is scored on, computed once per
    (model, data, dtype): cached on disk, where every trial of a search finds it, and in this process, where the
    members of a pack find it (also those asking at the same time, and also where the disk cache is not kept)."""
    h = hashlib.sha256(f"{prep.lm.path}|{precision.resolve_dtype(cfg.train.dtype, prep.device)}|{prep.device}".encode())
    for k in ("input_ids", "labels"):
        h.update(prep.val[k].numpy().tobytes())
    key = h.hexdigest()[:24]
    with _BASELINES_GUARD:
        lock = _BASELINE_LOCKS.setdefault(key, threading.Lock())
    with lock:
        file = cache_dir("baseline") / f"{key}.json"
        if file.is_file():
            try:
                ppl = float(json.loads(file.read_text())["perplexity"])
                if math.isfinite(ppl) and ppl > 0:
                    _BASELINES[key] = ppl
                    return ppl
                raise ValueError(f"perplexity {ppl}")
            except Exception as exc:  # truncated or edited: rebuild it
                discard_corrupt(file, first_line(exc))
        ppl = _BASELINES.get(key)
        if ppl is None:
            ppl = perplexity(
                Baseline(cfg, prep.lm.model),
                prep.val,
                cfg.train.eval_batch_size,
                prep.device,
                autocast_dtype(cfg, prep.device),
            )
            _BASELINES[key] = ppl
        atomic_write_text(file, json.dumps({"perplexity": ppl}))
        return ppl


def autocast_dtype(cfg: Config, device: str) -> torch.dtype | None:
    """The autocast dtype `train.dtype` means on this device (`auto`: bf16 only where it is fast)."""
    return precision.autocast_dtype(cfg.train.dtype, device)


def release_shared_lms() -> None:
    """Forget this process's frozen LMs (the search driver, once the caches are warm)."""
    _LM_CACHE.clear()
