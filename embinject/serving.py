"""An adapter as an MLflow model (`mlflow.pyfunc`): `mlflow.pyfunc.load_model(...).predict(...)` and
`mlflow models serve` generate text through it, for every method.

The model is saved "from code" (`embinject/mlflow_model.py`, no pickled Python objects) with embinject's
own source as its code path, the adapter (`adapter.safetensors` + `embinject.json`) as an artifact,
and a second adapter for prefix mixing when one is given. The base LM is named in embinject.json by
something anyone can resolve (a hub id or `bundled:...`), never by a machine-local path.

Input: a table with a `prompt` column and, for injection adapters, an optional `context` column (what
the sentence encoder sees; see `adapter.embed_source`). Parameters: max_new_tokens, temperature, top_k,
seed (-1: none), alpha (with a mixing adapter). Output: one `generated_text` per row.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import mlflow.pyfunc
import pandas as pd  # the type hint of `predict`: MLflow reads it when the model is logged
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from .adapters import LoadedAdapter
from .errors import ConfigError
from .fsutil import staged_dir
from .methods import read_adapter_config
from .specs import method_spec

PARAMS = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 0, "seed": -1, "alpha": 1.0}
# What loading the model needs besides embinject's own code (which travels with the model).
REQUIREMENTS = (
    "torch",
    "transformers",
    "accelerate",
    "gguf",
    "peft",
    "safetensors",
    "sentence-transformers",
    "pandas",
    "pyyaml",
    "mlflow",
)


def _requirements() -> list[str]:
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def signature():
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "context", required=False)]),
        outputs=Schema([ColSpec("string", "generated_text")]),
        params=ParamSchema(
            [
                ParamSpec("max_new_tokens", "long", PARAMS["max_new_tokens"]),
                ParamSpec("temperature", "double", PARAMS["temperature"]),
                ParamSpec("top_k", "long", PARAMS["top_k"]),
                ParamSpec("seed", "long", PARAMS["seed"]),
                ParamSpec("alpha", "double", PARAMS["alpha"]),
            ]
        ),
    )


class EmbinjectModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: loads the frozen LM and the adapter once, then generates per request."""

    def load_context(self, context):
        self.adapter = LoadedAdapter(context.artifacts["adapter"])
        mix = context.artifacts.get("mix_adapter")
        self.mix = LoadedAdapter(mix, lm=self.adapter.lm) if mix else None

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """Bad input is an MLflow INVALID_PARAMETER_VALUE error: HTTP 400 from `mlflow models serve`, one line."""
        try:
            return self._predict(model_input, params)
        except ConfigError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None

    def _predict(self, model_input, params: dict | None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "prompt" not in frame:
            raise ConfigError(
                "model input: expected a 'prompt' column (and, for injection adapters, optionally 'context')"
            )
        missing = [i for i, x in enumerate(frame["prompt"]) if not isinstance(x, str)]
        if missing:
            raise ConfigError(
                f"model input: row {missing[0]} has no prompt text (got {frame['prompt'].iloc[missing[0]]!r})"
            )
        p = {**PARAMS, **(params or {})}
        contexts = None
        if "context" in frame:
            contexts = [None if c is None or (isinstance(c, float) and c != c) else str(c) for c in frame["context"]]
        texts = self.adapter.generate(
            list(frame["prompt"]),
            contexts,
            mix=self.mix,
            alpha=float(p["alpha"]),
            max_new_tokens=int(p["max_new_tokens"]),
            temperature=float(p["temperature"]),
            top_k=int(p["top_k"]),
            seed=None if int(p["seed"]) < 0 else int(p["seed"]),
        )
        return pd.DataFrame({"generated_text": texts})


def input_example(adapter_dir: Path):
    cfg = read_adapter_config(adapter_dir)["parsed_config"]
    example = {"prompt": ["The history of the city"]}
    if method_spec(cfg.method).needs_encoder:
        example["context"] = ["The city was founded as a trading post on the river in the twelfth century."]
    return pd.DataFrame(example)


def save_pyfunc(adapter_dir: str | Path, target: str | Path, mix_dir: str | Path | None = None) -> Path:
    """Write the adapter as an MLflow pyfunc model directory (made whole beside `target`, then moved in)."""
    adapter_dir, target = Path(adapter_dir), Path(target)
    artifacts = {"adapter": str(adapter_dir)}
    if mix_dir is not None:
        artifacts["mix_adapter"] = str(mix_dir)
    with staged_dir(target) as staged:
        staged.rmdir()  # MLflow writes a model only into a directory that does not exist yet
        mlflow.pyfunc.save_model(
            str(staged),
            python_model=str(Path(__file__).with_name("mlflow_model.py")),
            artifacts=artifacts,
            code_paths=[str(Path(__file__).parent)],
            signature=signature(),
            input_example=(input_example(adapter_dir), dict(PARAMS)),
            pip_requirements=_requirements(),
        )
    return target
