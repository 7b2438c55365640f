"""A method or an encoder is what its spec declares: registered with its spec and its class alone (no other file
changed), it is validated, packed or not, exported to PEFT, mixed and warmed up as the spec says."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
import yaml
from torch import nn

from embinject.config import AdapterConfig, config_from_dict, keys_help
from embinject.config_files import load_config, resolve_paths
from embinject.encoders import IMPLEMENTATIONS, add_encoder, encoder_key, load_encoder
from embinject.errors import ConfigError
from embinject.methods import REGISTRY, AdapterMethod, add_method, build_method, mix_adapters
from embinject.methods.peft_layout import peft_unsupported, write_peft
from embinject.space import load_search_file
from embinject.specs import ENCODER_SPECS, METHOD_SPECS, EncoderSpec, MethodSpec, names_an_encoder
from embinject.train.packing import unpackable_reason
from embinject.train.shared import prepare
from embinject.tune.driver.cluster import warm_caches

from .conftest import ROOT


class Toy(AdapterMethod):
    """A soft prompt under another name: enough to be trained, saved, exported and mixed."""

    name = "toy"

    def __init__(self, cfg, lm, encoder_dim=None, tokenizer=None):
        super().__init__(cfg, lm, encoder_dim, tokenizer)
        self.prompt = self.init_prefix(cfg.adapter.prefix_len)

    def prefix_embeds(self, batch):
        return self.prompt.unsqueeze(0).expand(batch["input_ids"].shape[0], -1, -1)

    def mixed_with(self, other, alpha):
        mixed = Toy(self.cfg, self.lm, self.encoder_dim, self.tokenizer)
        with torch.no_grad():
            mixed.prompt.copy_(alpha * self.prompt + (1 - alpha) * other.prompt)
        return mixed


def _at_least_two(cfg):
    if cfg.adapter.prefix_len < 2:
        raise ConfigError("adapter.prefix_len: the toy method needs 2 vectors or more")


TOY = MethodSpec(
    "toy",
    reads=("adapter.prefix_len",),
    own_settings={"adapter.layers": "a setting of the toy method, not of {method}"},
    checks=(_at_least_two,),
    unpacked=lambda cfg: "toys train alone",
    peft_format="PROMPT_TUNING",
    mixes=True,
)


class ToyEncoder:
    """Each token id's parity, mean-pooled over the text."""

    dim = 1

    def token_states(self, ids):
        return list((ids % 2).float().unsqueeze(-1))

    def encode(self, ids):
        return (ids % 2).float().mean(dim=1, keepdim=True)

    @staticmethod
    def cache_key(src, pooling):
        return f"toy-parity{pooling.key()}"

    @staticmethod
    def build(src):
        return ToyEncoder()


