"""Typed configuration: the training config as dataclasses, every value checked (how a value is checked is in
`embinject.fields`; the search file's `tune:` and `mlflow:` sections, built the same way, are in
`embinject.search_settings`).

Every problem is raised as `ConfigError` with the dotted key and what was expected, so the
command-line entry points can print one line and exit 2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import ConfigError
from .fields import (
    build_settings,
    check_field_value,
    choice,
    choices_read_when_asked,
    field_keys,
    number,
    setting,
    walk_fields,
)
from .specs import MethodNames, check_method

METHODS = tuple(MethodNames())  # as registered when this module loads; `method:` reads them when asked (below)
INITS = ("normal", "vocab", "gaussian", "gaussian-diag", "exclusion", "text", "interpolate")
EMBED_SOURCES = ("window", "context", "previous")


@dataclass
class DataConfig:
    path: str = setting(
        "builtin:python-docs",
        help="builtin:python-docs, a local .jsonl/.txt/.parquet file or folder "
        "(its train.*/validation.* files as splits), or a hub dataset id (streamed)",
    )
    text_field: str = setting("text", help="the field of each row that holds its text")
    seq_len: int = number(64, min=4, help="window length in tokens")
    train_samples: int = number(1024, positive=True, help="training windows used")
    val_samples: int = number(256, positive=True, help="validation windows used")
    train_stride: Optional[int] = number(
        None,
        positive=True,
        help="training windows start every N tokens, overlapping "
        "where N < seq_len, so a small corpus yields more (null: seq_len, side by side)",
    )
    val_fraction: float = number(
        0.1, min=0.0, max=0.9, help="share of the documents that validate, where the source has no validation split"
    )
    hub_config: Optional[str] = setting(None, help="hub datasets: the configuration name (e.g. sample-10BT)")
    target_template: Optional[str] = setting(
        None,
        help="prompt/target examples instead of text windows: the scored "
        "target, {field} placeholders filled from the row (null: text windows)",
    )
    prompt_template: str = setting(
        "",
        help="with target_template: the prompt before the target (not scored), "
        "{field} placeholders filled from the row",
    )
    where: Optional[str] = setting(None, help="keep only rows whose field has a value, field=value")


@dataclass
class AdapterConfig:
    prefix_len: int = number(
        8, min=0, help="learnable prefix vectors (prompt, prefix; injection: learned vectors before the injected ones)"
    )
    inject_tokens: int = number(1, min=1, help="injection: vectors the MLP makes from the text")
    mlp_width: int = number(
        512, min=0, help="injection: the MLP's hidden width; prefix: its reparameterisation (0: none)"
    )
    embedding_model: str = setting(
        "bundled:all-minilm-l6-v2",
        help="injection's encoder: a sentence-transformers id "
        "or folder, fourier, lm-mean or lm-hidden:N (the frozen LM's states after layer N)",
    )
    embed_source: str = choice(
        *EMBED_SOURCES,
        default="context",
        help="what the encoder reads: the first "
        "context_tokens tokens (not scored), the scored window (a leak) or the text before it",
    )
    pooling: str = choice(
        "mean",
        "chunks",
        "recent",
        "resampler",
        default="mean",
        help="injection: one pooled "
        "vector, token states pooled over inject_tokens chunks (equal, or growing with distance: "
        "recent), or learned queries over them",
    )
    inject_into: str = choice(
        "input",
        "kv",
        default="input",
        help="injection: the vectors enter as input vectors "
        "before the window, or through a linear head as every layer's keys and values",
    )
    # the states are then computed every step rather than cached
    encoder_rank: int = number(
        0,
        min=0,
        help="injection with lm-hidden:N: LoRA of this rank on target_modules of "
        "the LM's first N layers, on the encoding pass only (0: the frozen states)",
    )
    # a control asks whether the adapter uses the text or only the capacity it adds
    ablation: str = choice(
        "none",
        "constant",
        "shuffled",
        default="none",
        help="injection controls: feed the MLP "
        "each window's embedding, the split's mean embedding, or another window's",
    )
    context_tokens: int = number(16, min=1, help="embed_source context: the window's first tokens the encoder reads")
    init: str = choice(*INITS, default="vocab", help="prior of the prefix vectors")
    init_text: str = setting("Continue the text:", help="prior text (init text; interpolate's first text)")
    init_radius: float = number(0.5, min=0.0, help="exclusion prior: minimum distance to any vocabulary vector")
    init_text_b: str = setting("", help="interpolate prior: the second cluster's text (the first is init_text)")
    fourier_features: int = number(128, min=2, help="fourier encoder: sin/cos pairs per token")
    layers: Optional[int] = number(
        None, min=1, help="prefix: layers the deep prefix covers; null or the model's layer count (all)"
    )
    deep_layers: int = number(
        0, min=0, help="prompt: also learn the prompt positions' activations entering the last N layers (a deep prompt)"
    )
    rank: int = number(8, min=1, help="LoRA rank")
    lora_alpha: float = number(16.0, positive=True, help="LoRA scale numerator (scale lora_alpha / rank)")
    lora_dropout: float = number(0.0, min=0.0, max=0.9, help="LoRA dropout")
    target_modules: list[str] = setting(
        factory=lambda: ["q_proj", "v_proj"], help="modules LoRA adapts (also encoder_rank's)"
    )


@dataclass
class TrainConfig:
    lr: float = number(1e-3, positive=True, help="AdamW learning rate")
    weight_decay: float = number(0.0, min=0.0, help="AdamW weight decay")
    batch_size: int = number(8, positive=True, help="training windows per step")
    eval_batch_size: int = number(32, positive=True, help="validation windows per forward pass")
    max_epochs: int = number(5, positive=True, help="passes over the training windows at most")
    max_steps: Optional[int] = number(None, positive=True, help="optimizer steps at most (null: no cap)")
    eval_every: Optional[int] = number(None, positive=True, help="evaluate every N steps (null: once per epoch)")
    # 64 of 256 windows: the same ASHA decisions and best trial at every rung as all windows, x3.6 cheaper
    # (benchmarks.eval_subset)
    eval_windows: Optional[int] = number(
        64,
        positive=True,
        help="intermediate evaluations score this fixed subset of "
        "validation windows; the kept adapter is scored on all (null: always all)",
    )
    eval_audit: bool = setting(
        False,
        help="also score every intermediate evaluation on all windows (val_perplexity_full), to measure the subset",
    )
    patience: int = number(3, min=0, help="evaluations without improvement before early stopping (0: never)")
    seed: int = setting(0, help="seed of initialisation, data order and sampling")
    device: str = choice("auto", "cpu", "cuda", default="auto", help="where to train (auto: CUDA if present)")
    dtype: str = choice(
        "auto",
        "float32",
        "bfloat16",
        default="auto",
        help="auto: bfloat16 autocast where the "
        "hardware runs it fast (CUDA with bf16, CPUs with AVX512-BF16/AMX), else float32",
    )
    threads: Optional[int] = number(None, positive=True, help="torch CPU threads (null: leave as is)")
    gradient_checkpointing: bool = setting(
        False, help="recompute the frozen LM's activations in backward: less memory, more time"
    )
    divergence_factor: float = number(
        10.0,
        min=0.0,
        help="stop a run whose validation perplexity exceeds this "
        "many times the frozen LM's (0: only non-finite values stop it)",
    )
    distill: float = number(
        0.0,
        min=0.0,
        help="weight of the KL divergence from the frozen LM reading the text "
        "before each window (embed_source previous; 0: NLL only)",
    )
    distill_top_k: int = number(
        64, min=1, help="distillation: the teacher's most likely tokens kept per position (the rest as one bucket)"
    )
    progress: bool = setting(True, help="a progress bar when the output is a terminal")


@dataclass
class Config:
    model: str = setting("bundled:smollm2-135m", help="the frozen LM: a hub id, a local folder or bundled:smollm2-135m")
    method: str = choice(*METHODS, default="injection", help="the adapter trained (baseline trains nothing)")
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Cross-field checks that a single field's type cannot express: the data's, then the method's own (its
        spec's, with the settings of other methods it refuses), then those every method shares."""
        a, d = self.adapter, self.data
        if d.train_stride is not None and d.train_stride > d.seq_len:
            raise ConfigError(
                f"data.train_stride: at most data.seq_len ({d.seq_len}): a larger stride would skip text, "
                f"got {d.train_stride}"
            )
        if d.train_stride is not None and d.target_template is not None:
            raise ConfigError(
                "data.train_stride: cuts text windows; prompt/target examples (data.target_template) are one "
                "sequence each; leave data.train_stride unset"
            )
        if d.where is not None and "=" not in d.where:
            raise ConfigError(f"data.where: expected field=value, got {d.where!r}")
        if d.target_template is None and d.prompt_template:
            raise ConfigError("data.prompt_template: only used together with data.target_template")
        check_method(self, Config())
        if a.deep_layers and self.train.gradient_checkpointing:
            raise ConfigError(
                "train.gradient_checkpointing: not available with adapter.deep_layers (the recomputed "
                "forward would run without the learned activations)"
            )
        if self.train.distill and (a.embed_source != "previous" or d.target_template is not None):
            raise ConfigError(
                "train.distill: the teacher is the frozen LM reading the text before each window; set "
                "adapter.embed_source: previous (with text windows), or train.distill: 0"
            )
        if a.init == "interpolate" and not (a.init_text and a.init_text_b):
            raise ConfigError(
                "adapter.init_text_b: the interpolate prior needs two texts, adapter.init_text and adapter.init_text_b"
            )
        if d.target_template is None and a.embed_source == "context" and a.context_tokens >= d.seq_len:
            raise ConfigError(
                f"adapter.context_tokens: must be smaller than data.seq_len ({d.seq_len}) so some tokens are scored, "
                f"got {a.context_tokens}"
            )
        return self


