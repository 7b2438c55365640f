"""LoRA through the PEFT library: low-rank updates on chosen target modules, zero-initialised so
the model is unchanged before training. PEFT injects its layers into the LM object in place;
`release()` takes them out again so the same frozen LM can serve another method."""

from __future__ import annotations

import warnings

import torch

from ..errors import ConfigError
from .base import AdapterMethod


class LoRA(AdapterMethod):
    name = "lora"
    changes_lm = True

    def __init__(self, cfg, lm, encoder_dim=None, tokenizer=None, adapter_name: str = "default"):
        from peft import LoraConfig, get_peft_model  # lazy: PEFT takes a second to import, and only LoRA needs it

        super().__init__(cfg, lm, encoder_dim, tokenizer)
        a = cfg.adapter
        self.adapter_name = adapter_name
        self.lora_config = LoraConfig(
            r=a.rank,
            lora_alpha=a.lora_alpha,
            lora_dropout=a.lora_dropout,
            target_modules=list(a.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            try:
                with warnings.catch_warnings():
                    # PEFT still asks transformers 5 for the deprecated `is_gradient_checkpointing`: PEFT's
                    # business, not the user's, so the FutureWarning is not shown to them
                    warnings.filterwarnings(
                        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
                    )
                    peft_model = get_peft_model(lm, self.lora_config, adapter_name=adapter_name)
            except ValueError as exc:
                raise ConfigError(f"adapter.target_modules: {str(exc).splitlines()[0]}") from None
        object.__setattr__(self, "peft_model", peft_model)

    def trainable_parameters(self):
        return [p for p in self.peft_model.parameters() if p.requires_grad]

    def adapter_state(self):
        from peft import get_peft_model_state_dict  # lazy, as above

        state = get_peft_model_state_dict(self.peft_model, adapter_name=self.adapter_name)
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_adapter_state(self, state):
        from peft import set_peft_model_state_dict  # lazy, as above

        result = set_peft_model_state_dict(self.peft_model, state, adapter_name=self.adapter_name)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or missing:
            raise ValueError(
                f"LoRA weights do not match the model: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
            )

    def train(self, mode: bool = True):
        super().train(mode)
        self.peft_model.train(mode)  # LoRA dropout follows the adapter's mode; base stays frozen
        return self

    def disabled(self):
        return self.peft_model.disable_adapter()

    def release(self) -> None:
        self.peft_model.unload()  # removes the LoRA layers, restoring the original modules
