"""Using what training and search produce, with the tools people already know: the `embinject` command
(generate, evaluate, export, report), PEFT exports loaded by PEFT itself, and an adapter as an MLflow
pyfunc model served over HTTP by `mlflow models serve`. Tiny model, real PEFT/MLflow/torch."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from embinject import report as report_cli
from embinject.adapters import LoadedAdapter, load_adapter
from embinject.cli import COMMANDS, main as cli_main
from embinject.config import config_keys
from embinject.config_files import load_config
from embinject.errors import ConfigError
from embinject.plots import best_trial_figure, perplexity_curves
from embinject.train import prepare, train, write_outputs

from .conftest import ROOT, free_port
from .test_bad_input import assert_one_error_line, run_main

METHODS = ("prompt", "injection", "prefix", "lora")


def run_cli(*args, timeout=300, cwd=ROOT):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "embinject", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    """One trained adapter directory per method (tiny model, built-in data, a few steps)."""
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for method in METHODS:
        cfg = load_config(
            None,
            [
                f"model={tiny_model}",
                f"method={method}",
                "data.seq_len=32",
                "data.train_samples=64",
                "data.val_samples=32",
                "train.batch_size=8",
                "train.max_steps=4",
                "train.lr=1e-2",
                "train.progress=false",
                "adapter.prefix_len=3",
                "adapter.mlp_width=16",
                "adapter.embedding_model=fourier",
                "adapter.fourier_features=16",
                "adapter.context_tokens=8",
                "adapter.rank=2",
            ],
        )
        result, trained = train(cfg)
        write_outputs(root / method, result, trained)
        trained.release()
        out[method] = root / method / "adapter"
    return out


def test_every_subcommand_has_help_and_train_lists_every_config_key(monkeypatch):
    monkeypatch.setattr("embinject.errors._via_embinject", False)  # the dispatcher sets it: as it was, afterwards
    top = run_cli("--help")  # a real process; each command's help below in this process
    assert top.returncode == 0 and all(name in top.stdout for name in COMMANDS)
    for name in COMMANDS:
        code, out, err = run_main(cli_main, [name, "--help"], ROOT)
        assert code == 0 and out.startswith(f"usage: embinject {name}"), (name, err[-500:])
        if name == "train":
            text = out
    for key, default, _ in config_keys():
        assert f"  {key} = " in text, key
    assert "  train.divergence_factor = 10.0" in text and "  method = injection  [baseline | prompt" in text
    module = subprocess.run(
        [sys.executable, "-m", "embinject.generate", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert module.returncode == 0 and "--adapter" in module.stdout
    assert run_cli("fly").returncode == 2


# what takes seconds to import: `--help` must not wait for any of it
HEAVY = ("torch", "ray", "mlflow", "matplotlib", "transformers")
# `python -m embinject.train` is left out: Python imports the package `embinject.train` (the training loop, torch)
# before its __main__ runs; `embinject train --help` is the light way
HELP_ENTRIES = [
    ("embinject",),
    *(("embinject", name) for name in COMMANDS),
    *(("embinject." + name,) for name in COMMANDS if name != "train"),
]


@pytest.mark.parametrize("entry", HELP_ENTRIES, ids=" ".join)
def test_help_of_every_command_imports_none_of_the_heavy_libraries(entry):
    """Structural, not timed: a fresh process runs the entry as `python -m` does and lists what it imported."""
    module, *argv = entry
    script = (
        "import json, runpy, sys\n"
        f"sys.argv = [{module!r}, *{argv!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        f"print(json.dumps({{'code': code, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result == {"code": 0, "heavy": []}, (entry, result)
    assert "usage: " in proc.stdout


def test_a_lora_adapter_loaded_beside_others_leaves_their_lm_frozen(adapters):
    """LoRA's layers go into the LM it is loaded into. In one process (two MLflow models, a notebook, a --mix) every
    other adapter keeps the frozen LM: the LoRA adapter has its own copy."""
    import torch

    prompt = load_adapter(str(adapters["prompt"]))
    ids = torch.tensor([prompt.tokenizer("The module returns a list")["input_ids"]])
    with torch.no_grad():
        before = prompt.lm.model(input_ids=ids).logits
        lora = load_adapter(str(adapters["lora"]))
        try:
            assert lora.lm is not prompt.lm
            assert torch.equal(prompt.lm.model(input_ids=ids).logits, before)
            assert not torch.allclose(lora.lm.model(input_ids=ids).logits, before)  # its own LM does carry the LoRA
        finally:
            lora.close()


@pytest.mark.parametrize("method", METHODS)
def test_generate_works_for_every_method(adapters, method):
    proc = run_cli(
        "generate",
        "--adapter",
        str(adapters[method]),
        "--prompt",
        "The module",
        "--prompt",
        "Return",
        "--context",
        "a list of names",
        "--context",
        "an integer",
        "--max-new-tokens",
        "4",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert [o["prompt"] for o in out] == ["The module", "Return"] and all(
        isinstance(o["generated_text"], str) for o in out
    )


def test_generate_samples_reproducibly_and_mixes_prefixes(adapters):
    a = LoadedAdapter(adapters["prefix"])
    same = [a.generate(["The module"], temperature=1.0, top_k=20, seed=7, max_new_tokens=6) for _ in range(2)]
    assert same[0] == same[1]
    # alpha = 1 is the adapter itself, token for token
    assert a.generate(["The module"], mix=a, alpha=1.0, max_new_tokens=6) == a.generate(
        ["The module"], max_new_tokens=6
    )
    proc = run_cli(
        "generate",
        "--adapter",
        str(adapters["prefix"]),
        "--mix",
        str(adapters["prompt"]),
        "--alpha",
        "0.5",
        "--prompt",
        "x",
    )
    assert proc.returncode == 2 and "--mix: mixing is defined for two prompt or two prefix adapters" in proc.stderr


def test_injection_with_previous_text_needs_a_context(tiny_model, tmp_path):
    import yaml

    cfg = load_config(
        None,
        [
            f"model={tiny_model}",
            "method=injection",
            "data.seq_len=32",
            "data.train_samples=32",
            "data.val_samples=16",
            "train.max_steps=1",
            "train.progress=false",
            "adapter.mlp_width=8",
            "adapter.embedding_model=fourier",
            "adapter.fourier_features=8",
            "adapter.embed_source=previous",
        ],
    )
    result, trained = train(cfg)
    write_outputs(tmp_path / "prev", result, trained)
    adapter = LoadedAdapter(tmp_path / "prev" / "adapter")
    with pytest.raises(
        ConfigError, match="--context: this injection adapter was trained with adapter.embed_source: previous"
    ):
        adapter.generate(["Return"])
    with_context = adapter.generate(["Return"], ["The preceding paragraph about lists."], max_new_tokens=3)
    assert len(with_context) == 1
    assert (
        yaml.safe_load((tmp_path / "prev" / "adapter" / "embinject.json").read_text())["config"]["adapter"][
            "embed_source"
        ]
        == "previous"
    )


def test_evaluate_reproduces_training_perplexity_and_scores_other_data(adapters, shared_data, tmp_path):
    for method in ("prompt", "lora"):
        result = json.loads((adapters[method].parent / "result.json").read_text())
        proc = run_cli("evaluate", "--adapter", str(adapters[method]), "--output", str(tmp_path / f"{method}.json"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = json.loads(proc.stdout)
        assert out["val_perplexity"] == pytest.approx(result["val_perplexity"], rel=1e-5)
        assert out["baseline_perplexity"] == pytest.approx(result["baseline_perplexity"], rel=1e-6)  # LoRA switched off
        assert json.loads((tmp_path / f"{method}.json").read_text()) == out
    other = run_cli(
        "evaluate",
        "--adapter",
        str(adapters["prompt"]),
        "--set",
        f"data.path={shared_data / 'wikitext2_valid_detok'}",
        "--set",
        "data.val_samples=8",
    )
    assert other.returncode == 0, other.stderr[-2000:]
    assert json.loads(other.stdout)["val_windows"] == 8 and "wikitext2" in json.loads(other.stdout)["data"]
    bad = run_cli("evaluate", "--adapter", str(adapters["prompt"]), "--set", "adapter.prefix_len=9")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --set adapter.prefix_len: evaluate takes data.*")


def _peft_nll(peft_model, ids: torch.Tensor, labels: torch.Tensor, n_virtual: int) -> float:
    """Summed NLL over the positions embinject scores, from PEFT's own forward pass."""
    with torch.no_grad():
        logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
    logits = logits[:, n_virtual:][:, :-1]  # prompt tuning returns the virtual positions too
    targets = labels[:, 1:]
    mask = targets != -100
    return float(torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum"))


def _check_model_card(out: Path, method: str, val_perplexity: float) -> None:
    """The export's README.md is a Hub model card (read back offline by huggingface_hub) carrying the adapter's result;
    the base model is a local directory here, which the Hub's base_model field does not take."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model is None
    assert {"embinject", "peft", {"prompt": "prompt-tuning", "prefix": "prefix-tuning", "lora": "lora"}[method]} <= set(
        card.data.tags
    )
    (result,) = card.data.eval_results
    assert result.metric_type == "perplexity" and result.metric_value == pytest.approx(val_perplexity)
    assert f"{val_perplexity:.4g}" in card.text and "AutoPeftModelForCausalLM.from_pretrained" in card.text


@pytest.mark.parametrize("method", ["prompt", "prefix", "lora"])
def test_peft_export_reproduces_embinject_exactly(adapters, method, tmp_path, tiny_model):
    import peft
    from peft import AutoPeftModelForCausalLM

    out = tmp_path / "peft"
    proc = run_cli("export", "--adapter", str(adapters[method]), "--format", "peft", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model  # a local model: its own path (no hub id on record)
    assert config["peft_version"] == peft.__version__  # written by PEFT's own config classes
    recorded = json.loads((adapters[method] / "embinject.json").read_text())["val_perplexity"]
    _check_model_card(out, method, recorded)
    _check_model_card(adapters[method] / "peft", method, recorded)  # the copy training writes beside the adapter
    ours = LoadedAdapter(adapters[method])
    val = prepare(ours.cfg).val
    ids, labels = val["input_ids"][:8], val["labels"][:8]
    with torch.no_grad():
        nll, _ = ours.method.nll({"input_ids": ids, "labels": labels})
    ours.close()
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    n_virtual = config.get("num_virtual_tokens", 0) if method == "prompt" else 0
    assert _peft_nll(peft_model, ids, labels, n_virtual) == pytest.approx(float(nll), rel=1e-5)


def test_pyfunc_model_predicts_for_every_method_and_is_served_over_http(adapters, tmp_path):
    import mlflow.pyfunc
    import pandas as pd

    for method in METHODS:
        target = tmp_path / f"model-{method}"
        proc = run_cli("export", "--adapter", str(adapters[method]), "--format", "mlflow", "--output-dir", str(target))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Add type hints to the `predict` method" not in proc.stderr  # predict's input is typed as a DataFrame
        assert (target / "MLmodel").is_file() and not list(target.rglob("*.pkl"))  # models from code: nothing pickled
        model = mlflow.pyfunc.load_model(str(target))
        frame = pd.DataFrame({"prompt": ["The module", "Return"], "context": ["lists", "integers"]})
        out = model.predict(frame, params={"max_new_tokens": 3})
        assert list(out.columns) == ["generated_text"] and len(out) == 2
    # prefix mixing through the model's alpha parameter
    mixed = tmp_path / "model-mix"
    assert (
        run_cli(
            "export",
            "--adapter",
            str(adapters["prefix"]),
            "--format",
            "mlflow",
            "--mix",
            str(adapters["prefix"]),
            "--output-dir",
            str(mixed),
        ).returncode
        == 0
    )
    model = mlflow.pyfunc.load_model(str(mixed))
    frame = pd.DataFrame({"prompt": ["The module"]})
    assert model.predict(frame, params={"alpha": 1.0, "max_new_tokens": 4}).equals(
        mlflow.pyfunc.load_model(str(tmp_path / "model-prefix")).predict(frame, params={"max_new_tokens": 4})
    )

    port = free_port()
    bin_dir = Path(sys.executable).parent  # mlflow starts uvicorn from PATH, as in an activated virtual environment
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_bin = str(bin_dir / "mlflow")
    server = subprocess.Popen(
        [
            mlflow_bin,
            "models",
            "serve",
            "-m",
            str(tmp_path / "model-injection"),
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        body = json.dumps(
            {"dataframe_records": [{"prompt": "The module", "context": "lists"}], "params": {"max_new_tokens": 3}}
        ).encode()
        deadline, answer = time.time() + 120, None
        while time.time() < deadline and answer is None:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
                )
                answer = json.loads(urllib.request.urlopen(req, timeout=60).read())
            except OSError:
                assert server.poll() is None, server.stdout.read()[-3000:]
                time.sleep(1)
        assert answer is not None and isinstance(answer["predictions"][0]["generated_text"], str), answer
        # Requests outside the documented bounds are HTTP 400 with one line naming the parameter, at once.
        for record, params, named in [
            ({"prompt": "The module"}, {"max_new_tokens": 100000}, "max_new_tokens"),
            ({"prompt": "The module"}, {"max_new_tokens": -5}, "max_new_tokens"),
            ({"prompt": "The module"}, {"temperature": -1.0}, "temperature"),
            ({"prompt": "The module"}, {"top_k": -3}, "top_k"),
            ({"prompt": None}, {}, "has no prompt text"),
        ]:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                headers={"Content-Type": "application/json"},
                data=json.dumps({"dataframe_records": [record], "params": params}).encode(),
            )
            started = time.time()
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(req, timeout=60)
            assert refused.value.code == 400 and named in refused.value.read().decode(), (record, params)
            assert time.time() - started < 10
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_report_from_a_directory_that_is_not_a_search_names_it(tmp_path):
    proc = run_cli("report", str(tmp_path))
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == f"error: {tmp_path}: no summary.csv (not a finished embinject search directory)"
    )
    (tmp_path / "trial_0a1b2c3d").mkdir()  # a search's folder before its end (running, or stopped by a kill)
    proc = run_cli("report", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: {tmp_path}: this search has not finished (no summary.csv yet: it is running, or was stopped); finish "
        "it with `python -m embinject.tune SEARCH.yaml --resume`, or read its trials so far with embinject.load_search"
    )


def _hand_made_search(folder: Path) -> tuple[str, dict]:
    """A search folder as `embinject tune` leaves it, written by hand: summary.csv, each trial's result.json and the
    search's val_perplexity_curves.png. Returns the best trial's id and the curves."""
    curves = {"0a1b2c3d": ([2, 4], [60.0, 52.5]), "5e6f7a8b": ([2, 4], [59.0, 55.0]), "9c0d1e2f": ([2], [61.0])}
    lines = [
        "trial_id,method,train.lr,final_val_perplexity,best_val_perplexity,baseline_perplexity,steps,"
        "stopped_early,status"
    ]
    for trial, (steps, ppl) in curves.items():
        (folder / f"trial_{trial}").mkdir(parents=True)
        (folder / f"trial_{trial}" / "result.json").write_text(
            "".join(json.dumps({"step": s, "val_perplexity": v}) + "\n" for s, v in zip(steps, ppl))
        )
        lines.append(f"{trial},prompt|lora,0.001,{ppl[-1]},{min(ppl)},63.5,{steps[-1]},{len(steps) == 1},ok")
    (folder / "summary.csv").write_text("\n".join(lines) + "\n")
    perplexity_curves(curves, folder / "val_perplexity_curves.png", 63.5)
    return "0a1b2c3d", curves


def test_report_prints_an_aligned_table_in_a_terminal_and_markdown_elsewhere_and_draws_its_own_figure(tmp_path):
    import pty

    search = tmp_path / "search"
    best, curves = _hand_made_search(search)
    code, piped, err = run_main(report_cli.main, [str(search)], tmp_path)  # stdout a StringIO: not a terminal
    assert code == 0, err
    assert f"| 1 | {best} | prompt\\|lora |" in piped and "|---:|" in piped  # Markdown, as in report.md
    markdown = (search / "report.md").read_text()
    # in a terminal (stdout a pseudo-terminal, as `script` gives): aligned columns, no Markdown; report.md unchanged
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "embinject", "report", str(search)],
        cwd=ROOT,
        stdout=follower,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    shown = b"".join(chunks).decode().replace("\r\n", "\n")
    table = [line for line in shown.splitlines() if line.startswith(("rank ", "----", "   "))]
    assert len(table) == 2 + 3 and "|" not in "".join(table[:2]) and "![" not in shown, shown
    assert table[2].split() == ["1", best, "prompt|lora", "0.001", "52.5", "52.5", "4", "False", "ok"], shown
    column = table[0].index("best_val_perplexity") + len("best_val_perplexity")  # right-aligned numbers end there
    assert all(line[:column].endswith(("52.5", "55", "61")) for line in table[2:]), shown
    assert f"figure: {search / 'report_val_perplexity.png'}" in shown and (search / "report.md").read_text() == markdown
    # its figure is its own: the curves with the best trial marked and named, not a copy of the search's plot
    assert (search / "report_val_perplexity.png").read_bytes() != (search / "val_perplexity_curves.png").read_bytes()
    fig = best_trial_figure(curves, best, 52.5, 63.5, "search")
    labels = [t.get_text() for t in fig.axes[0].texts] + [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"best trial {best}\nbest_val_perplexity 52.5" in labels and f"best trial {best}" in labels, labels


@pytest.mark.parametrize(
    "case",
    [
        "not-a-dir",
        "no-meta",
        "unknown-model",
        "unknown-alias",
        "context-count",
        "max-new-tokens",
        "mix-peft",
        "prompt-too-long",
        "output-taken",
        "injection-peft",
        "bad-result",
        "unknown-run",
        "report-path",
        "unknown-command",
    ],
)
def test_bad_use_input_is_one_line_exit_2_and_writes_nothing(adapters, tmp_path, case, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_result = tmp_path / "bad-result"  # an adapter whose embinject.json records a perplexity that is not one
    shutil.copytree(adapters["prompt"], bad_result)
    meta = json.loads((bad_result / "embinject.json").read_text())
    (bad_result / "embinject.json").write_text(json.dumps({**meta, "val_perplexity": "low"}))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    out = tmp_path / "out"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args, expected = {
        "not-a-dir": (["generate", "--adapter", str(tmp_path / "nope"), "--prompt", "x"], "--adapter: "),
        "no-meta": (
            ["generate", "--adapter", str(empty), "--prompt", "x"],
            f"--adapter: {empty} holds no embinject.json",
        ),
        "unknown-model": (
            ["generate", "--adapter", "models:/nothing@champion", "--prompt", "x", "--tracking-uri", store],
            "--tracking-uri: no MLflow store at sqlite:///",
        ),
        "unknown-alias": (
            ["generate", "--adapter", "models:/nothing@champion", "--prompt", "x", "--tracking-uri", "STORE"],
            "--adapter: cannot download models:/nothing@champion from",
        ),
        "context-count": (
            ["generate", "--adapter", str(adapters["injection"]), "--prompt", "a", "--prompt", "b", "--context", "c"],
            "--context: give one per --prompt (2 prompts, 1 contexts)",
        ),
        "max-new-tokens": (
            ["generate", "--adapter", str(adapters["prompt"]), "--prompt", "a", "--max-new-tokens", "0"],
            "--max-new-tokens: expected a positive number, got 0",
        ),
        "prompt-too-long": (
            ["generate", "--adapter", str(adapters["prompt"]), "--prompt", "word " * 600],
            "exceed the model's context of 512 tokens",
        ),
        "mix-peft": (
            [
                "export",
                "--adapter",
                str(adapters["prefix"]),
                "--mix",
                str(adapters["prefix"]),
                "--output-dir",
                str(out),
            ],
            "--mix: only for --format mlflow",
        ),
        "output-taken": (
            ["export", "--adapter", str(adapters["prompt"]), "--output-dir", str(taken)],
            f"--output-dir: {taken} exists and is not an earlier export",
        ),
        "injection-peft": (
            ["export", "--adapter", str(adapters["injection"]), "--output-dir", str(out)],
            "--format peft: PEFT has no layout for injection adapters",
        ),
        "bad-result": (
            ["export", "--adapter", str(bad_result), "--output-dir", str(out)],
            f"{bad_result / 'embinject.json'}: 'val_perplexity' must be a perplexity",
        ),
        "unknown-run": (
            ["report", "0123abc", "--tracking-uri", "STORE", "--output-dir", str(out)],
            "0123abc: no such MLflow run",
        ),
        "report-path": (["report", str(tmp_path / "no" / "search")], "no such search directory"),
        "unknown-command": (["fly"], "unknown command 'fly'"),
    }[case]
    if "STORE" in args:  # an existing, empty store
        from mlflow.tracking import MlflowClient

        existing = tmp_path / "existing.db"
        MlflowClient(f"sqlite:///{existing}").search_experiments()
        args = [f"sqlite:///{existing}" if a == "STORE" else a for a in args]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("embinject.errors._via_embinject", False)  # the dispatcher sets it: as it was, afterwards
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # this process's temporary directory, to see what is left
    code, _, err = run_main(
        cli_main, args, tmp_path
    )  # in this process: the real-process contract is test_bad_input.py's
    assert_one_error_line(code, err, expected)
    assert not out.exists() and [p.name for p in taken.iterdir()] == ["notes.txt"]
    assert not list(scratch.glob("embinject-*"))  # a download that failed (unknown-alias) leaves no scratch directory
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates a store


@pytest.mark.parametrize("user_level, shown", [(None, False), ("INFO", True)])
def test_mlflow_info_lines_stay_quiet_unless_the_user_asks(tmp_path, user_level, shown):
    """MLflow resets its loggers from MLFLOW_LOGGING_LEVEL on first import; quiet_mlflow must hold through that,
    and a user's own MLFLOW_LOGGING_LEVEL wins."""
    script = (
        "import sys; from embinject.tracking import quiet_mlflow; quiet_mlflow('WARNING'); "
        "from mlflow.tracking import MlflowClient; MlflowClient(sys.argv[1]).search_experiments()"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    if user_level:
        env["MLFLOW_LOGGING_LEVEL"] = user_level
    proc = subprocess.run(
        [sys.executable, "-c", script, f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("INFO mlflow.store.db.utils: Creating initial MLflow database tables" in proc.stderr) == shown


def test_a_registered_adapter_whose_folder_was_moved_is_named_missing_where_it_was_recorded(adapters, tmp_path):
    """A search keeps its MLflow artifacts below its storage folder. Moved elsewhere, `generate --adapter
    models:/NAME@champion` finds the registered version but nothing at the location it records: one line naming that
    location (not "holds no embinject.json", which is about a folder that is there), exit 2."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    from embinject.adapters import adapter_directory
    from embinject.serving import save_pyfunc
    from embinject.tracking import SearchTracker

    search = tmp_path / "runs" / "search"
    search.mkdir(parents=True)
    (search / "search.yaml").write_text("tune: {}\n")
    model = save_pyfunc(adapters["prompt"], search / "champion_model")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SearchTracker(uri, "moved", search, tmp_path / "runs" / "mlartifacts")  # where a search keeps them
    tracker.start("search", {}, search / "search.yaml", {})
    tracker.trial_started("t1", "trial t1", {"method": "prompt"})
    tracker.trial_finished("t1", "FINISHED", {})
    tracker.finish(
        {"trials": 1},
        [],
        adapters["prompt"],
        "moved-adapter",
        model,
        "t1",
        {"trial_id": "t1"},
        [{"trial": "t1", "model": str(model), "rank": 1, "steps": 4, "val_perplexity": 1.0}],
    )
    assert tracker.state["registered_version"] == "1" and tracker.pending == 0
    with adapter_directory("models:/moved-adapter@champion", tracking_uri=uri) as found:  # usable where it was logged
        assert (found / "embinject.json").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version_by_alias("moved-adapter", "champion")
    recorded = url2pathname(urlparse(version.source).path)  # the champion's logged model's folder
    assert recorded.startswith(str(tmp_path / "runs" / "mlartifacts"))

    (tmp_path / "runs").rename(tmp_path / "elsewhere")
    proc = run_cli("generate", "--adapter", "models:/moved-adapter@champion", "--tracking-uri", uri, "--prompt", "x")
    assert proc.returncode == 2 and [line for line in proc.stderr.splitlines() if line.strip()] == [
        "error: --adapter: the artifacts of models:/moved-adapter@champion are missing at their recorded location "
        f"{recorded} (moved or deleted since they were logged); "
        "put them back there, or log and register the adapter again"
    ], proc.stderr
