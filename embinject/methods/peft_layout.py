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
from ..specs import method_spec


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
    """Why this adapter has no PEFT layout (its spec says), or None."""
    return method_spec(method.name).why_no_peft(method.cfg)


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
        WRITERS[method_spec(method.name).peft_format](method, staged, base)
        (staged / "README.md").write_text(_readme(method, base))
    return directory


def _write_tables(files):
    """A writer of PEFT's config and tensors as `files(method, base)` gives them."""
    def write(method, staged: Path, base: str) -> None:
        config, tensors = files(method, base)
        save_file(tensors, str(staged / "adapter_model.safetensors"))
        (staged / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return write


def _write_lora(method, staged: Path, base: str) -> None:
    """PEFT writes its own LoRA; the base model it names is made one anyone can resolve."""
    method.peft_model.save_pretrained(str(staged), selected_adapters=[method.adapter_name])
    cfg_file = staged / "adapter_config.json"
    config = json.loads(cfg_file.read_text())
    config["base_model_name_or_path"] = base
    cfg_file.write_text(json.dumps(config, indent=2))


# PEFT's layouts, by the name a method's spec gives (`peft_format`): a new method in one of them needs no change here
WRITERS = {"PROMPT_TUNING": _write_tables(_prompt_files), "PREFIX_TUNING": _write_tables(_prefix_files), "LORA": _write_lora}


def _readme(method: nn.Module, base: str) -> str:
    note = ""
    if method.cfg.model.startswith("bundled:"):
        note = (f"\nThis adapter was trained on embinject's bundled `{method.cfg.model}`: a Q4_1 (4-bit GGUF) "
                f"quantisation of `{base}`, dequantised to float32. On the original `{base}` weights it behaves "
                "nearly, not exactly, the same.\n")
    return (f"# {method_spec(method.name).peft_format.lower().replace('_', ' ')} adapter exported by embinject\n\n"
            f"Base model: `{base}`.\n{note}\n"
            "```python\nfrom peft import AutoPeftModelForCausalLM\n"
            "model = AutoPeftModelForCausalLM.from_pretrained(\"THIS_DIRECTORY\")\n```\n")
