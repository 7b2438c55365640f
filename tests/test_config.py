import subprocess
import sys

import pytest

from embinject.config import config_from_dict
from embinject.config_files import load_config
from embinject.errors import ConfigError

from .conftest import ROOT


def test_defaults_are_valid():
    cfg = load_config(None)
    assert cfg.method == "injection" and cfg.adapter.embed_source == "context"


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"adapter": {"mlp_widht": 3}}, "adapter.mlp_widht: unknown key (did you mean 'mlp_width'?)"),
        ({"modle": "x"}, "modle: unknown key (did you mean 'model'?)"),
        ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
        ({"train": {"batch_size": 0}}, "train.batch_size: expected a value > 0"),
        ({"method": "magic"}, "method: expected one of baseline, prompt, injection, prefix, lora"),
        (
            {"data": {"seq_len": 16}, "adapter": {"context_tokens": 16}},
            "adapter.context_tokens: must be smaller than data.seq_len",
        ),
        ({"adapter": {"embed_source": "future"}}, "adapter.embed_source: expected one of window, context, previous"),
        ({"train": {"progress": "yes"}}, "train.progress: expected true or false"),
        ({"data": {"where": "label"}}, "data.where: expected field=value"),
        (
            {"method": "lora", "adapter": {"deep_layers": 2}},
            "adapter.deep_layers: deep prompts are a variant of the prompt method",
        ),
        (
            {"method": "prefix", "train": {"gradient_checkpointing": True}},
            "train.gradient_checkpointing: not available for the prefix",
        ),
        (
            {"data": {"target_template": "{answer}"}},
            "data.target_template: prompt/target examples are not supported by the injection",
        ),
        (
            {"method": "prompt", "data": {"prompt_template": "Q:"}},
            "data.prompt_template: only used together with data.target_template",
        ),
        ({"adapter": {"init": "interpolate"}}, "adapter.init_text_b: the interpolate prior needs two texts"),
        (
            {"method": "prompt", "adapter": {"inject_into": "kv"}},
            "adapter.inject_into: a setting of the injection method",
        ),
        (
            {"adapter": {"inject_into": "kv"}, "train": {"gradient_checkpointing": True}},
            "train.gradient_checkpointing: not available with adapter.inject_into: kv",
        ),
        (
            {"train": {"distill": 1.0}},
            "train.distill: the teacher is the frozen LM reading the text before each window",
        ),
        (
            {"adapter": {"encoder_rank": 4}},
            "adapter.encoder_rank: trains the LM as its own encoder; set adapter.embedding_model: lm-hidden:N",
        ),
        (
            {"method": "prefix", "adapter": {"ablation": "constant"}},
            "adapter.ablation: a control of the injection method",
        ),
        (
            {"adapter": {"ablation": "shuffled", "encoder_rank": 2, "embedding_model": "lm-hidden:1"}},
            "adapter.ablation: a shuffled input leaves the encoder nothing to learn from the text",
        ),
        (
            {"adapter": {"encoder_rank": 4, "embedding_model": "lm-hidden:0"}},
            "adapter.encoder_rank: trains the LM as its own encoder",
        ),
        (
            {"method": "prompt", "adapter": {"encoder_rank": 4}},
            "adapter.encoder_rank: LoRA on the injection encoder's pass, not a setting of prompt",
        ),
        (
            {"adapter": {"encoder_rank": 4, "embedding_model": "lm-hidden:2", "pooling": "resampler"}},
            "adapter.encoder_rank: takes adapter.pooling mean, chunks or recent",
        ),
    ],
)
def test_bad_values_name_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert str(err.value).startswith(message)


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["train.lr=3e-4", "adapter.target_modules=[q_proj,k_proj]", "train.max_steps=null"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.adapter.target_modules == ["q_proj", "k_proj"]
    assert cfg.train.max_steps is None


def run_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "embinject.train", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [1,\n")
    proc = run_cli(str(bad), "--output-dir", str(tmp_path / "o"))  # a real process: its exit code and its whole stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "bad.yaml" in lines[0] and "not valid YAML" in lines[0] and not (tmp_path / "o").exists()
    # every other bad input to `embinject.train`, in this process: test_bad_input.py


# Names around each of MLflow's rules: separators, paths, blanks (unicode ones too), quotes, length limits.
MODEL_NAMES = [
    "team/adapter",
    "a:b",
    "adapter",
    "my adapter",
    "bob's adapter",
    'say "hi"',
    "ünïcode-名前",
    "",
    " ",
    "\t",
    "\u3000",
    ".",
    "..",
    "..a",
    "a..",
    ".a",
    "a.",
    "a.b",
    "./a",
    "a/",
    "/a",
    "a\\b",
    "a%b",
    "-",
    "a\nb",
    "x" * 300,
    "a//b",
    "C:\\x",
    "a b ",
]
EXPERIMENT_NAMES = ["", " ", "embinject", "a/b", "a:b", "..", "名前", "x" * 500, "x" * 501, "x" * 2000]


def test_the_names_config_validation_refuses_are_those_mlflow_refuses():
    """embinject's copies of MLflow's name rules (the config layer does not import MLflow) against MLflow's own
    validators: an MLflow whose rule changes fails here, not at the end of somebody's search."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_experiment_name, _validate_model_name

    from embinject.mlflow_names import experiment_name_problem, registered_model_name_problem

    def refused(validator, name) -> bool:
        try:
            validator(name)
        except MlflowException:
            return True
        return False

    for names, ours, theirs in (
        (MODEL_NAMES, registered_model_name_problem, _validate_model_name),
        (EXPERIMENT_NAMES, experiment_name_problem, _validate_experiment_name),
    ):
        differ = [n for n in names if (ours(n) is not None) != refused(theirs, n)]
        assert not differ, (ours.__name__, differ)
    assert refused(_validate_model_name, "team/adapter") and not refused(_validate_model_name, "team-adapter")


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "register_as",
            "team/adapter",
            "mlflow.register_as: MLflow refuses '/' and ':' in a registered model name, got "
            "'team/adapter' (try 'team-adapter')",
        ),
        (
            "register_as",
            "a:b",
            "mlflow.register_as: MLflow refuses '/' and ':' in a registered model name, got 'a:b' (try 'a-b')",
        ),
        ("register_as", "..", "mlflow.register_as: MLflow refuses a registered model name that reads as a path"),
        ("register_as", " ", "mlflow.register_as: MLflow refuses an empty registered model name"),
        ("experiment", "", "mlflow.experiment: MLflow refuses an empty experiment name"),
        (
            "experiment",
            "x" * 501,
            "mlflow.experiment: MLflow refuses experiment names longer than 500 characters, got 501",
        ),
    ],
)
def test_mlflow_names_are_checked_with_the_settings(key, value, message):
    from embinject.fields import settings_from_dict
    from embinject.search_settings import MlflowSettings

    with pytest.raises(ConfigError) as err:
        settings_from_dict(MlflowSettings, {key: value}, "mlflow")
    assert str(err.value) == message or str(err.value).startswith(message)
    assert settings_from_dict(MlflowSettings, {key: "bob's adapter"}, "mlflow")  # a name MLflow takes passes
