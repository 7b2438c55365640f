import json
import os

import pytest
import torch

from embinject.config import DataConfig
from embinject.config_files import load_config
from embinject.data import LAZY_READ_BYTES, build_windows, select_windows, tokenize_examples
from embinject.documents import load_documents
from embinject.encoders import FourierEncoder, Pooling, cached_embeddings, load_encoder
from embinject.errors import ConfigError
from embinject.models import load_frozen_lm, tokenizer_fingerprint


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_frozen_lm(tiny_model).tokenizer


def test_builtin_python_docs_split_is_deterministic_and_disjoint():
    train, val = load_documents(DataConfig(path="builtin:python-docs"))
    assert len(train) > 50 and len(val) > 5 and not set(train) & set(val)
    assert load_documents(DataConfig(path="builtin:python-docs")) == (train, val)


def test_shared_folder_uses_its_own_validation_split(shared_data):
    train, val = load_documents(DataConfig(path=str(shared_data / "fineweb_edu_sample")))
    assert (len(train), len(val)) == (135, 15)


def test_sst2_never_reads_the_test_split(shared_data):
    train, val = load_documents(DataConfig(path=str(shared_data / "sst2")))
    assert (len(train), len(val)) == (6920, 872)


def test_single_files_txt_jsonl_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"body": f"document number {i} " * 20} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.parquet"):
        train, val = load_documents(DataConfig(path=str(tmp_path / name), text_field="body"))
        assert len(train) + len(val) == 20 and len(val) == 2
    with pytest.raises(ConfigError, match="data.text_field: 'text' not found"):
        load_documents(DataConfig(path=str(tmp_path / "d.jsonl")))
    folder = tmp_path / "txt"
    folder.mkdir()
    for i in range(4):
        (folder / f"part{i}.txt").write_text(f"text file {i} " * 50)
    train, val = load_documents(DataConfig(path=str(folder), val_fraction=0.25))
    assert (len(train), len(val)) == (3, 1)


def test_windows_are_cached_and_previous_is_the_preceding_window(tok):
    cfg = DataConfig(seq_len=16)
    key = tokenizer_fingerprint(tok)
    train, val = build_windows(cfg, tok, key)
    again, _ = build_windows(cfg, tok, key)
    assert torch.equal(train.tokens, again.tokens)
    # reconstruct: a window's `previous` must appear immediately before it in some document
    docs, _ = load_documents(cfg)
    ids = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    i = int(train.has_previous.nonzero()[0])
    seq = train.previous[i].tolist() + train.tokens[i].tolist()
    assert any(any(d[j : j + 32] == seq for j in range(0, len(d) - 31, 16)) for d in ids)
    chosen = select_windows(train, 10, "previous", "train")
    assert len(chosen) == 10 and chosen.has_previous.all()


def test_a_training_stride_cuts_overlapping_training_windows_and_leaves_validation_as_it_was(tok):
    side_by_side = DataConfig(seq_len=16)
    overlapping = DataConfig(seq_len=16, train_stride=8)
    key = tokenizer_fingerprint(tok)
    train, val = build_windows(side_by_side, tok, key)
    train8, val8 = build_windows(overlapping, tok, key)
    assert torch.equal(val.tokens, val8.tokens) and torch.equal(val.previous, val8.previous)
    # twice the windows with preceding text, less one per document; every window side by side is among them
    assert 1.9 * int(train.has_previous.sum()) < int(train8.has_previous.sum()) <= 2 * int(train.has_previous.sum())
    assert {tuple(t) for t in train.tokens.tolist()} <= {tuple(t) for t in train8.tokens.tolist()}
    # each overlapping window's `previous` is the 16 tokens just before it in its document
    docs, _ = load_documents(overlapping)
    text = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    for i in train8.has_previous.nonzero().flatten()[:20].tolist():
        seq = train8.previous[i].tolist() + train8.tokens[i].tolist()
        assert any(d[j : j + 32] == seq for d in text for j in range(0, len(d) - 31, 8))
    for bad, match in ((17, "data.train_stride: at most data.seq_len \\(16\\)"), (0, "data.train_stride")):
        with pytest.raises(ConfigError, match=match):
            load_config(None, ["data.seq_len=16", f"data.train_stride={bad}"])


def test_fourier_encoder_is_deterministic_and_sized():
    enc = FourierEncoder(vocab_size=1000, n_features=8)
    ids = torch.randint(0, 1000, (5, 12))
    a, b = enc.encode(ids), enc.encode(ids)
    assert a.shape == (5, 16) and torch.equal(a, b)
    assert not torch.allclose(enc.encode(ids[:, :6]), a)


def test_embedding_cache_encodes_once():
    calls = []

    class Counting(FourierEncoder):
        def encode(self, ids):
            calls.append(1)
            return super().encode(ids)

    ids = torch.randint(0, 1000, (4, 8))
    first = cached_embeddings("count-test", ids, lambda: Counting(1000, 4))
    second = cached_embeddings("count-test", ids, lambda: Counting(1000, 4))
    assert len(calls) == 1 and torch.equal(first, second)


