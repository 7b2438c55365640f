"""Using a trained adapter: find it (a directory, `runs:/...` or `models:/...`), rebuild
it around its frozen LM, and generate text or measure perplexity through it.

This is what `embinject generate`, `embinject evaluate`, `embinject export` and the MLflow pyfunc
model share, so an adapter behaves the same whichever way it is used.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import torch

from .config import Config, config_from_dict
from .config_files import parse_override, resolve_paths, set_dotted
from .encoders import load_encoder, pooling_of
from .errors import ConfigError, first_line
from .fsutil import scratch_dir
from .methods import ADAPTER_CONFIG, REGISTRY, AdapterMethod, load_method, mix_adapters, read_adapter_config
from .models import load_frozen_lm
from .tracking import mlflow_global_uris, open_store, registry_uri_for, tracking_uri_default
from .train import autocast_dtype, baseline_perplexity, prepare, resolve_device, shared_lm
from .train.evaluation import perplexity
from .train.generation import generate
from .train.precision import resolve_dtype


def find_adapter_dir(root: Path) -> Path | None:
    """The shallowest directory below `root` holding an embinject.json (a pyfunc model keeps its
    adapter under artifacts/)."""
    if (root / ADAPTER_CONFIG).is_file():
        return root
    found = sorted(root.rglob(ADAPTER_CONFIG), key=lambda p: len(p.parts))
    return found[0].parent if found else None


@contextlib.contextmanager
def adapter_directory(ref: str, tracking_uri: str | None = None, key: str = "--adapter"):
    """A local adapter directory for `ref` while the block runs: a directory (relative to the current one) as it is,
    or an MLflow URI (`runs:/RUN_ID/PATH`, `models:/NAME@ALIAS`, `models:/NAME/VERSION`) downloaded from the tracking
    store into a scratch directory that is removed afterwards (or by a later command, if this one is killed)."""
    if "://" not in ref and not ref.startswith(("runs:/", "models:/")):
        path = Path(os.path.abspath(os.path.expanduser(ref)))
        if not path.is_dir():
            raise ConfigError(
                f"{key}: {ref} is not a directory (expected an adapter directory, runs:/... or models:/...)"
            )
        found = find_adapter_dir(path)
        if found is None:
            raise ConfigError(
                f"{key}: {path} holds no {ADAPTER_CONFIG}; pass the adapter/ directory that "
                "embinject train or the search's champion/ wrote"
            )
        yield found
        return
    import mlflow  # only for an MLflow URI, and after open_store quiets it (see embinject.tracking.store)
    from mlflow.exceptions import MlflowException  # lazy, as mlflow above

    uri = open_store(tracking_uri or tracking_uri_default(), "--tracking-uri")
    if not sys.stderr.isatty():  # a log gets no progress bars, redrawn dozens of times per download
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    target = scratch_dir("adapter")
    try:
        try:
            # models:/ is resolved through the registry, which MLflow looks up in its global URIs (MLFLOW_TRACKING_URI,
            # else a new ./mlflow.db), not in the URIs passed to download_artifacts: both are this store for the
            # download.
            with mlflow_global_uris(uri, registry_uri_for(uri)):
                local = Path(
                    mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(target), tracking_uri=uri)
                )
        except (MlflowException, OSError) as exc:
            raise ConfigError(
                f"{key}: cannot download {ref} from {uri} ({first_line(exc)[:300]}); check the name and "
                "--tracking-uri (or MLFLOW_TRACKING_URI)"
            ) from None
        found = find_adapter_dir(local if local.is_dir() else local.parent)
        if found is None and not any(f.is_file() for f in (local.rglob("*") if local.is_dir() else [local])):
            # MLflow "downloads" a recorded location that is gone as an empty folder: the artifacts were moved or
            # deleted (a search folder moved elsewhere), which is not an adapter that lacks its embinject.json
            raise ConfigError(
                f"{key}: the artifacts of {ref} are missing at their recorded location "
                f"{recorded_location(ref, uri)} (moved or deleted since they were logged); put them back "
                "there, or log and register the adapter again"
            )
        if found is None:
            raise ConfigError(f"{key}: {ref} holds no {ADAPTER_CONFIG} (not an embinject adapter or model)")
        yield found
    finally:
        shutil.rmtree(target, ignore_errors=True)


def recorded_location(ref: str, uri: str) -> str:
    """Where the tracking store `uri` says the artifacts of a `models:/` or `runs:/` URI lie (a local folder as a path),
    or `ref` itself where it cannot say."""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository  # lazy, as in adapter_directory
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    location = ref
    try:
        with mlflow_global_uris(uri, registry_uri_for(uri)):  # models:/ resolves through MLflow's global URIs
            for _ in range(3):  # a version's source may be a logged model's models:/m-... URI, resolved in turn
                if location.startswith("models:/"):
                    location = ModelsArtifactRepository.get_underlying_uri(location)
                elif location.startswith("runs:/"):
                    location = RunsArtifactRepository.get_underlying_uri(location, uri)
    except Exception:  # the store could not say more: name the URI as given
        return ref
    if location.startswith("file:"):
        return urllib.request.url2pathname(urllib.parse.urlparse(location).path)
    return location


def text_ids(tokenizer, text: str, cfg: Config) -> list[int]:
    """Token ids of a prompt as the adapter saw text in training: prompt/target examples start with BOS,
    text windows are plain slices of tokenised documents."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if cfg.data.target_template is not None or not ids:
        ids = [start, *ids]
    return ids


