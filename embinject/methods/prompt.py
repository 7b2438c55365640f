"""Soft prompt: `prefix_len` learnable vectors prepended to the input embeddings."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .base import AdapterMethod


class Prompt(AdapterMethod):
    name = "prompt"

    def __init__(self, cfg, lm, encoder_dim=None, tokenizer=None):
        super().__init__(cfg, lm, encoder_dim, tokenizer)
        self.prompt = self.init_prefix(cfg.adapter.prefix_len)

    def prefix_embeds(self, batch: dict) -> torch.Tensor:
        return self.prompt.unsqueeze(0).expand(batch["input_ids"].shape[0], -1, -1)

    def save_peft_format(self, directory: Path) -> None:
        """PEFT prompt-tuning layout, loadable with `peft.PeftModel.from_pretrained`."""
        c = self.lm.config
        peft_dir = directory / "peft"
        peft_dir.mkdir(exist_ok=True)
        save_file({"prompt_embeddings": self.prompt.detach().cpu().contiguous()}, str(peft_dir / "adapter_model.safetensors"))
        config = {
            "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "prompt_tuning_init": "RANDOM",
            "num_virtual_tokens": self.prompt.shape[0], "token_dim": self.prompt.shape[1],
            "num_transformer_submodules": 1, "num_attention_heads": c.num_attention_heads,
            "num_layers": c.num_hidden_layers, "base_model_name_or_path": self.cfg.model, "inference_mode": True,
        }
        (peft_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