# `method:` takes every registered method, also one registered after this module loaded (a plugin, a test's toy)
choices_read_when_asked(Config, "method", MethodNames())


def config_from_dict(raw: dict) -> Config:
    return build_settings(Config, raw or {}, "").validate()


def walk_key(key: str, cls: type | None = None) -> tuple[Any, dict, bool]:
    """(type, metadata, is a section) of a dotted training-config key (or of a key of `cls`), or ConfigError naming
    it."""
    return walk_fields(key, cls or Config)


def config_keys() -> list[tuple[str, Any, tuple]]:
    """Every training-config key with its default and allowed values, from the dataclasses themselves
    (what `embinject train --help` lists)."""
    return field_keys(Config)


def keys_help() -> str:
    lines = ["config keys (default; set with --set KEY=VALUE or in the YAML file):"]
    for key, default, choices in config_keys():
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
        lines.append(f"  {key} = {shown}" + (f"  [{' | '.join(choices)}]" if choices else ""))
    return "\n".join(lines)


def lookup_field(key: str) -> tuple[Any, dict]:
    """(type, metadata) of a dotted training-config key that holds a value."""
    tp, meta, section = walk_key(key)
    if section:
        raise ConfigError(f"{key}: is a section, not a value")
    return tp, meta


def is_section(key: str) -> bool:
    try:
        return walk_key(key)[2]
    except ConfigError:
        return False


def check_value(key: str, value: Any) -> Any:
    """Validate one value for a dotted training-config key."""
    tp, meta = lookup_field(key)
    return check_field_value(key, value, tp, meta)
