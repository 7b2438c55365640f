"""The model card (README.md) beside an adapter in PEFT's layout, in the Hub's form: a `huggingface_hub.ModelCard`
whose metadata names the base model, `library_name: peft`, tags and the adapter's validation perplexity (its run's or
search's result, as a model-index entry), above a short text saying how to load it. Built offline: nothing is fetched
from or checked against the Hub."""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from ..specs import method_spec


def peft_tag(method: nn.Module) -> str:
    """The Hub's tag of the method's PEFT layout (its spec's `peft_format`): prompt-tuning, prefix-tuning, lora."""
    return method_spec(method.name).peft_format.lower().replace("_", "-")


def recorded_result(meta: dict, where: str) -> dict:
    """The result an adapter's embinject.json records beside its config (`val_perplexity`, `step`: what training and
    a search's champion write), checked; {} where it records none."""
    result = {}
    for key, lowest in (("val_perplexity", 1.0), ("step", 0)):
        if key not in meta:
            continue
        value = meta[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < lowest
            or (key == "step" and value != int(value))
        ):
            kind = (
                "a perplexity (a number of at least 1)" if key == "val_perplexity" else "a step count (a whole number)"
            )
            raise ConfigError(f"{where}: '{key}' must be {kind}, got {value!r}; write the adapter again with embinject")
        result[key] = value
    return result


def _dataset(path: str) -> str:
    """The training data as a card names it: a local directory by its name (its path means nothing elsewhere)."""
    local = Path(path).expanduser()
    return local.name if local.exists() else path


def _text(method: nn.Module, base: str, hub: bool, result: dict) -> str:
    cfg = method.cfg
    kind = peft_tag(method).replace("-", " ")
    lines = [
        f"# {kind} adapter exported by embinject",
        "",
        f"Base model: `{base}`."
        + (
            ""
            if hub
            else " A local directory with no hub id on record: the adapter loads only where that directory exists."
        ),
        "",
    ]
    if cfg.model.startswith("bundled:"):
        lines += [
            f"This adapter was trained on embinject's bundled `{cfg.model}`: a Q4_1 (4-bit GGUF) quantisation of "
            f"`{base}`, dequantised to float32. On the original `{base}` weights it behaves nearly, not exactly, "
            "the same.",
            "",
        ]
    if "val_perplexity" in result:
        at = f" after {result['step']} steps" if "step" in result else ""
        lines += [
            f"Validation perplexity {result['val_perplexity']:.4g}{at} on `{_dataset(cfg.data.path)}` (windows of "
            f"{cfg.data.seq_len} tokens; learning rate {cfg.train.lr:g}).",
            "",
        ]
    return "\n".join(
        lines
        + [
            "```python",
            "from peft import AutoPeftModelForCausalLM",
            'model = AutoPeftModelForCausalLM.from_pretrained("THIS_DIRECTORY")',
            "```",
            "",
        ]
    )


def model_card(method: nn.Module, base: str, hub: bool, result: dict):
    """The card of `method` exported on base model `base` (`hub`: a hub id rather than a local path, which the Hub's
    `base_model` field does not take)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData  # lazy: only an export writes a card

    evals = None
    if "val_perplexity" in result:
        data = _dataset(method.cfg.data.path)
        evals = [
            EvalResult(
                task_type="text-generation",
                dataset_type=data,
                dataset_name=data,
                dataset_split="validation",
                metric_type="perplexity",
                metric_name="validation perplexity",
                metric_value=float(result["val_perplexity"]),
            )
        ]
    tags = ["embinject", "peft", peft_tag(method)] + ([f"base_model:adapter:{base}"] if hub else [])
    data = ModelCardData(
        base_model=base if hub else None,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=tags,
        model_name=f"{peft_tag(method)} adapter of {base.rsplit('/', 1)[-1]}",
        eval_results=evals,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{_text(method, base, hub, result)}")
