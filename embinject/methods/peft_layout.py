"""An adapter in PEFT's layout (written as peft/ beside every saved prompt, prefix and LoRA adapter), loadable on any machine with `peft.PeftModel.from_pretrained` or
`AutoPeftModelForCausalLM.from_pretrained`.

Soft prompts become PEFT prompt tuning, deep prefixes PEFT prefix tuning, LoRA stays LoRA.
`base_model_name_or_path` is always something anyone can resolve: the hub id of the base model (for
the bundled model, the hub model whose Q4_1 quantisation it is), never a machine-local cache path.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import ConfigError, warn
from ..fsutil import staged_dir
from ..models import hub_model_id


PEFT_FORMATS = {"prompt": "PROMPT_TUNING", "prefix": "PREFIX_TUNING", "lora": "LORA"}


def base_model_reference(model: str, quiet: bool = False) -> str:
    """What an export names as its base model: the hub id where there is one, else the absolute path."""
    ref = hub_model_id(model)
    if ref is None:
        ref = str(Path(model).expanduser().resolve())
        if not quiet:
            warn(f"model {model} is a local directory with no hub id on record; the export names {ref} as its base "
                 "model, which loads only where that directory exists")
    return ref


def peft_unsupported(method: nn.Module) -> str | None:
    """Why this adapter has no PEFT layout, or None."""
    if method.name not in PEFT_FORMATS:
        return (f"PEFT has no layout for {method.name} adapters (only prompt, prefix and LoRA); use the adapter "
                "directory with embinject, or its MLflow model")
    if method.name == "prompt" and getattr(method, "deep", None) is not None:
        return "PEFT has no layout for deep prompts (adapter.deep_layers: learned activations inside the LM)"
    return None


def _prompt_files(method, base: str) -> tuple[dict, dict]:
    c = method.lm.config
    config = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "prompt_tuning_init": "RANDOM",
              "num_virtual_tokens": method.prompt.shape[0], "token_dim": method.prompt.shape[1],
              "num_transformer_submodules": 1, "num_attention_heads": c.num_attention_heads,
              "num_layers": c.num_hidden_layers, "base_model_name_or_path": base, "inference_mode": True}
    return config, {"prompt_embeddings": method.prompt.detach().float().cpu().contiguous()}


def _prefix_files(method, base: str) -> tuple[dict, dict]:
    """PEFT stores a prefix as one [P, L*2*H*hd] table that it views as [P, L*2, H, hd] per batch row
    (H = key/value heads for grouped-query attention); embinject keeps [L, 2, H, P, hd]."""
    with torch.no_grad():
        kv = method.prefix_kv().detach().float().cpu()
    L, _, H, P, hd = kv.shape
    table = kv.permute(3, 0, 1, 2, 4).reshape(P, L * 2 * H * hd).contiguous()
    config = {"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": P, "token_dim": H * hd,
              "num_transformer_submodules": 1, "num_attention_heads": H, "num_layers": L,
              "encoder_hidden_size": H * hd, "prefix_projection": False, "base_model_name_or_path": base,
              "inference_mode": True}
    return config, {"prompt_embeddings": table}


def write_peft(method: nn.Module, directory: str | Path, quiet: bool = False) -> Path:
    """Write `method` in PEFT's layout into `directory` (made whole beside it, then moved in)."""
    reason = peft_unsupported(method)
    if reason:
        raise ConfigError(f"--format peft: {reason}")
    directory = Path(directory)
    base = base_model_reference(method.cfg.model, quiet)
    with staged_dir(directory) as staged:
        if method.name == "lora":
            method.peft_model.save_pretrained(str(staged), selected_adapters=[method.adapter_name])
            cfg_file = staged / "adapter_config.json"
            config = json.loads(cfg_file.read_text())
            config["base_model_name_or_path"] = base
            cfg_file.write_text(json.dumps(config, indent=2))
        else:
            config, tensors = (_prompt_files if method.name == "prompt" else _prefix_files)(method, base)
            save_file(tensors, str(staged / "adapter_model.safetensors"))
            (staged / "adapter_config.json").write_text(json.dumps(config, indent=2))
        (staged / "README.md").write_text(_readme(method, base))
    return directory


def _readme(method: nn.Module, base: str) -> str:
    note = ""
    if method.cfg.model.startswith("bundled:"):
        note = (f"\nThis adapter was trained on embinject's bundled `{method.cfg.model}`: a Q4_1 (4-bit GGUF) "
                f"quantisation of `{base}`, dequantised to float32. On the original `{base}` weights it behaves "
                "nearly, not exactly, the same.\n")
    return (f"# {PEFT_FORMATS[method.name].lower().replace('_', ' ')} adapter exported by embinject\n\n"
            f"Base model: `{base}`.\n{note}\n"
            "```python\nfrom peft import AutoPeftModelForCausalLM\n"
            "model = AutoPeftModelForCausalLM.from_pretrained(\"THIS_DIRECTORY\")\n```\n")
