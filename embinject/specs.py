"""What each adaptation method and each encoder is, declared once, in one place each.

A method's spec names the config keys it reads and its own settings (set away from their defaults for a method that
does not read them, they are refused: "adapter.X: a setting of the Y method, not of Z"), its own checks, and what it
supports: an encoder, packed steps, a PEFT layout, mixing. Validation, the methods registry, packing, PEFT export,
serving and the search's cache warm-up ask the spec; none of them compares method or encoder names. A method's
implementation is `embinject/methods/<name>.py` (found by the spec's name); an encoder's is its class in
`embinject.encoders`, registered under its spec's name.

Light on purpose: `embinject.config` imports this module, so it imports neither torch nor any other layer's module.
A check receives the whole `Config` and raises `ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from .errors import ConfigError

Check = Callable[[Any], None]  # a check of a whole Config: raises ConfigError naming the key, or returns
Answer = Callable[[Any], Optional[str]]  # a question about a whole Config: why not (a sentence), or None


@dataclass(frozen=True)
class MethodSpec:
    name: str  # `method:` in a config; the implementation is embinject/methods/<name>.py
    label: str = ""  # how a sentence names it (LoRA); default: name
    # config keys it reads (beyond the data, training and encoder settings every method shares)
    reads: tuple[str, ...] = ()
    # its own settings: key -> why another method refuses a non-default value ("{method}" is that method). A method
    # that reads the key takes it as well; the others say this
    own_settings: dict[str, str] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()  # its own cross-field checks, run when it is the config's method
    # False: the frozen LM itself, which reads no adapter setting (a search's baseline) and refuses none
    trains: bool = True
    needs_encoder: bool = False  # its batches carry an encoder's embedding of each window's text
    unpacked: Answer = lambda cfg: None  # why a trial of it trains alone rather than in a pack (None: it packs)
    peft_format: Optional[str] = None  # PEFT's name for its layout (PROMPT_TUNING, PREFIX_TUNING, LORA), None: none
    no_peft: Answer = lambda cfg: None  # why this config of it has no PEFT layout although the method has one
    mixes: bool = False  # two adapters of it mix into one (controlled generation: `--mix`)

    @property
    def title(self) -> str:
        return self.label or self.name

    def reads_key(self, key: str) -> bool:
        return key in self.reads or key in self.own_settings

    def why_no_peft(self, cfg: Any) -> Optional[str]:
        if self.peft_format is None:
            known = _listed(s.title for s in methods_with_peft())
            return (
                f"PEFT has no layout for {self.name} adapters (only {known}); use the adapter directory with "
                "embinject, or its MLflow model"
            )
        return self.no_peft(cfg)


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder that `adapter.embedding_model` names: by its whole name (`fourier`), or by its name and an
    argument (`lm-hidden:N`); the fallback takes every value no other spec names (a model id or directory)."""

    name: str
    argument: bool = False  # named `name:ARG`
    fallback: bool = False  # the value is a location (bundled:NAME, a hub id, a directory), not a name of ours
    lm_layers: bool = False  # the LM's own states after layer ARG, which adapter.encoder_rank can train (ARG >= 1)

    def names(self, value: str) -> bool:
        return value.startswith(f"{self.name}:") if self.argument else value == self.name

    def argument_of(self, value: str) -> str:
        """ARG of `name:ARG` ("" for an encoder named without one)."""
        return value.split(":", 1)[1] if self.argument else ""


