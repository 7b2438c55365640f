"""Each experiment's command in a tiny configuration, so they keep working."""
from experiments.embedding_injection import run as embedding_injection


def test_embedding_injection_experiment_tiny(tmp_path, tiny_model, shared_data):
    out = tmp_path / "exp"
    code = embedding_injection.main([
        "--data", str(shared_data / "wikitext2_valid_detok"), "--out", str(out), "--sources", "context", "previous",
        "--set", f"model={tiny_model}", "--set", "data.seq_len=32", "--set", "data.train_samples=32",
        "--set", "data.val_samples=16", "--set", "train.max_steps=2", "--set", "train.eval_every=1",
        "--set", "adapter.context_tokens=8", "--set", "adapter.mlp_width=16"])
    assert code == 0
    text = (out / "RESULTS.md").read_text()
    assert "## embed_source: context" in text and "## embed_source: previous" in text
    assert text.count("| Control: injection, shuffled embeddings |") == 2
    assert "How much of the gain survives without the leak" in text


def test_adapter_injection_experiment_tiny(tmp_path, tiny_model, shared_data):
    import json

    from experiments.adapter_injection import run as adapter_injection

    out = tmp_path / "lora"
    code = adapter_injection.main([
        "--data", str(shared_data / "wikitext2_valid_detok"), "--out", str(out), "--rank", "4",
        "--set", f"model={tiny_model}", "--set", "data.seq_len=32", "--set", "data.train_samples=32",
        "--set", "data.val_samples=16", "--set", "train.max_steps=2", "--set", "train.eval_every=1"])
    assert code == 0
    facts = json.loads((out / "results.json").read_text())["facts"]
    assert facts["max_abs_diff_at_injection"] == 0 and facts["max_abs_diff_disabled"] == 0
    assert facts["all_layers_match_formula"] and facts["two_active_sum_max_abs_error"] < 1e-5
    assert facts["a_and_b_differ_max_abs"] > 0 and facts["both_active_differs_from_each"] > 0
    assert "parameters per layer = r x (d_in + d_out) | holds for all" in (out / "RESULTS.md").read_text()


def test_fourier_embeddings_experiment_tiny(tmp_path, tiny_model, shared_data):
    from experiments.fourier_embeddings import run as fourier_embeddings

    out = tmp_path / "fourier"
    code = fourier_embeddings.main([
        "--data", str(shared_data / "wikitext2_valid_detok"), "--out", str(out), "--speed-texts", "32",
        "--set", f"model={tiny_model}", "--set", "data.seq_len=32", "--set", "data.train_samples=32",
        "--set", "data.val_samples=16", "--set", "train.max_steps=2", "--set", "train.eval_every=1",
        "--set", "adapter.mlp_width=16"])
    assert code == 0
    text = (out / "RESULTS.md").read_text()
    assert text.count("| Injection (") == 3 and "| Static prefix (3 tokens) |" in text