def test_bundled_sentence_encoder_dimension_read_from_model(tok):
    enc = load_encoder("bundled:all-minilm-l6-v2", None, tok, "tiny")
    emb = enc.encode(torch.randint(0, 500, (3, 10)))
    assert enc.dim == 384 and emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-4)  # the bundled pipeline normalises
    # `adapter.pooling: chunks` scales its chunk means as the sentence vectors: unit length, not the raw states' 3-9
    raw = torch.stack([s.norm(dim=-1).mean() for s in enc.token_states(torch.randint(0, 500, (3, 10)))])
    chunked = load_encoder("bundled:all-minilm-l6-v2", None, tok, "tiny", pooling=Pooling("chunks", 2)).encode(
        torch.randint(0, 500, (3, 10))
    )
    assert (raw > 2).all() and chunked.shape == (3, 2, 384)
    assert torch.allclose(chunked.norm(dim=-1), torch.ones(3, 2), atol=1e-4)


def test_unreachable_hub_dataset_is_a_clear_error(tok, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="data.path: cannot open hub dataset 'someone/not-a-dataset'"):
        build_windows(DataConfig(path="someone/not-a-dataset"), tok, "k")


def test_prompt_target_examples_score_only_the_target(tmp_path, tok):
    rows = [
        {"question": f"What is {i} plus one?", "answer": str(i + 1), "kind": "even" if i % 2 == 0 else "odd"}
        for i in range(12)
    ]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DataConfig(
        path=str(tmp_path / "qa.jsonl"),
        seq_len=24,
        val_fraction=0.25,
        prompt_template="Q: {question}\nA:",
        target_template=" {answer}",
        where="kind=even",
    )
    train, val = build_windows(cfg, tok, tokenizer_fingerprint(tok))
    assert len(train) + len(val) == 6 and train.scored is not None
    for w in (train, val):
        for tokens, scored in zip(w.tokens, w.scored):
            target = tok.decode(tokens[scored].tolist(), skip_special_tokens=True)
            prompt = tok.decode(tokens[~scored].tolist(), skip_special_tokens=True)
            n = int(target) - 1
            assert n % 2 == 0 and prompt.startswith(f"Q: What is {n} plus one?")
            assert tokens[scored][-1] == tok.eos_token_id and not scored[0]
    again, _ = build_windows(cfg, tok, tokenizer_fingerprint(tok))  # from the disk cache
    assert torch.equal(again.scored, train.scored)


def test_long_example_prompt_is_cut_from_the_left(tok):
    w = tokenize_examples([("word " * 100 + "END", " yes")], tok, seq_len=12)
    assert int(w.scored[0].sum()) == len(tok(" yes", add_special_tokens=False)["input_ids"]) + 1
    assert tok.decode(w.tokens[0][~w.scored[0]].tolist()).endswith("END")


def test_example_templates_name_missing_fields(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"q": "a", "a": "b"}\n{"q": "c", "a": "d"}\n')
    with pytest.raises(ConfigError, match=r"data.target_template: field 'answer' not found .*fields: q, a"):
        load_documents(DataConfig(path=str(tmp_path / "d.jsonl"), target_template="{answer}"))
    with pytest.raises(ConfigError, match="data.where: field 'label' not found"):
        load_documents(DataConfig(path=str(tmp_path / "d.jsonl"), where="label=x"))


def test_a_data_file_of_hundreds_of_megabytes_is_read_only_as_far_as_the_windows_need(
    tmp_path, shared_data, tiny_model
):
    """A 70 MB JSON Lines file (more than LAZY_READ_BYTES) with a few windows asked for: read as far as they need,
    not whole (whole, a 200 MB file took 71 s and 8.4 GB here, and left a 715 MB cache entry)."""
    import json as json_module
    import subprocess
    import sys

    text = (shared_data / "wikipedia_en_sample" / "train.jsonl").read_text()
    big = tmp_path / "big.jsonl"
    with big.open("w") as fh:
        for _ in range(LAZY_READ_BYTES // len(text) + 6):
            fh.write(text)
    assert big.stat().st_size > LAZY_READ_BYTES
    script = (
        "import json, resource, sys, time; from transformers import AutoTokenizer; "
        "from embinject.config import DataConfig; "
        "from embinject.data import build_windows, select_windows; tok = AutoTokenizer.from_pretrained(sys.argv[2]); "
        "t0 = time.time(); cfg = DataConfig(path=sys.argv[1], seq_len=32, train_samples=32, val_samples=16); "
        "train, val = build_windows(cfg, tok, 'k'); train = select_windows(train, 32, 'previous', 'train'); "
        "val = select_windows(val, 16, 'previous', 'validation'); print(json.dumps({'seconds': time.time() - t0, "
        "'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'train': len(train), 'val': len(val)}))"
    )
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(big), tiny_model],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "EMBINJECT_CACHE": str(cache)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json_module.loads(proc.stdout.splitlines()[-1])
    assert out["train"] == 32 and out["val"] == 16
    assert out["seconds"] < 20 and out["peak_mb"] < 2000, out
    assert sum(f.stat().st_size for f in (cache / "data").iterdir()) < 1 << 20
