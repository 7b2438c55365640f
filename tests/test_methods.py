"""Each method on the tiny random Llama: frozen base, zero states, scoring, persistence."""

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks import gpu_share, step as step_benchmark
from benchmarks.packing import make_trials, max_grad_difference
from benchmarks.report import HERE as BENCHMARKS, gpu_section
from benchmarks.shape_model import make_shape_model
from embinject.adapters import load_adapter
from embinject.config_files import load_config
from embinject.data import build_windows, select_windows
from embinject.encoders import (
    FourierEncoder,
    Pooling,
    chunk_bounds,
    chunk_mean,
    encoder_key,
    lm_layer_states,
    load_encoder,
)
from embinject.errors import ConfigError
from embinject.methods import REGISTRY, build_method, load_method, mix_prefixes
from embinject.methods.injection import Injection, Resampler
from embinject.models import load_frozen_lm, tokenizer_fingerprint
from embinject.train import autocast_dtype, eval_subset, precision, prepare, train
from embinject.train.distill import TEACHER_INDEX, TEACHER_LOGP, distill_kl
from embinject.train.evaluation import perplexity, window_nll
from embinject.train.generation import generate
from embinject.specs import METHOD_SPECS
from embinject.train.steps import SoloSteps
import embinject.train.loop as T

from .conftest import ROOT

METHODS = list(METHOD_SPECS)  # every registered method: a new one (its module and its spec) is tested here too


