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


@pytest.mark.parametrize("raw, message", [
    ({"adapter": {"mlp_widht": 3}}, "adapter.mlp_widht: unknown key (did you mean 'mlp_width'?)"),
    ({"modle": "x"}, "modle: unknown key (did you mean 'model'?)"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
    ({"train": {"batch_size": 0}}, "train.batch_size: expected a value > 0"),
    ({"method": "magic"}, "method: expected one of baseline, prompt, injection, prefix, lora"),
    ({"data": {"seq_len": 16}, "adapter": {"context_tokens": 16}}, "adapter.context_tokens: must be smaller than data.seq_len"),
    ({"adapter": {"embed_source": "future"}}, "adapter.embed_source: expected one of window, context, previous"),
    ({"train": {"progress": "yes"}}, "train.progress: expected true or false"),
    ({"data": {"where": "label"}}, "data.where: expected field=value"),
    ({"method": "lora", "adapter": {"deep_layers": 2}}, "adapter.deep_layers: deep prompts are a variant of the prompt method"),
    ({"method": "prefix", "train": {"gradient_checkpointing": True}}, "train.gradient_checkpointing: not available for the prefix"),
    ({"data": {"target_template": "{answer}"}}, "data.target_template: prompt/target examples are not supported by the injection"),
    ({"method": "prompt", "data": {"prompt_template": "Q:"}}, "data.prompt_template: only used together with data.target_template"),
    ({"adapter": {"init": "interpolate"}}, "adapter.init_text_b: the interpolate prior needs two texts"),
    ({"method": "prompt", "adapter": {"inject_into": "kv"}}, "adapter.inject_into: a setting of the injection method"),
    ({"adapter": {"inject_into": "kv"}, "train": {"gradient_checkpointing": True}},
     "train.gradient_checkpointing: not available with adapter.inject_into: kv"),
    ({"train": {"distill": 1.0}}, "train.distill: the teacher is the frozen LM reading the text before each window"),
    ({"adapter": {"encoder_rank": 4}}, "adapter.encoder_rank: trains the LM as its own encoder; set adapter.embedding_model: lm-hidden:N"),
    ({"method": "prefix", "adapter": {"ablation": "constant"}}, "adapter.ablation: a control of the injection method"),
    ({"adapter": {"ablation": "shuffled", "encoder_rank": 2, "embedding_model": "lm-hidden:1"}},
     "adapter.ablation: a shuffled input leaves the encoder nothing to learn from the text"),
    ({"adapter": {"encoder_rank": 4, "embedding_model": "lm-hidden:0"}}, "adapter.encoder_rank: trains the LM as its own encoder"),
    ({"method": "prompt", "adapter": {"encoder_rank": 4}}, "adapter.encoder_rank: LoRA on the injection encoder's pass, not a setting of prompt"),
    ({"adapter": {"encoder_rank": 4, "embedding_model": "lm-hidden:2", "pooling": "resampler"}}, "adapter.encoder_rank: takes adapter.pooling mean or chunks"),
])
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
    return subprocess.run([sys.executable, "-m", "embinject.train", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, expected", [
    (["--set", "adapter.mlp_widht=3"], "adapter.mlp_widht: unknown key"),
    (["missing.yaml"], "missing.yaml: config file not found"),
    (["--set", "data.path=/nonexistent/data.jsonl"], "data.path: /nonexistent/data.jsonl does not exist"),
    (["--set", "method=nope"], "method: expected one of"),
    (["--set", "model=/nonexistent/model"], "model: /nonexistent/model does not exist"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, args, expected):
    out = tmp_path / "out"
    proc = run_cli(*args, "--output-dir", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert lines[-1].startswith("error: ") and expected in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_cli_unknown_encoder_and_empty_data(tmp_path, tiny_model):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "too short"}\n{"text": "also short"}\n')
    out = tmp_path / "out"
    proc = run_cli("--set", f"model={tiny_model}", "--set", f"data.path={empty}", "--output-dir", str(out))
    assert proc.returncode == 2 and "data.path: the train split has no windows" in proc.stderr, proc.stderr
    proc = run_cli("--set", f"model={tiny_model}", "--set", "adapter.embedding_model=/no/such/encoder", "--output-dir", str(out))
    assert proc.returncode == 2 and "adapter.embedding_model: /no/such/encoder does not exist" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    # a trained encoder (adapter.encoder_rank) on a layer the model lacks, or with no target module in its layers
    lora = ["--set", f"model={tiny_model}", "--set", "adapter.encoder_rank=2", "--set", "adapter.embed_source=previous"]
    for extra, expected in ((["--set", "adapter.embedding_model=lm-hidden:9"],
                             "error: adapter.embedding_model: lm-hidden:9 is not a layer of this model (0 to 2)"),
                            (["--set", "adapter.embedding_model=lm-hidden:1", "--set", "adapter.target_modules=[nope]"],
                             "error: adapter.target_modules: none of ['nope'] is a linear layer in the LM's first 1 layers")):
        proc = run_cli(*lora, *extra, "--output-dir", str(out))
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        assert proc.returncode == 2 and lines[-1].startswith(expected), proc.stderr
        assert "Traceback" not in proc.stderr and not out.exists()


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [1,\n")
    proc = run_cli(str(bad), "--output-dir", str(tmp_path / "o"))
    assert proc.returncode == 2 and "bad.yaml" in proc.stderr and "not valid YAML" in proc.stderr
