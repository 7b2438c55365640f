"""An adapter in PEFT's layout (written as peft/ beside every saved prompt, prefix and LoRA adapter), loadable on any
machine with `peft.PeftModel.from_pretrained` or `AutoPeftModelForCausalLM.from_pretrained`.

Soft prompts become PEFT prompt tuning, deep prefixes PEFT prefix tuning, LoRA stays LoRA.
`base_model_name_or_path` is always something anyone can resolve: the hub id of the base model (for
the bundled model, the hub model whose Q4_1 quantisation it is), never a machine-local cache path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import ConfigError, first_line, warn
from ..fsutil import staged_dir
from ..models import hub_model_id
from ..specs import method_spec
from .model_card import model_card


def base_model_reference(model: str, quiet: bool = False) -> str:
    """What an export names as its base model: the hub id where there is one, else the absolute path."""
    ref = hub_model_id(model)
    if ref is None:
        ref = str(Path(model).expanduser().resolve())
        if not quiet:
            warn(
                f"model {model} is a local directory with no hub id on record; the export names {ref} as its base "
                "model, which loads only where that directory exists"
            )
    return ref


def peft_unsupported(method: nn.Module) -> str | None:
    """Why this adapter has no PEFT layout (its spec says), or None."""
    return method_spec(method.name).why_no_peft(method.cfg)


def _prompt_config(method, base: str):
    from peft import PromptTuningConfig  # lazy: PEFT takes a second to import, and only an export needs it here

    c = method.lm.config
    config = PromptTuningConfig(
        task_type="CAUSAL_LM",
        prompt_tuning_init="RANDOM",
        num_virtual_tokens=method.prompt.shape[0],
        token_dim=method.prompt.shape[1],
        num_transformer_submodules=1,
        num_attention_heads=c.num_attention_heads,
        num_layers=c.num_hidden_layers,
        base_model_name_or_path=base,
        inference_mode=True,
    )
    return config, {"prompt_embeddings": method.prompt.detach().float().cpu().contiguous()}


def _prefix_config(method, base: str):
    """PEFT stores a prefix as one [P, L*2*H*hd] table that it views as [P, L*2, H, hd] per batch row
    (H = key/value heads for grouped-query attention); embinject keeps [L, 2, H, P, hd]."""
    from peft import PrefixTuningConfig  # lazy, as above

    with torch.no_grad():
        kv = method.prefix_kv().detach().float().cpu()
    L, _, H, P, hd = kv.shape
    table = kv.permute(3, 0, 1, 2, 4).reshape(P, L * 2 * H * hd).contiguous()
    config = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=P,
        token_dim=H * hd,
        num_transformer_submodules=1,
        num_attention_heads=H,
        num_layers=L,
        encoder_hidden_size=H * hd,
        prefix_projection=False,
        base_model_name_or_path=base,
        inference_mode=True,
    )
    return config, {"prompt_embeddings": table}


def _save_lora(method, base: str, directory: Path) -> None:
    """PEFT's own save, naming `base` as the base model rather than the path the LM was loaded from."""
    config = method.peft_model.peft_config[method.adapter_name]
    loaded_from = config.base_model_name_or_path
    config.base_model_name_or_path = base
    try:
        method.peft_model.save_pretrained(str(directory), selected_adapters=[method.adapter_name])
    finally:
        config.base_model_name_or_path = loaded_from


def write_peft(method: nn.Module, directory: str | Path, quiet: bool = False, result: dict | None = None) -> Path:
    """Write `method` in PEFT's layout into `directory` (made whole beside it, then moved in): PEFT's
    adapter_config.json (written by PEFT's config classes, `peft_version` included), the weights, and a model card
    (README.md) carrying `result` (`model_card.recorded_result`: the validation perplexity the adapter was kept for)."""
    reason = peft_unsupported(method)
    if reason:
        raise ConfigError(f"--format peft: {reason}")
    directory = Path(directory)
    base = base_model_reference(method.cfg.model, quiet)
    with staged_dir(directory) as staged:
        WRITERS[method_spec(method.name).peft_format](method, staged, base)
        model_card(method, base, hub_model_id(method.cfg.model) is not None, result or {}).save(staged / "README.md")
    return directory


def _write_config(make_config):
    """A writer of the adapter's tensors and PEFT's config object that `make_config(method, base)` builds."""

    def write(method, staged: Path, base: str) -> None:
        try:
            config, tensors = make_config(method, base)
        except ValueError as exc:  # PEFT's config classes check their fields
            raise ConfigError(f"--format peft: PEFT refused the adapter's config ({first_line(exc)})") from None
        save_file(tensors, str(staged / "adapter_model.safetensors"))
        config.save_pretrained(str(staged))

    return write


def _write_lora(method, staged: Path, base: str) -> None:
    _save_lora(method, base, staged)


# PEFT's layouts, by the name a method's spec gives (`peft_format`): a new method in one of them needs no change here
WRITERS = {
    "PROMPT_TUNING": _write_config(_prompt_config),
    "PREFIX_TUNING": _write_config(_prefix_config),
    "LORA": _write_lora,
}