def cfg_for(overrides, method, *extra):
    return load_config(None, [*overrides, f"method={method}", *extra])


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", METHODS)
def test_base_model_frozen_and_unchanged(tiny_overrides, method):
    cfg = cfg_for(tiny_overrides, method)
    prep = prepare(cfg)
    before = snapshot(prep.lm.model)
    result, trained = train(cfg, prepared=prep)
    try:
        base_params = [(n, p) for n, p in prep.lm.model.named_parameters() if "lora_" not in n]
        assert all(not p.requires_grad for _, p in base_params)
        grads = [p for p in trained.trainable_parameters()]
        assert result["trainable_params"] == sum(p.numel() for p in grads)
        if method != "baseline":
            assert result["trainable_params"] > 0 and all(p.requires_grad for p in grads)
            # trainable_params counts exactly the tensors that receive gradients
            batch = {k: v[:4] for k, v in prep.train.items()}
            nll, _ = trained.nll(batch)
            nll.backward()
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in grads)
    finally:
        trained.release()
    after = snapshot(prep.lm.model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_lora_run_stopped_inside_its_report_leaves_the_shared_lm_as_it_was(tiny_overrides):
    """Ray stops a trial by raising SystemExit inside its report (ASHA's stop, the end of a search): the LoRA layers
    that run put into the LM this process shares must go with it, or a warm worker's next trial trains on them."""
    cfg = cfg_for(tiny_overrides, "lora")
    prep = prepare(cfg)
    before = snapshot(prep.lm.model)

    def stopped(metrics, write_checkpoint):
        raise SystemExit(0)

    with pytest.raises(SystemExit):
        train(cfg, report=stopped, prepared=prep)
    assert not [n for n, _ in prep.lm.model.named_modules() if "lora" in n.lower()]
    after = snapshot(prep.lm.model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def manual_perplexity(model, ids, labels):
    """exp(mean NLL) of next-token predictions, straight from the model's logits."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != -100
    logp = F.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return math.exp(-(logp[mask]).mean().item()), int(mask.sum())


@pytest.mark.parametrize("source", ["window", "context", "previous"])
def test_baseline_perplexity_matches_direct_computation(tiny_overrides, source):
    cfg = cfg_for(tiny_overrides, "baseline", f"adapter.embed_source={source}", "train.dtype=float32")
    result, _ = train(cfg)
    prep = prepare(cfg)
    expected, n = manual_perplexity(prep.lm.model, prep.val["input_ids"], prep.val["labels"])
    assert result["baseline_perplexity"] == pytest.approx(expected, rel=1e-5)
    T = cfg.data.seq_len
    scored = T - cfg.adapter.context_tokens if source == "context" else T - 1
    assert n == scored * len(prep.val["input_ids"])
    assert result["scored_tokens_per_window"] == scored


def test_context_mode_scores_exactly_the_tokens_after_the_context(tiny_overrides):
    cfg = cfg_for(tiny_overrides, "injection", "adapter.embed_source=context", "adapter.context_tokens=8")
    prep = prepare(cfg)
    labels = prep.val["labels"]
    assert (labels[:, :8] == -100).all() and (labels[:, 8:] == prep.val["input_ids"][:, 8:]).all()
    method = build_method(cfg, prep.lm.model, prep.encoder_dim, prep.lm.tokenizer)
    batch = {k: v[:4] for k, v in prep.val.items()}
    _, count = method.nll(batch)
    assert count == 4 * (cfg.data.seq_len - 8)
    # the encoder saw only the context: changing a scored token leaves the embedding unchanged
    enc = FourierEncoder(len(prep.lm.tokenizer), cfg.adapter.fourier_features)
    ids = batch["input_ids"].clone()
    ids[:, 20] = (ids[:, 20] + 1) % len(prep.lm.tokenizer)
    assert torch.allclose(enc.encode(ids[:, :8]), batch["sentence_embedding"], atol=1e-6)


def test_per_window_nll_adds_up_to_the_perplexity(tiny_overrides):
    """window_nll (what paired statistics over windows use) is the same numbers as perplexity, split by window."""
    import math

    cfg = cfg_for(tiny_overrides, "injection", "adapter.embed_source=context", "train.dtype=float32")
    prep = prepare(cfg)
    method = build_method(cfg, prep.lm.model, prep.encoder_dim, prep.lm.tokenizer)
    nll, count = window_nll(method, prep.val, 7)  # a batch size that splits the windows unevenly
    assert nll.shape == count.shape == (len(prep.val["input_ids"]),)
    assert (count == cfg.data.seq_len - cfg.adapter.context_tokens).all()
    assert math.exp(float(nll.sum()) / int(count.sum())) == pytest.approx(perplexity(method, prep.val, 32), rel=1e-5)
    method.release()


def test_previous_mode_uses_preceding_text_of_the_same_document(tiny_overrides):
    cfg = cfg_for(tiny_overrides, "injection", "adapter.embed_source=previous")
    prep = prepare(cfg)
    train_w, _ = build_windows(cfg.data, prep.lm.tokenizer, tokenizer_fingerprint(prep.lm.tokenizer))
    assert train_w.has_previous.any() and not train_w.has_previous.all()
    # every window with a predecessor: its previous window is the text right before it
    docs = prep.lm.tokenizer.batch_decode(train_w.previous[train_w.has_previous][:3])
    assert all(len(d) > 0 for d in docs)
    assert len(prep.val["input_ids"]) <= int(train_w.has_previous.sum())


def test_lora_starts_identical_and_disabling_restores_base(tiny_overrides):
    cfg = cfg_for(tiny_overrides, "lora", "adapter.target_modules=[q_proj,v_proj,o_proj]")
    lm = load_frozen_lm(cfg.model)
    ids = torch.randint(0, 500, (2, 16))
    with torch.no_grad():
        base = lm.model(input_ids=ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # PEFT's deprecated transformers call is not the user's concern
        method = build_method(cfg, lm.model)
    with torch.no_grad():
        assert torch.equal(lm.model(input_ids=ids).logits, base)
        for p in method.trainable_parameters():  # move away from the zero state
            p.add_(torch.randn_like(p) * 0.1)
        changed = lm.model(input_ids=ids).logits
        assert (changed - base).abs().max() > 1e-4
        with method.peft_model.disable_adapter():
            assert torch.equal(lm.model(input_ids=ids).logits, base)
    method.release()
    with torch.no_grad():
        assert torch.equal(lm.model(input_ids=ids).logits, base)


def test_prefix_masked_out_matches_base(tiny_overrides):
    cfg = cfg_for(tiny_overrides, "prefix")
    lm = load_frozen_lm(cfg.model)
    method = build_method(cfg, lm.model, tokenizer=lm.tokenizer)
    ids = torch.randint(0, 500, (2, 16))
    with torch.no_grad():
        base = lm.model(input_ids=ids).logits
        past = method.past_key_values({"input_ids": ids})
        P = past.get_seq_length()
        mask = torch.cat([torch.zeros(2, P, dtype=torch.long), torch.ones(2, 16, dtype=torch.long)], dim=1)
        masked = lm.model(input_ids=ids, past_key_values=past, attention_mask=mask).logits
        assert (masked - base).abs().max() < 1e-4
        past = method.past_key_values({"input_ids": ids})
        unmasked = lm.model(input_ids=ids, past_key_values=past).logits
        assert (unmasked - base).abs().max() > 1e-4


def test_prefix_mixing_interpolates(tiny_overrides):
    cfg_a = cfg_for(tiny_overrides, "prefix", "adapter.mlp_width=0", "train.seed=1")
    cfg_b = cfg_for(tiny_overrides, "prefix", "adapter.mlp_width=0", "train.seed=2")
    lm = load_frozen_lm(cfg_a.model)
    a, b = build_method(cfg_a, lm.model, tokenizer=lm.tokenizer), build_method(cfg_b, lm.model, tokenizer=lm.tokenizer)
    assert torch.allclose(mix_prefixes(a, b, 1.0).prefix_kv(), a.prefix_kv())
    assert torch.allclose(mix_prefixes(a, b, 0.0).prefix_kv(), b.prefix_kv())
    half = mix_prefixes(a, b, 0.5).prefix_kv()
    assert torch.allclose(half, (a.prefix_kv() + b.prefix_kv()) / 2, atol=1e-6)


@pytest.mark.parametrize("method", ["prompt", "injection"])
def test_training_lowers_validation_perplexity(tiny_overrides, method):
    cfg = cfg_for(tiny_overrides, method, "train.lr=0.05", "train.max_steps=16", "train.eval_every=8")
    result, trained = train(cfg)
    assert result["val_perplexity"] < result["baseline_perplexity"] * 0.98
    assert len(result["history"]) == 2


@pytest.mark.parametrize("method", ["prompt", "injection", "prefix", "lora"])
def test_save_load_reproduces_perplexity(tiny_overrides, tmp_path, method):
    cfg = cfg_for(tiny_overrides, method, "train.lr=0.01")
    prep = prepare(cfg)
    result, trained = train(cfg, prepared=prep)
    try:
        trained.save(tmp_path / "adapter")
        assert (tmp_path / "adapter" / "adapter.safetensors").is_file()
        direct = perplexity(trained, prep.val, 32, autocast_dtype=autocast_dtype(cfg, "cpu"))  # as training evaluated
        assert direct == pytest.approx(result["val_perplexity"], rel=1e-5)
    finally:
        trained.release()
    fresh = load_frozen_lm(cfg.model)
    loaded = load_method(tmp_path / "adapter", fresh.model, fresh.tokenizer)
    try:
        assert perplexity(loaded, prep.val, 32, autocast_dtype=autocast_dtype(cfg, "cpu")) == pytest.approx(
            result["val_perplexity"], rel=1e-5
        )
    finally:
        loaded.release()


def test_peft_can_load_saved_prompt_and_lora(tiny_overrides, tmp_path):
    from peft import PeftModel

    for method in ("prompt", "lora"):
        cfg = cfg_for(tiny_overrides, method, "train.max_steps=2")
        result, trained = train(cfg)
        trained.save(tmp_path / method)
        trained.release()
        peft_model = PeftModel.from_pretrained(load_frozen_lm(cfg.model).model, str(tmp_path / method / "peft"))
        trainable = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n or "prompt" in n)
        assert trainable == result["trainable_params"]


def test_reference_parameter_counts(tmp_path):
    """The seed experiment's shapes: injection (encoder 768, width 512, 1 injected + 2 learnable
    vectors, model dim 960) = 888,128 parameters; static prefix of 3 tokens = 2,880."""
    from .conftest import make_tiny_model

    path = make_tiny_model(tmp_path / "m960", hidden=960, layers=1, vocab=300)
    lm = load_frozen_lm(str(path))
    inj = load_config(
        None,
        [
            f"model={path}",
            "method=injection",
            "adapter.prefix_len=2",
            "adapter.inject_tokens=1",
            "adapter.mlp_width=512",
        ],
    )
    m = build_method(inj, lm.model, encoder_dim=768, tokenizer=lm.tokenizer)
    assert sum(p.numel() for p in m.trainable_parameters()) == 888_128
    prompt = load_config(None, [f"model={path}", "method=prompt", "adapter.prefix_len=3"])
    assert sum(p.numel() for p in build_method(prompt, lm.model).trainable_parameters()) == 2_880


@pytest.mark.parametrize("init", ["normal", "vocab", "gaussian", "gaussian-diag", "exclusion", "text", "interpolate"])
def test_prompt_priors(tiny_overrides, init):
    cfg = cfg_for(
        tiny_overrides,
        "prompt",
        f"adapter.init={init}",
        "adapter.init_radius=0.01",
        "adapter.init_text=def class return import",
        "adapter.init_text_b=1 2 3 4 5 6 7 8 9",
    )
    lm = load_frozen_lm(cfg.model)
    a = build_method(cfg, lm.model, tokenizer=lm.tokenizer).prompt
    b = build_method(cfg, lm.model, tokenizer=lm.tokenizer).prompt
    assert a.shape == (4, lm.dim) and torch.equal(a, b)  # seeded
    table = lm.model.get_input_embeddings().weight
    if init == "vocab":
        assert all((table == row).all(dim=1).any() for row in a)
    if init == "exclusion":
        assert torch.cdist(a.detach(), table).min() >= 0.01
    if init == "interpolate":  # first vector nearer cluster A's centre, last nearer B's
        centre = lambda text: table[torch.tensor(lm.tokenizer(text, add_special_tokens=False)["input_ids"])].mean(0)  # noqa: E731
        ca, cb = centre(cfg.adapter.init_text), centre(cfg.adapter.init_text_b)
        assert (a[0] - ca).norm() < (a[0] - cb).norm() and (a[-1] - cb).norm() < (a[-1] - ca).norm()


def test_same_seed_same_numbers(tiny_overrides):
    cfg = cfg_for(tiny_overrides, "injection")
    r1, _ = train(cfg)
    r2, _ = train(cfg)
    assert [h["val_perplexity"] for h in r1["history"]] == [h["val_perplexity"] for h in r2["history"]]


def test_resume_from_checkpoint_continues_identically(tiny_overrides, tmp_path):
    cfg = cfg_for(tiny_overrides, "injection", "train.max_steps=9", "train.eval_every=3", "train.patience=0")
    full, _ = train(cfg)
    saved = []

    def report(metrics, write_checkpoint):
        if metrics["step"] == 3:
            write_checkpoint(tmp_path / "ckpt")
            saved.append(metrics)
            raise KeyboardInterrupt  # the process dies right after its first checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(cfg, report=report)
    resumed, _ = train(cfg, resume_from=tmp_path / "ckpt")
    assert [h["step"] for h in resumed["history"]] == [3, 6, 9]
    assert [h["val_perplexity"] for h in resumed["history"]] == pytest.approx(
        [h["val_perplexity"] for h in full["history"]], rel=1e-6
    )


def test_registry_has_every_method():
    assert set(REGISTRY) == set(METHODS)


def test_bfloat16_autocast_trains(tiny_overrides):
    cfg = cfg_for(tiny_overrides, "injection", "train.dtype=bfloat16", "train.max_steps=3")
    result, _ = train(cfg)
    assert math.isfinite(result["val_perplexity"]) and result["steps"] == 3


@pytest.mark.parametrize(
    "method, extra",
    [("baseline", ""), ("prompt", ""), ("prompt", "adapter.deep_layers=1"), ("prefix", ""), ("lora", "")],
)
def test_generation_matches_full_recomputation(tiny_overrides, method, extra):
    """Greedy decoding with the KV cache equals argmax over a full forward of the growing
    sequence through the adapter (the training path), token by token."""
    cfg = cfg_for(tiny_overrides, method, "adapter.prefix_len=3", *([extra] if extra else []))
    lm = load_frozen_lm(cfg.model)
    m = build_method(cfg, lm.model, tokenizer=lm.tokenizer)
    try:
        with torch.no_grad():
            for p in m.trainable_parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
        prompts = [[5, 17, 33, 8], [9, 40, 41, 12], [7, 7]]
        eos = lm.tokenizer.eos_token_id
        out = generate(m, prompts, max_new_tokens=5, eos_id=eos)
        assert sum(map(len, out)) > 5  # something was decoded, so the comparison below has teeth
        for prompt, new in zip(prompts, out):
            seq = list(prompt)
            for tok in new:
                embeds, _, past, mask = m.lm_inputs({"input_ids": torch.tensor([seq])})
                with torch.no_grad(), m.activation_hooks():
                    logits = lm.model(inputs_embeds=embeds, past_key_values=past, attention_mask=mask).logits
                assert int(logits[0, -1].argmax()) == tok
                seq.append(tok)
        sampled = [generate(m, prompts, 4, eos_id=eos, temperature=1.0, top_k=20, seed=3) for _ in range(2)]
        assert sampled[0] == sampled[1]  # seeded sampling is reproducible
    finally:
        m.release()


@pytest.mark.parametrize("method", ["prompt", "injection", "lora"])
def test_gradient_checkpointing_gives_the_same_training(tiny_overrides, method):
    cfg = cfg_for(tiny_overrides, method)
    plain, m1 = train(cfg)
    m1.release()
    ckpt, m2 = train(cfg_for(tiny_overrides, method, "train.gradient_checkpointing=true"))
    m2.release()
    a = [h["val_perplexity"] for h in plain["history"]]
    b = [h["val_perplexity"] for h in ckpt["history"]]
    assert a == pytest.approx(b, rel=1e-5) and a[0] != a[-1]
    lm = load_frozen_lm(cfg.model)
    # restored for everyone else
    assert not lm.model.training and not any(getattr(m, "gradient_checkpointing", False) for m in lm.model.modules())


def test_packed_trials_get_their_own_gradients(tiny_model):
    """benchmarks.packing: K trials' prompts in one batch give each trial its separate gradient."""
    lm = load_frozen_lm(tiny_model)
    methods, batches = make_trials(lm, 3, prefix=2, batch=2, seq=16, model=tiny_model)
    assert max_grad_difference(methods, batches) < 1e-5
    assert all(float(m.prompt.grad.abs().sum()) > 0 for m in methods)


def test_shape_model_keeps_the_shape_and_tokenizer_not_the_weights(tiny_model, tmp_path):
    """benchmarks.shape_model: what the GPU rows are timed on, made from a config and tokenizer alone."""
    shape = load_frozen_lm(str(make_shape_model(Path(tiny_model), tmp_path / "shape", seed=1)))
    real = load_frozen_lm(tiny_model)
    assert [p.shape for p in shape.model.parameters()] == [p.shape for p in real.model.parameters()]
    assert shape.tokenizer.get_vocab() == real.tokenizer.get_vocab()
    assert not torch.equal(shape.model.get_input_embeddings().weight, real.model.get_input_embeddings().weight)


def test_step_benchmark_writes_where_asked_and_gpu_share_needs_cuda(tiny_model, tmp_path, capsys):
    import json

    out = tmp_path / "step.json"
    assert (
        step_benchmark.main(
            ["--model", tiny_model, "--methods", "prompt", "--reps", "1", "--seq", "32", "--out", str(out)]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and {r["side"] for r in data["rows"]} == {"embinject", "peft"}
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert gpu_share.main(["--model", tiny_model, "--out", str(tmp_path / "g.json")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "CUDA" in err[0] and not (tmp_path / "g.json").exists()
    if (BENCHMARKS / "results" / "step_gpu.json").is_file():  # the committed GPU rows render
        assert gpu_section(BENCHMARKS / "results")[0] == "## GPU rows"


def test_deep_prompt_starts_as_its_soft_prompt_and_learns_activations(tiny_overrides):
    lm = load_frozen_lm(cfg_for(tiny_overrides, "prompt").model)
    soft = build_method(cfg_for(tiny_overrides, "prompt"), lm.model, tokenizer=lm.tokenizer)
    deep = build_method(cfg_for(tiny_overrides, "prompt", "adapter.deep_layers=1"), lm.model, tokenizer=lm.tokenizer)
    assert deep.deep.shape == (1, soft.prompt.shape[0], lm.dim)  # the last of the tiny model's 2 layers
    ids = torch.randint(5, 300, (3, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    a, _ = soft.nll(batch)
    b, _ = deep.nll(batch)
    assert torch.allclose(a, b, rtol=1e-5)  # the learned activations start as the model's own
    b.backward()
    assert deep.deep.grad.abs().sum() > 0 and deep.prompt.grad.abs().sum() > 0
    with torch.no_grad():
        deep.deep.add_(1.0)
        c, _ = deep.nll(batch)
        d, _ = soft.nll(batch)
    assert not torch.allclose(b, c) and torch.allclose(a, d)  # the hooks are gone after each pass
    with pytest.raises(Exception, match="adapter.deep_layers: this model has 2 layers"):
        build_method(cfg_for(tiny_overrides, "prompt", "adapter.deep_layers=3"), lm.model, tokenizer=lm.tokenizer)


def test_resuming_a_finished_run_delivers_its_final_report_again(tiny_overrides, tmp_path):
    """The process that wrote the last checkpoint may die before its caller records the final
    report; resuming from that checkpoint reports it again instead of ending silently."""
    cfg = cfg_for(tiny_overrides, "prompt", "train.max_steps=4", "train.eval_every=2", "train.patience=0")
    first = []

    def keep(metrics, write_checkpoint):
        first.append(metrics)
        if metrics["final"]:
            write_checkpoint(tmp_path / "last")

    train(cfg, report=keep)
    again = []
    result, _ = train(cfg, report=lambda m, w: again.append(m), resume_from=tmp_path / "last")
    assert len(again) == 1 and again[0]["final"] and again[0]["step"] == 4
    assert again[0]["val_perplexity"] == first[-1]["val_perplexity"] and result["steps"] == 4


@pytest.mark.parametrize("fast", ["0", "1"])
def test_auto_dtype_is_bf16_only_where_fast_and_says_what_it_chose(tiny_overrides, monkeypatch, fast):
    monkeypatch.setenv("EMBINJECT_CPU_BF16", fast)  # as on a CPU with (1) or without (0) bf16 instructions
    precision.cpu_bf16_fast.cache_clear()
    try:
        auto, _ = train(cfg_for(tiny_overrides, "prompt"))
        explicit, _ = train(
            cfg_for(tiny_overrides, "prompt", f"train.dtype={'bfloat16' if fast == '1' else 'float32'}")
        )
    finally:
        precision.cpu_bf16_fast.cache_clear()
    assert auto["dtype"] == ("bfloat16" if fast == "1" else "float32") and auto["config"]["train"]["dtype"] == "auto"
    assert (
        auto["val_perplexity"] == explicit["val_perplexity"]
        and auto["baseline_perplexity"] == explicit["baseline_perplexity"]
    )


def test_cpu_flags_decide_and_the_probe_answers_quickly():
    import time

    flags = precision.cpu_flags()
    assert flags is None or isinstance(flags, set)
    if flags is not None and "EMBINJECT_CPU_BF16" not in os.environ:
        assert precision.cpu_bf16_fast() == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert (
        precision.resolve_dtype("float32", "cpu") == "float32"
        and precision.resolve_dtype("bfloat16", "cpu") == "bfloat16"
    )
    t0 = time.perf_counter()
    assert isinstance(precision._probe(), bool)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("last_is_best", [True, False])
def test_the_last_evaluation_scores_each_window_once_and_reports_both_scores(tiny_overrides, monkeypatch, last_is_best):
    """At the last evaluation one pass over every window gives the subset's score and the full set's; only
    when an earlier adapter is kept is that one scored again."""
    rescored = []
    real_score, real_both = T.score_state, T.subset_and_full
    monkeypatch.setattr(T, "score_state", lambda *a, **k: rescored.append(1) or real_score(*a, **k))
    if not last_is_best:  # make the last evaluation look worse on the subset, so an earlier adapter is kept
        monkeypatch.setattr(T, "subset_and_full", lambda *a, **k: (1e6, real_both(*a, **k)[1]))
    reports = []
    cfg = cfg_for(
        tiny_overrides,
        "prompt",
        "train.eval_windows=8",
        "train.lr=0.05",
        "train.patience=0",
        "train.divergence_factor=0",
    )
    prep = prepare(cfg)
    result, trained = train(cfg, report=lambda m, _: reports.append(m), prepared=prep)
    amp = autocast_dtype(cfg, "cpu")
    subset, _ = T.eval_subset(prep.val, 8)
    full = perplexity(trained, prep.val, 32, autocast_dtype=amp)  # trained holds the kept adapter
    assert result["val_perplexity"] == pytest.approx(full, rel=1e-6)
    assert reports[-1]["val_perplexity"] == pytest.approx(full, rel=1e-6)
    assert (result["best_step"] == result["steps"]) == last_is_best
    assert rescored == ([] if last_is_best else [1])
    if last_is_best:
        assert reports[-1]["val_perplexity_subset"] == pytest.approx(
            perplexity(trained, subset, 32, autocast_dtype=amp), rel=1e-6
        )
    trained.release()


def test_intermediate_evaluations_use_a_fixed_subset_and_the_kept_adapter_is_scored_on_all(tiny_overrides):
    reports = []
    cfg = cfg_for(tiny_overrides, "prompt", "train.eval_windows=8", "train.eval_audit=true", "train.lr=0.05")
    prep = prepare(cfg)
    result, trained = train(cfg, report=lambda m, _: reports.append(m), prepared=prep)
    subset, used = eval_subset(prep.val, 8)
    assert used is not None and len(subset["input_ids"]) == 8 and result["eval_windows"] == 8
    assert torch.equal(
        subset["input_ids"],
        eval_subset(prepare(cfg_for(tiny_overrides, "prompt", "train.seed=5")).val, 8)[0]["input_ids"],
    )
    amp = autocast_dtype(cfg, "cpu")
    full = perplexity(trained, prep.val, 32, autocast_dtype=amp)  # trained holds the kept (best) adapter
    assert result["val_perplexity"] == pytest.approx(full, rel=1e-6)
    assert reports[-1]["final"] and reports[-1]["val_perplexity"] == pytest.approx(full, rel=1e-6)
    assert reports[-1]["best_val_perplexity"] == reports[-1]["val_perplexity"]
    intermediate = reports[:-1]
    assert intermediate and all(r["val_perplexity"] != r["val_perplexity_full"] for r in intermediate)  # a real subset
    assert perplexity(trained, subset, 32, autocast_dtype=amp) == pytest.approx(
        min(r.get("val_perplexity_subset", r["val_perplexity"]) for r in reports), rel=1e-6
    )  # chosen on the subset
    trained.release()


@pytest.mark.parametrize("encoder,pooling", [("fourier", "chunks"), ("lm-mean", "chunks"), ("lm-hidden:1", "recent")])
def test_chunked_injection_reads_k_chunk_means_and_generates_from_a_context(tiny_overrides, tmp_path, encoder, pooling):
    """`adapter.pooling: chunks` and `recent`: the encoder's token states mean-pooled over inject_tokens chunks of the
    preceding text, one vector each; the frozen LM as its own encoder (`lm-hidden:N`); saved, loaded and generating as a
    user would."""
    states = torch.arange(10.0).repeat(3, 1).T  # [10, 3]: positions 0..9
    assert chunk_mean(states, 3)[:, 0].tolist() == [1.5, 5.0, 8.0]  # chunks of 4, 3, 3 positions
    assert chunk_mean(states, 3, recent=True)[:, 0].tolist() == [3.0, 7.5, 9.0]  # 7, 2, 1: the last position alone
    assert chunk_bounds(64, 8, recent=True) == [0, 29, 44, 53, 58, 61, 62, 63, 64]  # growing with distance from the end
    assert chunk_bounds(3, 5, recent=True) == [0, 0, 0, 1, 2, 3]  # too short: the first chunks are empty
    assert chunk_mean(states[:3], 5, recent=True)[:, 0].tolist() == [1.0, 1.0, 0.0, 1.0, 2.0]  # empty: the whole mean
    cfg = cfg_for(
        tiny_overrides,
        "injection",
        f"adapter.embedding_model={encoder}",
        f"adapter.pooling={pooling}",
        "adapter.inject_tokens=3",
        "adapter.prefix_len=0",
        "adapter.embed_source=previous",
        "train.lr=0.01",
    )
    prep = prepare(cfg)
    assert tuple(prep.train["sentence_embedding"].shape[1:]) == (3, prep.encoder_dim)
    lm = load_frozen_lm(cfg.model)
    ids = prep.train["input_ids"][:2, :12]
    enc = load_encoder(encoder, lm.model, lm.tokenizer, lm.path, 16)
    chunked = load_encoder(encoder, lm.model, lm.tokenizer, lm.path, 16, pooling=Pooling("chunks", 3)).encode(ids)
    # 3 equal chunks of 4: their mean is the mean
    assert torch.allclose(chunked.mean(dim=1), enc.encode(ids), atol=1e-5)
    recent = load_encoder(encoder, lm.model, lm.tokenizer, lm.path, 16, pooling=Pooling("recent", 3)).encode(ids)
    assert torch.allclose(recent[:, -1], torch.stack(enc.token_states(ids))[:, -1], atol=1e-5)  # the last token alone
    keys = {encoder_key(encoder, lm.tokenizer, 16, lm.path, Pooling(kind, 3)) for kind in ("mean", "chunks", "recent")}
    assert len(keys) == 3  # each pooling its own cache
    if encoder.startswith("lm-hidden"):  # the pass stopped at the layer gives what the whole model's pass gives there
        with torch.no_grad():
            whole = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in (0, 1, lm.model.config.num_hidden_layers):
            stopped = torch.stack(load_encoder(f"lm-hidden:{layer}", lm.model, lm.tokenizer, lm.path).token_states(ids))
            assert torch.allclose(stopped, F.normalize(whole[layer], dim=-1), atol=1e-5)  # each token's of unit length
    result, trained = train(cfg, prepared=prep)
    trained.save(tmp_path / "adapter")
    assert trained.mlp[2].out_features == 3 * lm.model.config.hidden_size  # each chunk through its position's rows
    loaded = load_adapter(str(tmp_path / "adapter"))
    assert len(loaded.generate(["The history"], ["of the city and its people"], max_new_tokens=3)) == 1


def test_the_resampler_starts_as_the_pooled_embedding_and_ignores_padding():
    """Each of its k vectors starts as the normalised mean of the present token states (what the pooled design feeds
    the MLP), whatever the states' scale, and the queries still tell the k vectors apart."""
    torch.manual_seed(0)
    states = torch.zeros(3, 10, 33)
    lengths = (10, 6, 3)
    for i, n in enumerate(lengths):
        states[i, :n, :-1] = 7 * torch.randn(n, 32) + 3  # token states of MiniLM's scale, not centred
        states[i, :n, -1] = 1
    pooled = torch.stack([F.normalize(states[i, :n, :-1].mean(0), dim=-1) for i, n in enumerate(lengths)])
    out = Resampler(32, 4)(states)
    assert out.shape == (3, 4, 32) and torch.allclose(out.norm(dim=-1), torch.ones(3, 4), atol=1e-5)
    assert (F.cosine_similarity(out, pooled.unsqueeze(1), dim=-1) > 0.99).all()
    assert not torch.equal(out[:, 0], out[:, 1])


@pytest.mark.parametrize("pooling", ["chunks", "resampler"])
def test_k_input_vectors_go_each_through_their_own_rows_as_the_pooled_design_does(tiny_overrides, pooling):
    """Vector i of chunks and of the resampler goes through the MLP's first layer and position i's rows of its last
    (the pooled design's k*d outputs): fed k copies of one pooled vector, it makes exactly the pooled design's k
    vectors, so k alike inputs still make k different vectors (a shared MLP would make k copies of one)."""
    cfg = cfg_for(
        tiny_overrides, "injection", f"adapter.pooling={pooling}", "adapter.inject_tokens=3", "adapter.prefix_len=0"
    )
    lm = load_frozen_lm(cfg.model).model
    x = torch.randn(2, 16)
    copies = x.unsqueeze(1).expand(-1, 3, -1)
    if pooling == "resampler":
        method = Injection(cfg, lm, encoder_dim=17)
        method.resampler.forward = lambda states: states[..., :-1]  # k inputs straight to the MLP
        copies = torch.cat([copies, torch.ones(2, 3, 1)], -1)
    else:
        method = Injection(cfg, lm, encoder_dim=16)
    made = method.injected({"sentence_embedding": copies})
    assert made.shape == (2, 3, lm.config.hidden_size)
    assert torch.allclose(made, method.mlp(x).view(2, 3, -1), atol=1e-5) and not torch.allclose(made[:, 0], made[:, 1])


@pytest.mark.parametrize("encoder", ["fourier", "bundled:all-minilm-l6-v2"])
def test_resampler_injection_attends_over_token_states_and_ignores_padding(tiny_overrides, tmp_path, encoder):
    """`adapter.pooling: resampler`: k learned queries cross-attend over the encoder's token states (its own tokens for
    MiniLM, so texts differ in length and are padded); padding never changes the result; saved, loaded, generating."""
    cfg = cfg_for(
        tiny_overrides,
        "injection",
        f"adapter.embedding_model={encoder}",
        "adapter.pooling=resampler",
        "adapter.inject_tokens=2",
        "adapter.prefix_len=0",
        "adapter.embed_source=previous",
        "train.lr=0.01",
    )
    prep = prepare(cfg)
    states = prep.train["sentence_embedding"]
    assert states.dim() == 3 and states.dtype == torch.float16 and prep.encoder_dim == states.shape[-1]
    result, trained = train(cfg, prepared=prep)
    batch = {"input_ids": prep.val["input_ids"][:2], "sentence_embedding": prep.val["sentence_embedding"][:2].float()}
    # 5 more padding positions
    padded = dict(batch, sentence_embedding=F.pad(batch["sentence_embedding"], (0, 0, 0, 5)))
    with torch.no_grad():
        assert torch.allclose(trained.prefix_embeds(batch), trained.prefix_embeds(padded), atol=1e-6)
    trained.save(tmp_path / "adapter")
    loaded = load_adapter(str(tmp_path / "adapter"))
    out = loaded.generate(
        ["The history", "A"], ["of the city and its people over many years", "short"], max_new_tokens=2
    )
    assert len(out) == 2
    # its constant-input control: every window of both splits gets the training split's mean states, padded as they
    # are (each split pads to its own longest text, so the splits' lengths differ for MiniLM)
    constant = prepare(
        cfg_for(
            tiny_overrides,
            "injection",
            f"adapter.embedding_model={encoder}",
            "adapter.pooling=resampler",
            "adapter.inject_tokens=2",
            "adapter.prefix_len=0",
            "adapter.embed_source=previous",
            "adapter.ablation=constant",
        )
    )
    assert encoder == "fourier" or prep.val["sentence_embedding"].shape[1] != states.shape[1]
    for split, own in ((constant.train, prep.train), (constant.val, prep.val)):
        fed = split["sentence_embedding"]
        assert len(fed) == len(own["sentence_embedding"]) and torch.equal(
            fed, states.mean(0, keepdim=True).expand_as(fed)
        )


def test_kv_injection_starts_as_a_static_deep_prefix_then_reads_the_text(tiny_overrides, tmp_path):
    """`adapter.inject_into: kv`: each injected vector becomes every layer's key/value at one prefix position. At
    the start the head is zero, so every window gets the LM's own activations on the prior vectors (a static deep
    prefix); after training the keys differ by window. Greedy generation with the cache equals full recomputation;
    saved and loaded, it scores the same."""
    cfg = cfg_for(
        tiny_overrides,
        "injection",
        "adapter.inject_into=kv",
        "adapter.inject_tokens=2",
        "adapter.prefix_len=0",
        "adapter.embed_source=previous",
        "train.lr=0.01",
    )
    prep = prepare(cfg)
    batch = {k: v[:4] for k, v in prep.val.items()}
    fresh = build_method(cfg, prep.lm.model, prep.encoder_dim, prep.lm.tokenizer)
    with torch.no_grad():
        keys = fresh.past_key_values(batch).layers[0].keys  # [B, H, k, hd]
    assert keys.shape[2] == 2 and torch.equal(keys[0], keys[3])  # the same prefix for every window at the start
    assert fresh.prefix_embeds(batch) is None  # nothing enters as an input vector
    result, trained = train(cfg, prepared=prep)
    with torch.no_grad():
        keys = trained.past_key_values(batch).layers[0].keys
    assert not torch.allclose(keys[0], keys[3])  # the text now shapes the prefix
    prompts = [[5, 17, 33, 8], [9, 40, 41, 12]]
    extra = {"sentence_embedding": batch["sentence_embedding"][:2]}
    out = generate(trained, prompts, max_new_tokens=4, eos_id=-1, extra=extra)
    for i, (prompt, new) in enumerate(zip(prompts, out)):
        seq = list(prompt)
        for tok in new:
            embeds, _, past, mask = trained.lm_inputs(
                {"input_ids": torch.tensor([seq]), "sentence_embedding": extra["sentence_embedding"][i : i + 1]}
            )
            with torch.no_grad():
                assert (
                    int(
                        prep.lm.model(inputs_embeds=embeds, past_key_values=past, attention_mask=mask)
                        .logits[0, -1]
                        .argmax()
                    )
                    == tok
                )
            seq.append(tok)
    trained.save(tmp_path / "adapter")
    loaded = load_adapter(str(tmp_path / "adapter"))
    scored = perplexity(loaded.method, prep.val, 32, autocast_dtype=autocast_dtype(cfg, "cpu"))  # as training evaluated
    assert scored == pytest.approx(result["val_perplexity"], rel=1e-5)
    assert len(loaded.generate(["The history"], ["of the city and its people"], max_new_tokens=2)) == 1


def test_ablation_feeds_the_training_mean_or_another_windows_embedding(tiny_overrides, tmp_path):
    """`adapter.ablation`, the controls of injection: `constant` feeds every window of both splits the training split's
    mean embedding, `shuffled` another window's of the same split (a fixed order per seed); such an adapter evaluates
    but does not generate from a text, which it never read."""
    base = ["adapter.embedding_model=fourier", "adapter.embed_source=previous", "train.max_steps=2"]
    own = prepare(cfg_for(tiny_overrides, "injection", *base))
    mean = own.train["sentence_embedding"].mean(0, keepdim=True)
    constant = prepare(cfg_for(tiny_overrides, "injection", *base, "adapter.ablation=constant"))
    for split in (constant.train, constant.val):
        assert torch.equal(split["sentence_embedding"], mean.expand_as(split["sentence_embedding"]))
    shuffled = [
        prepare(cfg_for(tiny_overrides, "injection", *base, "adapter.ablation=shuffled", f"train.seed={s}"))
        for s in (0, 0, 1)
    ]
    for name in ("train", "val"):
        ours, again, other = (getattr(p, name)["sentence_embedding"] for p in shuffled)
        real = getattr(own, name)["sentence_embedding"]
        assert torch.equal(ours, again) and not torch.equal(ours, other) and not torch.equal(ours, real)
        assert torch.equal(ours.sort(dim=0).values, real.sort(dim=0).values)  # the same embeddings, other windows
    cfg = cfg_for(tiny_overrides, "injection", *base, "adapter.ablation=constant")
    result, trained = train(cfg, prepared=constant)
    trained.save(tmp_path / "control")
    loaded = load_adapter(str(tmp_path / "control"))
    with pytest.raises(ConfigError, match="a control adapter \\(adapter.ablation: constant\\)"):
        loaded.generate(["The history"], ["of the city"], max_new_tokens=2)
    before = sorted(p.name for p in (tmp_path / "control").iterdir())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "embinject",
            "generate",
            "--adapter",
            str(tmp_path / "control"),
            "--prompt",
            "The history",
            "--context",
            "of the city",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert (
        proc.returncode == 2
        and len(lines) == 1
        and lines[0].startswith(f"error: {tmp_path / 'control'}: a control adapter")
    ), proc.stderr
    assert sorted(p.name for p in (tmp_path / "control").iterdir()) == before  # nothing written beside it


def test_encoder_lora_trains_the_lm_as_its_encoder_on_that_pass_only(tiny_overrides, tmp_path):
    """`adapter.encoder_rank`: LoRA in the LM's first N layers, on the pass that encodes the text only. It starts as the
    frozen `lm-hidden:N` chunk means and training moves them; a pass in another thread while the updates are on sees
    the frozen LM, and the scoring pass reads only the injected vectors; saved, loaded, and generating from a context
    through the trained encoder."""
    import threading

    cfg = cfg_for(
        tiny_overrides,
        "injection",
        "adapter.embedding_model=lm-hidden:2",
        "adapter.pooling=chunks",
        "adapter.encoder_rank=4",
        "adapter.inject_tokens=2",
        "adapter.prefix_len=0",
        "adapter.embed_source=previous",
        "train.lr=0.02",
    )
    prep = prepare(cfg)
    lm = prep.lm
    assert "sentence_embedding" not in prep.train and prep.encoder_dim == lm.model.config.hidden_size
    ids = prep.val["encoder_ids"][:3]
    frozen = load_encoder("lm-hidden:2", lm.model, lm.tokenizer, lm.path, pooling=Pooling("chunks", 2)).encode(ids)
    fresh = build_method(cfg, lm.model, prep.encoder_dim, lm.tokenizer)
    assert torch.allclose(fresh.text_encoder.encode(ids), frozen, atol=1e-5)  # B = 0: the frozen encoder
    result, trained = train(cfg, prepared=prep)
    encoder = trained.text_encoder
    assert not torch.allclose(encoder.encode(ids), frozen, atol=1e-4)  # trained: the LM now encodes differently
    with torch.no_grad():
        with encoder._updates():
            inside = lm_layer_states(lm.model, 2, ids)
            elsewhere = []
            worker = threading.Thread(target=lambda: elsewhere.append(lm_layer_states(lm.model, 2, ids)))
            worker.start()
            worker.join()
        outside = lm_layer_states(lm.model, 2, ids)
        assert not torch.allclose(inside, outside) and torch.equal(elsewhere[0], outside)
        batch = {"input_ids": prep.val["input_ids"][:3], "labels": prep.val["labels"][:3], "encoder_ids": ids}
        given = {**batch, "sentence_embedding": encoder(ids)}  # the same vectors, handed over: the same score
        assert torch.allclose(trained.nll(batch)[0], trained.nll(given)[0], rtol=1e-6)
    trained.save(tmp_path / "adapter")
    loaded = load_adapter(str(tmp_path / "adapter"))
    assert loaded.method.text_encoder is not None and torch.allclose(
        loaded.method.text_encoder.encode(ids), encoder.encode(ids)
    )
    scored = perplexity(loaded.method, prep.val, 32, autocast_dtype=autocast_dtype(cfg, "cpu"))
    assert scored == pytest.approx(result["val_perplexity"], rel=1e-5)
    context = "of the city and its people"
    context_ids = torch.tensor([lm.tokenizer(context, add_special_tokens=False)["input_ids"]])
    assert torch.allclose(loaded.sentence_embeddings([[5, 6]], [context]), encoder.encode(context_ids), atol=1e-6)
    assert len(loaded.generate(["The history"], [context], max_new_tokens=3)) == 1


def test_distillation_teacher_is_the_lm_reading_the_text_and_training_moves_towards_it(tiny_overrides):
    """`train.distill`: the teacher's top-k is the frozen LM's own distribution with the preceding text read as
    tokens (kept on disk, read back the same); the coarsened KL equals the full KL when k is the vocabulary and bounds
    it from below otherwise; a training step's loss is the NLL plus the weighted KL, and training where the KL dominates
    lowers it."""
    # On the random tiny model the teacher and the student barely differ (a KL of about 1e-4 per token against an NLL
    # of 6.2), so a weight this large is what lets the KL lead the steps below.
    cfg = cfg_for(
        tiny_overrides,
        "prompt",
        "train.distill=10000",
        "train.distill_top_k=8",
        "adapter.embed_source=previous",
        "train.lr=0.01",
        "train.max_steps=4",
    )
    prep = prepare(cfg)
    lm = prep.lm.model
    assert prep.train[TEACHER_INDEX].shape == (len(prep.train["input_ids"]), cfg.data.seq_len - 1, 8)
    assert torch.equal(prepare(cfg).train[TEACHER_LOGP], prep.train[TEACHER_LOGP])  # read back from the cache
    w = select_windows(
        build_windows(cfg.data, prep.lm.tokenizer, tokenizer_fingerprint(prep.lm.tokenizer))[0],
        cfg.data.train_samples,
        "previous",
        "train",
    )
    with torch.no_grad():
        full = lm(input_ids=torch.cat([w.previous[:2], w.tokens[:2]], 1)).logits[
            :, cfg.data.seq_len : 2 * cfg.data.seq_len - 1
        ]
    logp = full.float().log_softmax(-1)
    kept = prep.train[TEACHER_LOGP][:2].float()  # the teacher ran under the training's autocast: near-ties may swap
    assert torch.allclose(logp.gather(-1, prep.train[TEACHER_INDEX][:2].long()), kept, atol=0.05)
    assert torch.allclose(kept[..., -1], logp.topk(8, dim=-1).values[..., -1], atol=0.05)  # the 8 most likely
    student = torch.randn(5, full.shape[-1], generator=torch.Generator().manual_seed(0))
    teacher = full[0, :5].float().log_softmax(-1)
    exact = F.kl_div(student.log_softmax(-1), teacher, log_target=True, reduction="sum")
    everything = teacher.topk(teacher.shape[-1], dim=-1)
    assert math.isclose(float(distill_kl(student, everything.indices, everything.values)), float(exact), rel_tol=1e-3)
    few = teacher.topk(8, dim=-1)
    assert float(distill_kl(student, few.indices, few.values)) <= float(exact) + 1e-4

    def kl_to_teacher(method):
        batch = {k: v[:16] for k, v in prep.train.items()}
        with torch.no_grad():
            logits, _, where = method.scored_logits(batch)
            return float(distill_kl(logits, batch[TEACHER_INDEX][where], batch[TEACHER_LOGP][where]))

    fresh = build_method(cfg, lm, None, prep.lm.tokenizer)
    batch = {k: v[:16] for k, v in prep.train.items()}
    with torch.no_grad():
        nll, count = fresh.nll(batch)
    before = kl_to_teacher(fresh)
    opt = torch.optim.AdamW(fresh.trainable_parameters(), lr=0.01)
    for step in range(6):
        loss = SoloSteps().step(fresh, opt, batch, None, "cpu")
        if step == 0:
            assert loss == pytest.approx(float(nll) / count + 10000 * before / count, rel=1e-4)
        opt.step()
    assert kl_to_teacher(fresh) < 0.8 * before
    result, _ = train(cfg, prepared=prep)
    assert math.isfinite(result["val_perplexity"]) and result["steps"] == 4