MAX_NEW_TOKENS = 2048  # per request: a served model must not be asked to generate for minutes on end


def check_generation_settings(max_new_tokens, temperature, top_k) -> None:
    """The generation settings a caller (the command line, a request to the served model) may ask for."""
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or not 1 <= max_new_tokens <= MAX_NEW_TOKENS
    ):
        raise ConfigError(f"max_new_tokens: expected a whole number from 1 to {MAX_NEW_TOKENS}, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature: expected a number >= 0 (0: greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ConfigError(f"top_k: expected a whole number >= 0 (0: all tokens), got {top_k!r}")


class LoadedAdapter:
    """A saved adapter rebuilt around its frozen LM, with its encoder (injection) loaded on first use."""

    def __init__(self, directory: str | Path, device: str = "cpu", lm=None, source: str | None = None):
        directory = Path(directory)  # read here only: load_adapter removes a download once this returns
        self.source = source or str(directory)  # as the user named it (models:/NAME@champion), for what we print
        self.meta = read_adapter_config(directory)
        self.cfg: Config = self.meta["parsed_config"]
        self.device = resolve_device(device)
        if REGISTRY[self.cfg.method].changes_lm:
            # its layers go into the LM it loads into: a private copy, so that the other adapters of this process
            # (a second MLflow model, a --mix) keep reading the frozen LM
            self.lm = load_frozen_lm(self.cfg.model, device=self.device)
        else:
            self.lm = lm or shared_lm(self.cfg.model, self.device)
        self.method: AdapterMethod = load_method(directory, self.lm.model, self.lm.tokenizer)
        self._encoder = None

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def close(self) -> None:
        self.method.release()

    # ---- injection: what the encoder sees
    def _encoder_for_generation(self):
        if self._encoder is None:
            a = self.cfg.adapter
            # an adapter that trained its encoder (adapter.encoder_rank) carries it; others load the frozen one
            self._encoder = getattr(self.method, "text_encoder", None) or load_encoder(
                a.embedding_model,
                self.lm.model,
                self.tokenizer,
                self.lm.path,
                a.fourier_features,
                self.device,
                pooling_of(a),
            )
        return self._encoder

    def encoder_text_ids(self, prompt_ids: list[int], context: str | None) -> list[int]:
        """What the encoder of an injection adapter sees: `context` when given, otherwise what it saw in
        training for this prompt (the first context_tokens tokens, or the prompt itself)."""
        a = self.cfg.adapter
        if a.ablation != "none":
            raise ConfigError(
                f"{self.source}: a control adapter (adapter.ablation: {a.ablation}) was trained on inputs "
                "that are not the text's; it scores with `evaluate`, it does not generate from a text"
            )
        if context is not None and context != "":
            return self.tokenizer(context, add_special_tokens=False)["input_ids"] or prompt_ids
        if a.embed_source == "previous":
            raise ConfigError(
                "--context: this injection adapter was trained with adapter.embed_source: previous "
                "(its encoder reads the text before the prompt); give that text as context"
            )
        if a.embed_source == "context":
            return prompt_ids[: a.context_tokens]
        return prompt_ids

    def sentence_embeddings(self, prompts: list[list[int]], contexts: list[str | None]) -> torch.Tensor:
        encoder = self._encoder_for_generation()
        rows = [
            encoder.encode(torch.tensor([self.encoder_text_ids(p, c)], dtype=torch.long))
            for p, c in zip(prompts, contexts)
        ]
        if rows[0].dim() == 3:  # token states (a resampler's): texts of other lengths, padded (presence channel 0)
            longest = max(r.shape[1] for r in rows)
            rows = [torch.nn.functional.pad(r, (0, 0, 0, longest - r.shape[1])) for r in rows]
        return torch.cat(rows).float()

    # ---- generation
    def generate(
        self,
        prompts: list[str],
        contexts: list[str | None] | None = None,
        *,
        mix: "LoadedAdapter | None" = None,
        alpha: float = 1.0,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> list[str]:
        """Text continuing each prompt. `mix` blends this adapter with another one of the same shape
        (alpha * this + (1 - alpha) * mix)."""
        if not 0.0 <= alpha <= 1.0 or (alpha != 1.0 and mix is None):
            raise ConfigError(
                "--alpha: a number between 0 and 1, used together with --mix"
                if mix is None
                else f"--alpha: expected a number between 0 and 1, got {alpha}"
            )
        if mix is not None and mix.cfg.model != self.cfg.model:
            raise ConfigError(
                f"--mix: the adapters were trained on different models ({self.cfg.model} and {mix.cfg.model})"
            )
        check_generation_settings(max_new_tokens, temperature, top_k)
        method = self.method if mix is None else mix_adapters(self.method, mix.method, alpha)
        ids = [text_ids(self.tokenizer, p, self.cfg) for p in prompts]
        context = getattr(self.lm.model.config, "max_position_embeddings", None)
        longest = max((len(i) for i in ids), default=0)
        if context and longest + max_new_tokens > context:
            raise ConfigError(
                f"prompt: {longest} tokens plus max_new_tokens {max_new_tokens} exceed the model's context of "
                f"{context} tokens; shorten the prompt or ask for fewer new tokens"
            )
        contexts = list(contexts) if contexts is not None else [None] * len(prompts)
        extra = None
        if method.needs_encoder:
            extra = {"sentence_embedding": self.sentence_embeddings(ids, contexts)}
        eos = self.tokenizer.eos_token_id
        out = generate(
            method,
            ids,
            max_new_tokens,
            eos_id=eos,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            device=self.device,
            extra=extra,
        )
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in out]

    # ---- evaluation
    def evaluate(self, overrides: list[str] = ()) -> dict:
        """Perplexity of this adapter (and of the frozen model) on the validation windows of its own data,
        or of other data given as config overrides (e.g. data.path=...), scored exactly as in training."""
        raw = self.cfg.to_dict()
        for text in overrides:
            key, value = parse_override(text)
            if not key.startswith(
                (
                    "data.",
                    "train.eval_batch_size",
                    "train.dtype",
                    "train.device",
                    "adapter.embed_source",
                    "adapter.context_tokens",
                )
            ):
                raise ConfigError(
                    f"--set {key}: evaluate takes data.*, train.eval_batch_size, train.dtype and train.device "
                    "(the adapter's own settings come from its embinject.json)"
                )
            set_dotted(raw, key, value)
        cfg = config_from_dict(resolve_paths(raw)).validate()
        prep = prepare(cfg)
        with self.method.disabled():  # the frozen model alone (a LoRA adapter lives inside the LM object)
            base = baseline_perplexity(prep, cfg)
        ppl = perplexity(
            self.method, prep.val, cfg.train.eval_batch_size, prep.device, autocast_dtype(cfg, prep.device)
        )
        return {
            "adapter": self.source,
            "method": cfg.method,
            "model": cfg.model,
            "data": cfg.data.path,
            "dtype": resolve_dtype(cfg.train.dtype, prep.device),
            "val_windows": len(prep.val["input_ids"]),
            "scored_tokens": int((prep.val["labels"][:, 1:] != -100).sum()),
            "val_perplexity": ppl,
            "baseline_perplexity": base,
            "improvement_percent": 100.0 * (1 - ppl / base),
        }


def load_adapter(
    ref: str, tracking_uri: str | None = None, device: str = "cpu", key: str = "--adapter", lm=None
) -> LoadedAdapter:
    """The adapter `ref` names (see adapter_directory), loaded; a download is removed once its weights are read."""
    with adapter_directory(ref, tracking_uri, key) as directory:
        return LoadedAdapter(directory, device=device, lm=lm, source=ref)


__all__ = ["LoadedAdapter", "adapter_directory", "load_adapter", "text_ids"]