@pytest.fixture
def toys():
    add_method(TOY, Toy)
    add_encoder(EncoderSpec("toy-parity"), ToyEncoder)
    yield
    for table in (METHOD_SPECS, REGISTRY, ENCODER_SPECS, IMPLEMENTATIONS):
        table.pop("toy", None)
        table.pop("toy-parity", None)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"method": "toy", "adapter": {"prefix_len": 1}}, "adapter.prefix_len: the toy method needs 2 vectors or more"),
        ({"method": "prompt", "adapter": {"layers": 2}}, "adapter.layers: a setting of the toy method, not of prompt"),
        (
            {"method": "toy", "adapter": {"deep_layers": 2}},
            "adapter.deep_layers: deep prompts are a variant of the prompt method, not of toy",
        ),
        (
            {"method": "toy", "adapter": {"inject_into": "kv"}},
            "adapter.inject_into: a setting of the injection method, not of toy",
        ),
        (
            {"method": "toy", "adapter": {"prefix_len": 2}, "train": {"distill": 1.0}},
            "train.distill: the teacher is the frozen LM",
        ),
    ],
)
def test_a_method_registered_by_its_spec_is_validated_as_it_declares(toys, raw, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert str(err.value).startswith(message)


def test_a_method_registered_by_its_spec_is_accepted_packed_exported_and_mixed_as_it_declares(
    toys, tiny_overrides, tmp_path
):
    assert "prompt | injection | prefix | lora | toy]" in keys_help()
    for method in ("prefix", "baseline"):  # prefix reads adapter.layers too; the baseline reads no adapter setting
        config_from_dict({"method": method, "adapter": {"layers": 2}})
    cfg = load_config(None, [*tiny_overrides, "method=toy"])
    assert unpackable_reason(cfg) == "toys train alone"
    prep = prepare(cfg)
    a, b = (build_method(cfg, prep.lm.model, prep.encoder_dim, prep.lm.tokenizer) for _ in range(2))
    assert isinstance(a, Toy) and not a.needs_encoder and peft_unsupported(a) is None
    out = write_peft(a, tmp_path / "peft", quiet=True)
    assert json.loads((out / "adapter_config.json").read_text())["num_virtual_tokens"] == 4
    assert torch.equal(mix_adapters(a, b, 1.0).prompt, a.prompt)
    prompt = build_method(load_config(None, [*tiny_overrides, "method=prompt"]), prep.lm.model, None, prep.lm.tokenizer)
    with pytest.raises(
        ConfigError,
        match="--mix: mixing is defined for two prompt or two prefix or two toy adapters, got toy and prompt",
    ):
        mix_adapters(a, prompt, 0.5)


def test_without_its_spec_a_method_is_unknown():
    with pytest.raises(
        ConfigError, match="method: expected one of baseline, prompt, injection, prefix, lora; got 'toy'"
    ):
        config_from_dict({"method": "toy"})


def test_an_encoder_registered_by_its_spec_is_named_cached_and_loaded(toys, tiny_overrides, tmp_path, monkeypatch):
    (tmp_path / "toy-parity").mkdir()  # a directory of the encoder's name where the command runs: still the encoder
    monkeypatch.chdir(tmp_path)
    assert names_an_encoder("toy-parity") and not names_an_encoder("org/model")
    assert resolve_paths({"adapter": {"embedding_model": "toy-parity"}})["adapter"]["embedding_model"] == "toy-parity"
    cfg = load_config(None, [*tiny_overrides, "method=injection", "adapter.embedding_model=toy-parity"])
    prep = prepare(cfg)
    assert prep.encoder_dim == 1 and prep.train["sentence_embedding"].shape == (prep.train["input_ids"].shape[0], 1)
    assert encoder_key("toy-parity", prep.lm.tokenizer, 16) == "toy-parity"
    assert isinstance(load_encoder("toy-parity", prep.lm.model, prep.lm.tokenizer, prep.lm.path), ToyEncoder)


def test_every_method_module_holds_the_class_its_spec_names():
    assert set(REGISTRY) == set(METHOD_SPECS) and all(REGISTRY[name].name == name for name in REGISTRY)
    assert all(issubclass(c, nn.Module) for c in REGISTRY.values())


def test_every_method_spec_names_the_adapter_settings_its_module_reads():
    """What a method module reads of `cfg.adapter` (read from its source) is in its spec's `reads` or own settings, so
    the spec stays the one place that says which settings are whose."""
    fields = {f.name for f in dataclasses.fields(AdapterConfig)}
    for name, spec in METHOD_SPECS.items():
        source = (ROOT / "embinject" / "methods" / f"{name}.py").read_text()
        used = set(re.findall(r"\b(?:a|cfg\.adapter|self\.cfg\.adapter)\.([a-z_]+)\b", source)) & fields
        assert {f"adapter.{u}" for u in used} <= {*spec.reads, *spec.own_settings}, name


def test_the_search_warms_the_encoder_cache_for_a_method_whose_spec_reads_an_encoder(tiny_model, tmp_path, monkeypatch):
    """The driver computes each encoder's embeddings once before the trials start, for whichever method the spec says
    reads them (before specs it asked for `injection` by name, and another such method's trials each encoded alone)."""
    monkeypatch.setitem(METHOD_SPECS, "reader", MethodSpec("reader", needs_encoder=True))
    monkeypatch.setenv("EMBINJECT_CACHE", str(tmp_path / "cache"))
    search = tmp_path / "search.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "model": tiny_model,
                "method": "reader",
                "data": {"seq_len": 32, "train_samples": 16, "val_samples": 8},
                "adapter": {"fourier_features": 16, "context_tokens": 8},
                "train": {"max_steps": 12},
                "search": {"adapter.embedding_model": {"choice": ["fourier", "lm-mean"]}},
                "tune": {"storage_path": str(tmp_path / "runs")},
            }
        )
    )
    warm_caches(load_search_file(search))
    assert len(list((tmp_path / "cache" / "embeddings").iterdir())) == 4  # 2 encoders x (training, validation)
