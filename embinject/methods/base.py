"""The interface every adaptation method implements, and the scoring they share.

A method is an `nn.Module` holding only the adapter's own parameters; the frozen LM is kept as a
plain attribute so it never enters the adapter's state dict. `nll(batch)` returns the summed
negative log-likelihood and the number of scored tokens, so perplexity is token-weighted and every
method is scored on exactly the same tokens.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..config import Config
from ..errors import ConfigError, first_line
from ..fsutil import atomic_save_tensors, atomic_write_text
from ..specs import METHOD_SPECS
from .peft_layout import peft_unsupported, write_peft
from .priors import init_vectors

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "embinject.json"


@functools.lru_cache(maxsize=None)
def _cache_keyword(forward_owner: type) -> str:
    return "cache" if "cache" in inspect.signature(forward_owner.forward).parameters else "past_key_values"


def cache_kwargs(module: nn.Module, cache) -> dict:
    """A KV cache as `module.forward` takes it: `cache=` in newer transformers (`past_key_values=` is deprecated
    there and goes in 5.40), `past_key_values=` in older ones."""
    return {_cache_keyword(type(module)): cache}


def output_cache(out):
    """The KV cache a forward pass returned, under either name."""
    return out["cache"] if "cache" in out else out.past_key_values


# Key/value prefixes, shared by deep prefixes (.prefix) and injection (.injection)
def kv_shape(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head dimension) of a model's attention cache."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, getattr(config, "num_key_value_heads", config.num_attention_heads), head_dim


@torch.no_grad()
def activation_kv(lm, vectors: torch.Tensor) -> torch.Tensor:
    """The keys and values the frozen LM itself produces for input vectors [P, d]: [L, 2, H, P, hd]."""
    cache = output_cache(lm(inputs_embeds=vectors.unsqueeze(0), use_cache=True))
    return torch.stack(
        [torch.stack([cache.layers[i].keys[0], cache.layers[i].values[0]]) for i in range(lm.config.num_hidden_layers)]
    )


def kv_cache(kv: torch.Tensor, lm):
    """A per-layer prefix [L, 2, B, H, P, hd] as the cache the LM's forward takes, in the LM's dtype."""
    from transformers import DynamicCache  # lazy: transformers is imported where a model is loaded, not before

    dtype = lm.get_input_embeddings().weight.dtype
    return DynamicCache([(kv[i, 0].to(dtype), kv[i, 1].to(dtype)) for i in range(kv.shape[0])], config=lm.config)


def scored_logits(
    lm: nn.Module,
    inputs_embeds: torch.Tensor,
    labels: torch.Tensor,
    n_prefix: int,
    past_key_values=None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The LM head's logits at the labelled window positions 1..T-1 ([n, V]), their targets ([n]) and where they
    are ([B, T-1], True where scored).

    The LM head runs only on scored positions: most of a batch's logits (49k-wide) would be
    thrown away otherwise, and they dominate memory. Positions inside the prefix and the first
    window token (no in-window context for the baseline) are never scored, for every method alike.
    """
    decoder = lm.get_decoder()
    hidden = decoder(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        use_cache=False,
        **cache_kwargs(decoder, past_key_values),
    ).last_hidden_state
    T = labels.shape[1]
    h = hidden[:, n_prefix : n_prefix + T - 1]
    targets = labels[:, 1:]
    mask = targets != -100
    return lm.get_output_embeddings()(h[mask]), targets[mask], mask


def scored_nll(
    lm: nn.Module,
    inputs_embeds: torch.Tensor,
    labels: torch.Tensor,
    n_prefix: int,
    past_key_values=None,
    attention_mask: torch.Tensor | None = None,
    per_window: bool = False,
) -> tuple[torch.Tensor, int | torch.Tensor]:
    """Sum of next-token NLL over the scored positions (`scored_logits`), and how many were scored
    (with `per_window`, both per row of the batch: what paired statistics over windows need)."""
    logits, targets, mask = scored_logits(lm, inputs_embeds, labels, n_prefix, past_key_values, attention_mask)
    if per_window:
        return window_sums(logits, targets, mask)
    return F.cross_entropy(logits.float(), targets, reduction="sum"), int(mask.sum())


