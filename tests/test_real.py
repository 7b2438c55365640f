"""The real path: bundled SmolLM2-135M (GGUF -> cached safetensors), bundled all-MiniLM-L6-v2,
real shared data. Budgets are small (2 CPU cores) but nothing here is mocked."""

import json
from pathlib import Path

import pytest
import torch

from embinject.config_files import load_config
from embinject.methods import build_method
from embinject.methods.peft_layout import write_peft
from embinject.models import checkpoint_problem, load_frozen_lm, resolve_model_path
from embinject.train import prepare, train
from embinject.train.__main__ import main
from embinject.train.packing import packed_nll

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def wiki(shared_data):
    return str(shared_data / "wikipedia_en_sample")


def test_bundled_model_loads_frozen_from_safetensors_cache():
    lm = load_frozen_lm("bundled:smollm2-135m")
    assert lm.dim == 576 and lm.model.config.num_hidden_layers == 30
    assert all(not p.requires_grad for p in lm.model.parameters())
    assert any(p.name.endswith(".safetensors") for p in __import__("pathlib").Path(lm.path).iterdir())


@pytest.mark.parametrize("method", ["baseline", "prompt", "injection", "prefix", "lora"])
def test_cli_trains_each_method_on_bundled_model_and_shared_data(tmp_path, wiki, method):
    out = tmp_path / method
    code = main(
        [
            "--set",
            f"method={method}",
            "--set",
            f"data.path={wiki}",
            "--set",
            "data.seq_len=32",
            "--set",
            "data.train_samples=16",
            "--set",
            "data.val_samples=8",
            "--set",
            "train.batch_size=4",
            "--set",
            "train.max_steps=2",
            "--set",
            "train.progress=false",
            "--set",
            "adapter.prefix_len=2",
            "--set",
            "adapter.mlp_width=64",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    for key in (
        "method",
        "model",
        "embedding_model",
        "embed_source",
        "trainable_params",
        "total_params",
        "baseline_perplexity",
        "val_perplexity",
        "best_epoch",
        "epochs_run",
        "train_seconds",
        "tokens_per_second",
        "history",
    ):
        assert key in result
    assert result["method"] == method and result["embed_source"] == "context"
    assert 1 < result["baseline_perplexity"] < 1000
    assert (out / "adapter" / "embinject.json").is_file()
    if method != "baseline":
        assert len(result["history"]) >= 1 and result["trainable_params"] > 0
    if method == "injection":
        assert result["embedding_model"] == "bundled:all-minilm-l6-v2"


@pytest.mark.parametrize("method", ["prompt", "injection"])
def test_a_few_steps_lower_real_validation_perplexity(wiki, method):
    cfg = load_config(
        None,
        [
            f"method={method}",
            f"data.path={wiki}",
            "data.seq_len=32",
            "data.train_samples=96",
            "data.val_samples=24",
            "train.batch_size=8",
            "train.max_steps=12",
            "train.eval_every=6",
            "train.lr=3e-3",
            "train.progress=false",
            "adapter.prefix_len=4",
            "adapter.mlp_width=128",
            "adapter.context_tokens=8",
        ],
    )
    result, trained = train(cfg)
    assert result["val_perplexity"] < result["baseline_perplexity"]
    trained.release()


REAL_POINTS = [  # one trial per encoder the quickstart space offers; the first is its own points_to_evaluate trial
    {
        "train.lr": 1.0e-3,
        "adapter.prefix_len": 2,
        "adapter.mlp_width": 512,
        "adapter.embedding_model": "bundled:all-minilm-l6-v2",
    },
    {"train.lr": 3.0e-3, "adapter.prefix_len": 5, "adapter.mlp_width": 256, "adapter.embedding_model": "fourier"},
    {"train.lr": 2.0e-3, "adapter.prefix_len": 6, "adapter.mlp_width": 64, "adapter.embedding_model": "lm-mean"},
]


def _real_search(tmp_path, shared_data, pack: str) -> dict:
    """The quickstart search on the real bundled SmolLM2 + encoders, one short trial per encoder: each trial's
    validation curve ({step: perplexity}) by its searched values."""
    from .test_tune import _results, read_mlflow, run_tune

    storage = tmp_path / f"runs-{pack}"
    proc = run_tune(
        "search_spaces/quickstart.yaml",
        "--set",
        f"tune.storage_path={storage}",
        "--set",
        "tune.num_samples=3",
        "--set",
        "train.max_steps=4",
        "--set",
        "train.eval_every=2",
        "--set",
        "tune.scheduler.type=none",
        "--set",
        "train.dtype=float32",
        "--set",
        f"tune.pack={pack}",
        # the three trials at once in both arms: one round of process start-ups, not two
        "--set",
        "tune.max_concurrent_trials=3",
        "--set",
        "tune.resources.cpus=0.5",
        "--set",
        f"tune.points_to_evaluate={json.dumps(REAL_POINTS)}",
        "--set",
        "mlflow.register_as=null",
        "--set",
        "data.train_samples=64",
        "--set",
        "data.val_samples=16",
        "--set",
        f"data.path={shared_data / 'fineweb_edu_sample'}",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "best trial" in proc.stdout
    _, parents, children = read_mlflow(f"sqlite:///{storage / 'mlflow.db'}", "embinject-quickstart")
    assert len(parents) == 1 and len(children) == 3
    assert all(c.data.metrics["val_perplexity"] < 10 * c.data.metrics["baseline_perplexity"] for c in children)
    curves = {}
    for trial in storage.glob("quickstart-*/trial_*"):
        rows = _results(trial)
        curves[rows[0]["config"]["adapter.embedding_model"]] = {r["step"]: r["val_perplexity"] for r in rows}
    return curves


def test_real_search_on_bundled_models_packed_equals_unpacked(tmp_path, shared_data):
    """Each encoder's trial (the points_to_evaluate one among them) trained in a pack of three through the real
    search follows its unpacked run on the real model: float32, 1e-4 relative at every evaluation. Over these few
    steps rounding differences stay far below that; over long runs at high rates they grow, as much as between two
    unpacked runs at different thread counts (benchmarks.pack_exactness)."""
    alone, packed = _real_search(tmp_path, shared_data, "off"), _real_search(tmp_path, shared_data, "3")
    assert set(alone) == set(packed) == {p["adapter.embedding_model"] for p in REAL_POINTS}
    for encoder, curve in alone.items():
        assert set(packed[encoder]) == set(curve) == {2, 4}
        for step, ppl in curve.items():
            assert abs(packed[encoder][step] - ppl) < 1e-4 * ppl, (encoder, step, ppl, packed[encoder][step])


def test_a_packed_step_on_the_bundled_model_gives_each_encoder_its_solo_gradient(wiki):
    """One packed step of one trial per encoder (the real SmolLM2, MiniLM, fourier features, the LM's own mean
    states; prefixes of different lengths): each trial's loss and gradients are its step alone, to float32 rounding."""
    members = []
    for point in REAL_POINTS:
        cfg = load_config(
            None,
            [
                f"data.path={wiki}",
                "data.seq_len=32",
                "data.train_samples=8",
                "data.val_samples=8",
                "adapter.embed_source=context",
                "adapter.context_tokens=8",
                "adapter.inject_tokens=1",
                "train.batch_size=4",
                "train.dtype=float32",
            ]
            + [f"{k}={v}" for k, v in point.items()],
        )
        prep = prepare(cfg)
        method = build_method(cfg, prep.lm.model, prep.encoder_dim, prep.lm.tokenizer)
        rows = torch.arange(4)  # an indexed copy: cached embeddings are inference tensors, which autograd refuses
        members.append((method, {k: v[rows] for k, v in prep.train.items()}))
    packed = packed_nll(members)
    sum(nll / n for nll, n in packed).backward()
    for (method, batch), (nll, n), point in zip(members, packed, REAL_POINTS):
        grads = [p.grad.clone() for p in method.trainable_parameters()]
        method.zero_grad(set_to_none=True)
        solo_nll, solo_n = method.nll(batch)
        (solo_nll / solo_n).backward()
        assert n == solo_n and abs(nll.item() - solo_nll.item()) < 1e-6 * solo_nll.item(), point
        for p, g in zip(method.trainable_parameters(), grads):
            assert float((p.grad - g).abs().max()) <= 1e-4 * float(p.grad.abs().max()), point
        method.release()


def test_a_diverging_deep_prefix_stops_at_its_first_evaluation(tmp_path, wiki, capsys):
    """The reference case: a deep prefix with its MLP at train.lr=0.01 on WikiText-2 used to report
    perplexity in the hundreds of thousands as an ordinary result."""
    out = tmp_path / "out"
    code = main(
        [
            "--set",
            "method=prefix",
            "--set",
            "train.lr=0.01",
            "--set",
            f"data.path={wiki}",
            "--set",
            "data.seq_len=64",
            "--set",
            "data.train_samples=32",
            "--set",
            "data.val_samples=16",
            "--set",
            "train.max_steps=8",
            "--set",
            "train.eval_every=2",
            "--set",
            "train.progress=false",
            "--output-dir",
            str(out),
        ]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(err) == 1, err
    assert "training diverged at step 2: validation perplexity" in err[0] and "lower train.lr (now 0.01)" in err[0]
    assert not out.exists()


def test_a_truncated_converted_model_is_named_and_converted_again(tmp_path, monkeypatch, capfd):
    import shutil

    cached = Path(resolve_model_path("bundled:smollm2-135m"))
    cache = tmp_path / "cache"
    shutil.copytree(cached, cache / "models" / cached.name)
    copy = cache / "models" / cached.name
    weights = next(copy.glob("*.safetensors"))
    with weights.open("r+b") as fh:  # as a kill mid-copy would have left it
        fh.truncate(weights.stat().st_size // 3)
    assert checkpoint_problem(copy)
    monkeypatch.setenv("EMBINJECT_CACHE", str(cache))
    capfd.readouterr()
    assert resolve_model_path("bundled:smollm2-135m") == str(copy)
    assert f"warning: cache entry {copy} is corrupt ({weights.name}: " in capfd.readouterr().err
    assert checkpoint_problem(copy) is None and load_frozen_lm("bundled:smollm2-135m").dim == 576


def test_peft_export_of_a_bundled_deep_prefix_names_the_hub_model_and_reproduces_it(tmp_path, wiki):
    """SmolLM2 has grouped-query attention (9 query, 3 key/value heads): PEFT's prefix-tuning layout must be
    reshaped for it. The export names the hub model; here its weights come from the local conversion."""
    import torch
    from huggingface_hub import ModelCard
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = load_config(
        None,
        [
            "method=prefix",
            f"data.path={wiki}",
            "data.seq_len=32",
            "data.train_samples=16",
            "data.val_samples=8",
            "train.batch_size=4",
            "train.max_steps=2",
            "train.progress=false",
            "adapter.prefix_len=3",
            "adapter.mlp_width=32",
            "train.dtype=float32",
        ],
    )
    _, trained = train(cfg)
    out = write_peft(trained, tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "Q4_1" in (out / "README.md").read_text() and config["peft_version"]
    card = ModelCard.load(out / "README.md")  # the Hub's model card form, read back offline
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.library_name == "peft"
    assert "base_model:adapter:HuggingFaceTB/SmolLM2-135M-Instruct" in card.data.tags
    val = prepare(cfg).val
    ids, labels = val["input_ids"][:4], val["labels"][:4]
    with torch.no_grad():
        ours, _ = trained.nll({"input_ids": ids, "labels": labels})
        base = AutoModelForCausalLM.from_pretrained(resolve_model_path("bundled:smollm2-135m"))
        logits = (
            PeftModel.from_pretrained(base, str(out)).eval()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        )
    targets = labels[:, 1:]
    mask = targets != -100
    theirs = torch.nn.functional.cross_entropy(logits[:, :-1][mask].float(), targets[mask], reduction="sum")
    assert float(theirs) == pytest.approx(float(ours), rel=1e-5)
