"""A model with another model's architecture and tokenizer but random weights, for timing only.

    python -m benchmarks.shape_model SOURCE_DIR TARGET_DIR

SOURCE_DIR needs only config.json and the tokenizer files (a few MB), so it travels where the weights
cannot (the lent GPU machine takes 64 MiB per call; SmolLM2-135M is 538 MB). Step time depends on the
shapes, not on the values, so the GPU rows of benchmarks/RESULTS.md are timed on such a model;
perplexities measured on it mean nothing and are not reported.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def model_label(spec: str) -> str:
    """A model as a results file names it: a local directory (often a temporary shape model) by its folder name,
    not by this machine's path; bundled names and hub ids as given."""
    path = Path(spec)
    return path.name if path.is_absolute() or path.is_dir() else spec


def make_shape_model(source: Path, target: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)  # safetensors
    for f in source.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy(f, target / f.name)
    return target


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path)
    p.add_argument("target", type=Path)
    args = p.parse_args(argv)
    print(make_shape_model(args.source, args.target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