def window_sums(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window's summed NLL and scored tokens ([B] each) from the logits at its scored positions (`mask`,
    [B, T])."""
    token_nll = F.cross_entropy(logits.float(), targets, reduction="none")
    nll = torch.zeros(mask.shape[0], device=token_nll.device).index_add_(0, mask.nonzero()[:, 0], token_nll)
    return nll, mask.sum(1)


class AdapterMethod(nn.Module):
    """Subclasses set `name`, build their parameters in __init__, and override `prefix_embeds`
    (input-level prefix) and/or `past_key_values` (per-layer prefix)."""

    name = ""
    changes_lm = False  # True where loading puts the method's layers into the LM's own modules (LoRA)

    def __init__(self, cfg: Config, lm: nn.Module, encoder_dim: int | None = None, tokenizer=None):
        super().__init__()
        self.cfg = cfg
        self.encoder_dim = encoder_dim
        object.__setattr__(self, "lm", lm)  # not a submodule: the frozen LM is not adapter state
        object.__setattr__(self, "tokenizer", tokenizer)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)  # adapter init is seeded

    @property
    def needs_encoder(self) -> bool:
        """Whether its batches carry an encoder's embedding of the text (its spec says; an unregistered helper does
        not)."""
        spec = METHOD_SPECS.get(self.name)
        return spec is not None and spec.needs_encoder

    def init_prefix(self, n: int) -> nn.Parameter:
        """`n` input-level vectors drawn from the configured prior over the vocabulary."""
        a = self.cfg.adapter
        table = self.lm.get_input_embeddings().weight
        vectors = init_vectors(
            a.init,
            n,
            table,
            self.generator,
            tokenizer=self.tokenizer,
            text=a.init_text,
            radius=a.init_radius,
            text_b=a.init_text_b,
        )
        return nn.Parameter(vectors.to(table.device))

    @property
    def model_dim(self) -> int:
        return self.lm.get_input_embeddings().weight.shape[1]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def prefix_embeds(self, batch: dict) -> torch.Tensor | None:
        return None

    def past_key_values(self, batch: dict):
        return None

    def prefix_kv(self) -> torch.Tensor | None:
        """The per-layer key/value prefix as one tensor [L, 2, H, P, hd], for methods that have one (packed steps
        pad it beside other trials' prefixes)."""
        return None

    def prefix_kv_rows(self, batch: dict) -> torch.Tensor | None:
        """The per-layer key/value prefix of each row of the batch, [L, 2, B, H, P, hd] (packed steps pad it beside
        other trials' prefixes): `prefix_kv` for every row, unless a method makes one per window."""
        kv = self.prefix_kv()
        return None if kv is None else kv.unsqueeze(2).expand(-1, -1, batch["input_ids"].shape[0], -1, -1, -1)

    def activation_hooks(self) -> contextlib.AbstractContextManager:
        """Active around a forward pass that includes the prefix positions (deep prompts change
        the LM's activations there); nothing by default."""
        return contextlib.nullcontext()

    def lm_inputs(self, batch: dict) -> tuple[torch.Tensor, int, object, torch.Tensor | None]:
        """What the frozen LM receives for this batch: the input embeddings with the input-level prefix
        in front, that prefix's length, the per-layer prefix cache, and the attention mask the cache needs."""
        ids = batch["input_ids"]
        embeds = self.lm.get_input_embeddings()(ids)
        prefix = self.prefix_embeds(batch)
        n_prefix = 0
        if prefix is not None:
            n_prefix = prefix.shape[1]
            embeds = torch.cat([prefix.to(embeds.dtype), embeds], dim=1)
        past = self.past_key_values(batch)
        mask = None
        if past is not None:
            mask = torch.ones(
                ids.shape[0], past.get_seq_length() + embeds.shape[1], dtype=torch.long, device=ids.device
            )
        return embeds, n_prefix, past, mask

    def nll(self, batch: dict, per_window: bool = False) -> tuple[torch.Tensor, int | torch.Tensor]:
        embeds, n_prefix, past, mask = self.lm_inputs(batch)
        with self.activation_hooks():
            return scored_nll(
                self.lm,
                embeds,
                batch["labels"],
                n_prefix,
                past_key_values=past,
                attention_mask=mask,
                per_window=per_window,
            )

    def scored_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The adapted model's logits at the batch's scored positions, their targets and where they are."""
        embeds, n_prefix, past, mask = self.lm_inputs(batch)
        with self.activation_hooks():
            return scored_logits(self.lm, embeds, batch["labels"], n_prefix, past_key_values=past, attention_mask=mask)

    # ---- persistence: safetensors + JSON, never pickles
    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state, strict=True)

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(self.adapter_state(), directory / ADAPTER_WEIGHTS)
        self.write_meta(directory, extra)
        self.save_peft_format(directory, extra)
        return directory

    def write_meta(self, directory: Path, extra: dict | None = None) -> None:
        """The JSON that `load_method` needs to rebuild this adapter around a frozen LM."""
        meta = {"method": self.name, "encoder_dim": self.encoder_dim, "config": self.cfg.to_dict(), **(extra or {})}
        atomic_write_text(Path(directory) / ADAPTER_CONFIG, json.dumps(meta, indent=2))

    def save_peft_format(self, directory: Path, result: dict | None = None) -> None:
        """Also write the adapter in PEFT's layout (peft/) where PEFT has one for it; `result` (the validation
        perplexity it was kept for) goes into its model card."""
        if peft_unsupported(self) is None:
            write_peft(
                self,
                Path(directory) / "peft",
                quiet=True,
                result={k: v for k, v in (result or {}).items() if k in ("val_perplexity", "step")},
            )

    def load(self, directory: str | Path) -> "AdapterMethod":
        """Read the weights, checking them against the shapes this adapter's embinject.json describes;
        any problem is one ConfigError naming the file."""
        file = Path(directory) / ADAPTER_WEIGHTS
        if not file.is_file():
            raise ConfigError(f"{file}: adapter weights not found")
        try:
            state = load_file(str(file))
        except Exception as exc:  # truncated, random bytes, not safetensors
            raise ConfigError(f"{file}: not a readable safetensors file ({first_line(exc)})") from None
        expected = {k: tuple(v.shape) for k, v in self.adapter_state().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if found != expected:
            missing = sorted(set(expected) - set(found))
            extra = sorted(set(found) - set(expected))
            shape = next(
                (
                    f"'{k}' is {list(found[k])}, expected {list(expected[k])}"
                    for k in sorted(expected)
                    if k in found and found[k] != expected[k]
                ),
                "",
            )
            what = (
                f"missing tensor '{missing[0]}'"
                if missing
                else f"unexpected tensor '{extra[0]}'"
                if extra
                else f"tensor {shape}"
            )
            raise ConfigError(
                f"{file}: does not match the {self.name} adapter that {ADAPTER_CONFIG} describes ({what})"
            )
        bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:
            raise ConfigError(f"{file}: tensor '{bad}' holds NaN or infinite values (a diverged training?)")
        device = next(iter(self.lm.parameters())).device
        self.load_adapter_state({k: v.to(device) for k, v in state.items()})
        return self

    def mixed_with(self, other: "AdapterMethod", alpha: float) -> "AdapterMethod":
        """`alpha * self + (1 - alpha) * other`, another adapter of this method (methods whose spec says they mix)."""
        raise NotImplementedError(f"{self.name} adapters do not mix")

    def disabled(self) -> contextlib.AbstractContextManager:
        """Within it, the shared LM is the frozen model alone (only LoRA changes the LM object itself)."""
        return contextlib.nullcontext()

    def release(self) -> None:
        """Undo any change made to the shared LM object (only LoRA makes one)."""