METHOD_SPECS: dict[str, MethodSpec] = {}
ENCODER_SPECS: dict[str, EncoderSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    METHOD_SPECS[spec.name] = spec
    return spec


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    ENCODER_SPECS[spec.name] = spec
    return spec


def method_spec(name: str) -> MethodSpec:
    if name not in METHOD_SPECS:
        raise ConfigError(f"method: expected one of {', '.join(METHOD_SPECS)}; got {name!r}")
    return METHOD_SPECS[name]


def encoder_spec(value: str) -> EncoderSpec:
    """The spec of the encoder `adapter.embedding_model: value` names (the fallback's where no other names it)."""
    named = [s for s in ENCODER_SPECS.values() if not s.fallback and s.names(value)]
    return named[0] if named else next(s for s in ENCODER_SPECS.values() if s.fallback)


def names_an_encoder(value: str) -> bool:
    """Whether `value` is one of our encoders' names rather than a location (which a config resolves as a path)."""
    return isinstance(value, str) and not encoder_spec(value).fallback


class MethodNames:
    """The registered methods' names, read when asked: `method:`'s allowed values, also for a method registered after
    the config module loaded (a plugin, a test's toy method)."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(METHOD_SPECS))

    def __contains__(self, name: object) -> bool:
        return name in METHOD_SPECS

    def __len__(self) -> int:
        return len(METHOD_SPECS)


def methods_with_peft() -> list[MethodSpec]:
    return [s for s in METHOD_SPECS.values() if s.peft_format]


def mixing_methods() -> list[MethodSpec]:
    return [s for s in METHOD_SPECS.values() if s.mixes]


def _listed(names) -> str:
    """a, b and c"""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _value(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_method(cfg: Any, defaults: Any) -> None:
    """`cfg.method`'s settings and checks: another method's own setting set away from its default (`defaults`: a config
    of defaults) is refused, naming the method it belongs to; then the method's own checks run."""
    spec = method_spec(cfg.method)
    if spec.trains:
        for owner in METHOD_SPECS.values():
            for key, why in owner.own_settings.items():
                if not spec.reads_key(key) and _value(cfg, key) != _value(defaults, key):
                    raise ConfigError(f"{key}: {why.format(method=cfg.method)}")
    for check in spec.checks:
        check(cfg)


# ---- the methods


def _needs_prefix_vectors(cfg: Any) -> None:
    if cfg.adapter.prefix_len < 1:
        raise ConfigError(f"adapter.prefix_len: the {cfg.method} method needs at least 1 prefix vector")


def _no_checkpointing_with_prefix(cfg: Any) -> None:
    if cfg.train.gradient_checkpointing:
        raise ConfigError(
            "train.gradient_checkpointing: not available for the prefix method "
            "(transformers drops a layer's past_key_values, the prefix itself, when checkpointing)"
        )


def _injection_mlp_and_kv(cfg: Any) -> None:
    a = cfg.adapter
    if a.mlp_width < 1:
        raise ConfigError("adapter.mlp_width: injection needs an MLP width of at least 1")
    if a.inject_into == "kv" and cfg.train.gradient_checkpointing:
        raise ConfigError(
            "train.gradient_checkpointing: not available with adapter.inject_into: kv "
            "(transformers drops a layer's past_key_values, the injected prefix, when checkpointing)"
        )


def _injection_encoder_rank(cfg: Any) -> None:
    a = cfg.adapter
    if not a.encoder_rank:
        return
    named = encoder_spec(a.embedding_model)
    layer = named.argument_of(a.embedding_model)
    if not (named.lm_layers and layer.isdigit() and int(layer) >= 1):
        trainable = _listed(f"{s.name}:N" for s in ENCODER_SPECS.values() if s.lm_layers)
        raise ConfigError(
            "adapter.encoder_rank: trains the LM as its own encoder; set adapter.embedding_model: "
            f"{trainable} with N >= 1 (got {a.embedding_model}), or adapter.encoder_rank: 0"
        )
    if a.pooling == "resampler":
        raise ConfigError("adapter.encoder_rank: takes adapter.pooling mean, chunks or recent, not resampler")
    if cfg.train.gradient_checkpointing:
        raise ConfigError(
            "train.gradient_checkpointing: not available with adapter.encoder_rank (the recomputed "
            "encoder pass would run without its LoRA)"
        )
    if a.ablation != "none":
        raise ConfigError(
            f"adapter.ablation: a {a.ablation} input leaves the encoder nothing to learn from the text; "
            "set adapter.encoder_rank: 0 for this control"
        )


def _injection_reads_text_windows(cfg: Any) -> None:
    if cfg.data.target_template is not None:
        raise ConfigError(
            "data.target_template: prompt/target examples are not supported by the injection method yet; "
            "use text windows (leave data.target_template unset)"
        )


PRIOR = (
    "adapter.init",
    "adapter.init_text",
    "adapter.init_radius",
    "adapter.init_text_b",
)  # where prefix vectors start

register_method(MethodSpec("baseline", trains=False, unpacked=lambda cfg: "the baseline trains nothing"))
register_method(
    MethodSpec(
        "prompt",
        reads=("adapter.prefix_len", *PRIOR),
        own_settings={"adapter.deep_layers": "deep prompts are a variant of the prompt method, not of {method}"},
        checks=(_needs_prefix_vectors,),
        unpacked=lambda cfg: (
            "a deep prompt substitutes hidden states inside the LM's layers at fixed positions"
            if cfg.adapter.deep_layers
            else None
        ),
        peft_format="PROMPT_TUNING",
        mixes=True,
        no_peft=lambda cfg: (
            "PEFT has no layout for deep prompts (adapter.deep_layers: learned activations inside the LM)"
            if cfg.adapter.deep_layers
            else None
        ),
    )
)
register_method(
    MethodSpec(
        "injection",
        needs_encoder=True,
        reads=(
            "adapter.prefix_len",
            "adapter.inject_tokens",
            "adapter.mlp_width",
            "adapter.embedding_model",
            "adapter.pooling",
            "adapter.fourier_features",
            "adapter.lora_alpha",
            "adapter.target_modules",
            *PRIOR,
        ),
        own_settings={
            "adapter.inject_into": "a setting of the injection method, not of {method}",
            "adapter.encoder_rank": "LoRA on the injection encoder's pass, not a setting of {method}",
            "adapter.ablation": "a control of the injection method, not a setting of {method}",
        },
        checks=(_injection_mlp_and_kv, _injection_encoder_rank, _injection_reads_text_windows),
    )
)
register_method(
    MethodSpec(
        "prefix",
        reads=("adapter.prefix_len", "adapter.mlp_width", "adapter.layers", *PRIOR),
        checks=(_needs_prefix_vectors, _no_checkpointing_with_prefix),
        peft_format="PREFIX_TUNING",
        mixes=True,
    )
)
register_method(
    MethodSpec(
        "lora",
        label="LoRA",
        reads=("adapter.rank", "adapter.lora_alpha", "adapter.lora_dropout", "adapter.target_modules"),
        unpacked=lambda cfg: "LoRA changes the frozen LM's own layers, which every member of a pack shares",
        peft_format="LORA",
    )
)


# ---- the encoders (their classes: embinject.encoders)

register_encoder(EncoderSpec("fourier"))  # reads adapter.fourier_features
register_encoder(EncoderSpec("lm-mean"))
register_encoder(EncoderSpec("lm-hidden", argument=True, lm_layers=True))
register_encoder(EncoderSpec("sentence-transformers", fallback=True))
