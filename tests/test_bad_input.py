"""Bad input to `embinject.train` and `embinject.tune`, table-driven: each case exits 2 with one line
naming the key or file, no traceback, and writes nothing (no output, no search directory, no MLflow
store). Real files: non-UTF-8 text, binary garbage, a broken parquet file, a read-only mount, a file
where a directory should be, a port nobody listens on."""

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embinject.train import __main__ as train_cli
from embinject.tune import __main__ as tune_cli

from .conftest import ROOT, free_port


@pytest.fixture(scope="module")
def read_only_dir(tmp_path_factory):
    """A real read-only place: a read-only tmpfs mount where this machine allows mounting, else /sys
    (not writable even by root)."""
    mnt = tmp_path_factory.mktemp("ro")
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], capture_output=True).returncode
        == 0
    ):
        yield mnt
        subprocess.run(["umount", str(mnt)], capture_output=True)
    else:
        yield Path("/sys")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny_model):
    d = tmp_path_factory.mktemp("bad")
    (d / "latin1.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "also fine"}\n{"text": "caf\xe9"}\n')
    (d / "garbage.txt").write_bytes(os.urandom(4096) + b"\xff\xfe")
    (d / "nul.txt").write_bytes(b"text\x00\x00\x00binary")
    (d / "broken.parquet").write_bytes(b"PAR1" + os.urandom(200))
    (d / "badjson.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    (d / "nofield.jsonl").write_text('{"body": "a"}\n{"body": "b"}\n')
    (d / "short.jsonl").write_text('{"text": "too short"}\n{"text": "also short"}\n')
    (d / "a_file").write_text("not a directory")
    model = d / "truncated-model"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (d / "dup.yaml").write_text("train:\n  lr: 0.001\nmethod: prompt\ntrain:\n  lr: 0.1\n")
    (d / "invalid.yaml").write_text("train: [lr: 1\n")
    return d


def run_main(main, argv, cwd: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old_cwd, old_term, old_env = os.getcwd(), signal.getsignal(signal.SIGTERM), dict(os.environ)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code
    finally:
        os.chdir(old_cwd)
        signal.signal(signal.SIGTERM, old_term)
        os.environ.clear()  # a search sets defaults (MLflow's retries, Ray's output) that later tests must not inherit
        os.environ.update(old_env)
    return code, out.getvalue(), err.getvalue()


def assert_one_error_line(code, err, expected):
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    assert expected in lines[0], lines[0]


TRAIN_CASES = [
    # (id, extra argv, expected text); {d} = bad files, {ro} = read-only dir, {cwd} = where the command runs
    ("missing-config", ["nope.yaml"], "nope.yaml: config file not found"),
    ("invalid-yaml", ["{d}/invalid.yaml"], "invalid.yaml: line 2 is not valid YAML"),
    ("duplicate-key", ["{d}/dup.yaml"], "duplicate key 'train'"),
    ("lr-nan", ["--set", "train.lr=.nan"], "train.lr: expected a finite number, got nan"),
    ("lr-inf", ["--set", "train.lr=.inf"], "train.lr: expected a finite number, got inf"),
    ("lr-text", ["--set", "train.lr=fast"], "train.lr: expected a number, got 'fast'"),
    ("batch-zero", ["--set", "train.batch_size=0"], "train.batch_size: expected a value > 0"),
    ("method", ["--set", "method=magic"], "method: expected one of"),
    ("unknown-key", ["--set", "trian.lr=1"], "trian: unknown key (did you mean 'train'?)"),
    (
        "unknown-nested-key",
        ["--set", "adapter.mlp_widht=3"],
        "adapter.mlp_widht: unknown key (did you mean 'mlp_width'?)",
    ),
    ("set-without-value", ["--set", "train.lr"], "--set train.lr: expected dotted.key=value"),
    ("divergence-factor", ["--set", "train.divergence_factor=-1"], "train.divergence_factor: expected a value >= 0"),
    ("data-missing", ["--set", "data.path=./no/such/data.jsonl"], "data.path: {cwd}/no/such/data.jsonl does not exist"),
    ("data-not-utf8", ["--set", "data.path={d}/latin1.jsonl"], "latin1.jsonl line 3 is not UTF-8 text"),
    ("data-garbage", ["--set", "data.path={d}/garbage.txt"], "garbage.txt line"),
    ("data-nul", ["--set", "data.path={d}/nul.txt"], "nul.txt holds binary data"),
    ("data-parquet", ["--set", "data.path={d}/broken.parquet"], "broken.parquet is not a readable parquet file"),
    ("data-json", ["--set", "data.path={d}/badjson.jsonl"], "badjson.jsonl line 2 is not valid JSON"),
    ("data-field", ["--set", "data.path={d}/nofield.jsonl"], "data.text_field: 'text' not found"),
    ("data-no-windows", ["--set", "data.path={d}/short.jsonl"], "data.path: the train split has no windows"),
    ("model-missing", ["--set", "model=./no-such-model"], "model: {cwd}/no-such-model does not exist"),
    ("model-truncated", ["--set", "model={d}/truncated-model"], "model: cannot load"),
    (
        "encoder-missing",
        ["--set", "adapter.embedding_model=./no-such-encoder"],
        "adapter.embedding_model: {cwd}/no-such-encoder does not exist",
    ),
    # a trained encoder (adapter.encoder_rank) on a layer the model lacks, or with no target module in its layers
    (
        "encoder-layer",
        [
            "--set",
            "adapter.encoder_rank=2",
            "--set",
            "adapter.embed_source=previous",
            "--set",
            "adapter.embedding_model=lm-hidden:9",
        ],
        "adapter.embedding_model: lm-hidden:9 is not a layer of this model (0 to 2)",
    ),
    (
        "encoder-target-modules",
        [
            "--set",
            "adapter.encoder_rank=2",
            "--set",
            "adapter.embed_source=previous",
            "--set",
            "adapter.embedding_model=lm-hidden:1",
            "--set",
            "adapter.target_modules=[nope]",
        ],
        "adapter.target_modules: none of ['nope'] is a linear layer in the LM's first 1 layers",
    ),
    (
        "train-stride-too-long",
        ["--set", "data.train_stride=33"],
        "data.train_stride: at most data.seq_len (32): a larger stride would skip text, got 33",
    ),
    (
        "train-stride-examples",
        ["--set", "data.train_stride=8", "--set", "data.target_template={{text}}"],
        "data.train_stride: cuts text windows; prompt/target examples (data.target_template) are one sequence each",
    ),
    ("set-comment", ["--set", "train.lr=3e-4 #3"], "--set train.lr=3e-4 #3: ' #' starts a YAML comment"),
    ("output-under-file", ["--output-dir", "{d}/a_file/out"], "--output-dir: cannot write to"),
    ("output-read-only", ["--output-dir", "{ro}/out"], "--output-dir: cannot write to"),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_bad_train_input(case, tmp_path, tiny_overrides, bad_files, read_only_dir):
    _, extra, expected = case
    fill = lambda a: a.format(d=bad_files, ro=read_only_dir)  # noqa: E731
    extra = [fill(a) for a in extra]
    config = [extra.pop(0)] if extra and not extra[0].startswith("-") else []
    argv = config + [x for o in tiny_overrides for x in ("--set", o)] + extra
    if "--output-dir" not in argv:
        argv += ["--output-dir", "out"]
    code, _, err = run_main(train_cli.main, argv, tmp_path)
    assert_one_error_line(code, err, expected.format(cwd=tmp_path))  # relative paths resolved where the command ran
    assert not (tmp_path / "out").exists() and not any(tmp_path.iterdir())  # nothing written


def test_unwritable_cache_is_found_before_training(tmp_path, tiny_overrides, read_only_dir, monkeypatch):
    monkeypatch.setenv("EMBINJECT_CACHE", str(read_only_dir / "cache"))
    code, _, err = run_main(
        train_cli.main, [x for o in tiny_overrides for x in ("--set", o)] + ["--output-dir", "out"], tmp_path
    )
    assert_one_error_line(code, err, "EMBINJECT_CACHE: cannot write to")
    assert not any(tmp_path.iterdir())


def search_spec(tiny_model: str) -> dict:
    return {
        "model": tiny_model,
        "method": "prompt",
        "data": {"path": "builtin:python-docs", "seq_len": 32, "train_samples": 32, "val_samples": 16},
        "adapter": {"prefix_len": 2},
        "train": {"batch_size": 8, "max_steps": 4, "eval_every": 2},
        "search": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}},
        "tune": {"name": "bad", "num_samples": 2, "scheduler": {"type": "none"}, "storage_path": "runs"},
        "mlflow": {"experiment": "bad-input"},
    }


TUNE_CASES = [
    ("search-missing", None, [], "nope.yaml: config file not found"),
    ("search-duplicate-key", "duplicate", [], "duplicate key 'tune'"),
    ("lr-nan", None, ["--set", "train.lr=.nan"], "train.lr: expected a finite number"),
    (
        "loguniform-nan",
        None,
        ["--set", "search.train.lr={{loguniform: [.nan, 0.1]}}"],
        "search.train.lr.loguniform: expected finite numbers",
    ),
    (
        "uniform-inf",
        None,
        ["--set", "search.train.lr={{uniform: [0.001, .inf]}}"],
        "search.train.lr.uniform: expected finite numbers",
    ),
    (
        "choice-nan",
        None,
        ["--set", "search.train.lr={{choice: [0.001, .nan]}}"],
        "search.train.lr: expected a finite number",
    ),
    ("cpus-nan", None, ["--set", "tune.resources.cpus=.nan"], "tune.resources.cpus: expected a finite number"),
    ("max-failures", None, ["--set", "tune.max_failures=-1"], "tune.max_failures: expected a value >= 0"),
    (
        "pack-zero",
        None,
        ["--set", "tune.pack=0"],
        "tune.pack: expected auto, off or a number of trials per pack (1 or more), got 0",
    ),
    (
        "pack-word",
        None,
        ["--set", "tune.pack=always"],
        "tune.pack: expected auto, off or a number of trials per pack (1 or more), got 'always'",
    ),
    ("pack-fraction", None, ["--set", "tune.pack=2.5"], "tune.pack: expected auto, off or a number of trials per pack"),
    (
        "warm-missing-folder",
        None,
        ["--set", "tune.warm_start=[{d}/no_search]"],
        "tune.warm_start[0]: no search folder at",
    ),
    (
        "warm-not-a-search",
        None,
        ["--set", "tune.warm_start=[{d}]"],
        "tune.warm_start[0]: {d} is not a finished embinject search",
    ),
    (
        "warm-no-store",
        None,
        ["--set", "tune.warm_start=[runs:/abc]"],
        "tune.warm_start[0]: no MLflow store at sqlite:///",
    ),
    (
        "warm-entry",
        None,
        ["--set", "tune.warm_start=[3]"],
        "tune.warm_start[0]: expected a search folder, runs:/PARENT_RUN_ID",
    ),
    (
        "point-key",
        None,
        ["--set", "tune.points_to_evaluate=[{{train.lrr: 0.1}}]"],
        "tune.points_to_evaluate[0].train.lrr",
    ),
    ("storage-under-file", None, ["--set", "tune.storage_path={d}/a_file/runs"], "tune.storage_path: cannot write to"),
    ("storage-read-only", None, ["--set", "tune.storage_path={ro}/runs"], "tune.storage_path: cannot write to"),
    (
        "sqlite-read-only",
        None,
        ["--set", "mlflow.tracking_uri=sqlite:///{ro}/mlflow.db"],
        "mlflow.tracking_uri: cannot write to",
    ),
    (
        "mlflow-unreachable",
        None,
        ["--set", "mlflow.tracking_uri=http://127.0.0.1:{port}"],
        "mlflow.tracking_uri: cannot reach http://127.0.0.1:",
    ),
    ("address-unreachable", None, ["--address", "127.0.0.1:{port}"], "--address 127.0.0.1:"),
    ("resume-nothing", None, ["--resume"], "--resume: no earlier search named 'bad'"),
    ("data-not-utf8", None, ["--set", "data.path={d}/latin1.jsonl"], "latin1.jsonl line 3 is not UTF-8 text"),
    ("data-parquet", None, ["--set", "data.path={d}/broken.parquet"], "broken.parquet is not a readable parquet file"),
    ("data-relative-missing", None, ["--set", "data.path=../no/such/data"], "data.path:"),
]


@pytest.mark.parametrize("case", TUNE_CASES, ids=[c[0] for c in TUNE_CASES])
def test_bad_tune_input(case, tmp_path, tiny_model, bad_files, read_only_dir):
    _, variant, extra, expected = case
    spec = search_spec(tiny_model)
    path = tmp_path / "search.yaml"
    if variant == "duplicate":
        path.write_text(yaml.safe_dump(spec) + "tune:\n  num_samples: 3\n")
    else:
        path.write_text(yaml.safe_dump(spec))
    port = free_port()
    extra = [a.format(d=bad_files, ro=read_only_dir, port=port) for a in extra]
    expected = expected.format(d=bad_files)
    argv = ["nope.yaml"] if case[0] == "search-missing" else [str(path)]
    code, _, err = run_main(tune_cli.main, argv + extra, tmp_path)
    assert_one_error_line(code, err, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search.yaml"]  # no runs/, no mlflow.db, nothing


def test_bad_input_from_a_real_process_has_no_traceback(tmp_path, tiny_model):
    """The same contract seen from outside: a subprocess, its exit code and its whole stderr."""
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(search_spec(tiny_model)))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "embinject.tune",
            str(path),
            "--set",
            f"mlflow.tracking_uri=http://127.0.0.1:{free_port()}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        line for line in proc.stderr.splitlines() if line.startswith("error: mlflow.tracking_uri: cannot reach")
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search.yaml"]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            ["--set", "mlflow.register_as=team/adapter"],
            "error: mlflow.register_as: MLflow refuses '/' and ':' in a registered "
            "model name, got 'team/adapter' (try 'team-adapter')",
        ),
        (
            ["--dry-run", "--set", "mlflow.register_as=a:b"],
            "error: mlflow.register_as: MLflow refuses '/' and ':' in a registered model name, got 'a:b' (try 'a-b')",
        ),
        (
            ["--dry-run", "--set", "mlflow.experiment="],
            "error: mlflow.experiment: MLflow refuses an empty experiment name",
        ),
    ],
    ids=["register-slash", "register-colon-dry-run", "experiment-empty-dry-run"],
)
def test_a_name_mlflow_refuses_is_named_before_anything_runs(tmp_path, tiny_model, extra, expected):
    """MLflow would refuse these only when the search sends them: the registered model's name at the very end, after
    every trial ran. The command names the key at once, the dry run too, and creates nothing."""
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(search_spec(tiny_model)))
    proc = subprocess.run(
        [sys.executable, "-m", "embinject.tune", str(path), *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2 and [line for line in proc.stderr.splitlines() if line.strip()] == [expected], (
        proc.stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search.yaml"]  # no runs/, no mlflow.db, nothing
