"""The search system end to end on the tiny model and real shared data: a real local Ray
cluster, real Optuna + ASHA, a real MLflow SQLite store read back with MlflowClient."""

import csv
import errno
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmarks.many_trials import measure
from embinject.adapters import adapter_directory
from embinject.config import config_from_dict
from embinject.search_settings import TuneSettings
from embinject.errors import disk_full
from embinject.methods import load_method
from embinject.models import load_frozen_lm
from embinject.plots import ScoredTrial, optimization_history_figure, parallel_coordinate_figure, search_plots
from embinject.space import DefineByRun, load_search_file, parse_space, trial_config
from embinject.tracking import TIME_SPLIT, WALL, logged_model_name, mlflow_global_uris
from embinject.tracking.champion import champion_move
from embinject.train import autocast_dtype, prepare
from embinject.train.evaluation import perplexity
from embinject.tune import __main__ as tune_cli
from embinject.tune.driver import progress
from embinject.tune.driver.budget import asha_rungs
from embinject.tune.driver.folder import restore_superseded_checkpoints, snapshot_checkpoints
from embinject.tune.driver.internals import asha_rungs as scheduler_rungs, searcher_study
from embinject.tune.driver.results import pareto_front
from embinject.tune.driver.searcher import make_scheduler, make_searcher, optuna_sampler
from embinject.tune.driver.study import close_study
from embinject.tune.driver.warm import read_warm_start

from .conftest import ROOT
from .test_bad_input import assert_one_error_line, run_main


def write_search(path: Path, tiny_model: str, data: str, storage: Path, **overrides) -> Path:
    spec = {
        "model": tiny_model,
        "method": "injection",
        "data": {"path": data, "seq_len": 32, "train_samples": 96, "val_samples": 24},
        "adapter": {"embedding_model": "fourier", "fourier_features": 16, "context_tokens": 8, "prefix_len": 2},
        "train": {"batch_size": 8, "max_steps": 12, "eval_every": 3, "patience": 0},
        "search": {
            "method": {"choice": ["prompt", "injection"]},
            "train.lr": {"loguniform": [1.0e-4, 5.0e-2]},
            "adapter.prefix_len": {"randint": [1, 4]},
            "adapter.mlp_width": {"choice": [16, 32], "when": {"method": "injection"}},
        },
        "tune": {
            "name": "t",
            "num_samples": 6,
            "max_concurrent_trials": 2,
            "seed": 0,
            "points_to_evaluate": [
                {"method": "injection", "train.lr": 0.01, "adapter.prefix_len": 2, "adapter.mlp_width": 32}
            ],
            "scheduler": {"type": "asha", "grace_period": 3, "reduction_factor": 2},
            "resources": {"cpus": 1, "gpus": 0},
            "storage_path": str(storage),
            "pack": "off",
        },  # tests of packing ask for it (auto would probe at each search's start)
        "mlflow": {"experiment": "test-search", "register_as": "test-adapter"},
    }
    for key, value in overrides.items():
        node = spec
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_tune(*args, timeout=600, **popen):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "embinject.tune", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **popen,
    )


def mlflow_state() -> tuple:
    """MLflow's global URIs as set (None where unset) and the variables its setters write."""
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    return (
        tracking_state._tracking_uri,
        registry_state._registry_uri,
        os.environ.get("MLFLOW_TRACKING_URI"),
        os.environ.get("MLFLOW_REGISTRY_URI"),
    )


def read_mlflow(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)  # not MLflow's global registry URI, which another test may have set
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("embinject.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("embinject.kind") == "trial"]
    return client, parents, children


def test_conditional_space_samples_only_valid_combinations():
    import optuna

    params = parse_space(
        {
            "method": {"choice": ["prompt", "injection"]},
            "adapter.mlp_width": {"choice": [8, 16], "when": {"method": "injection"}},
            "adapter.embedding_model": {"choice": ["fourier", "lm-mean"], "when": {"method": ["injection"]}},
            "train.lr": {"loguniform": [1e-4, 1e-2]},
        }
    )
    fn = DefineByRun(params, {})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        fn(trial)
        p = trial.params
        injection = p["method"] == "injection"
        assert ("adapter.mlp_width" in p) == injection and ("adapter.embedding_model" in p) == injection
        seen.add(p["method"])
        study.tell(trial, 1.0)
    assert seen == {"prompt", "injection"}


@pytest.mark.parametrize("name", sorted(f.name for f in (ROOT / "search_spaces").glob("*.yaml")))
def test_every_shipped_search_file_is_valid_and_its_points_are_trial_configs(name):
    search = load_search_file(ROOT / "search_spaces" / name)
    assert search.searched
    for point in search.tune.points_to_evaluate:
        trial_config(search.base, point)  # raises ConfigError on a combination the file cannot run


@pytest.mark.parametrize("multivariate", [False, True])
def test_tpe_samples_a_conditional_space_validly_once_past_its_random_start(tmp_path, multivariate):
    """tune.multivariate: one joint TPE model per group of parameters that appear together (Optuna's group=True)."""
    import warnings

    import optuna

    search = load_search_file(
        ROOT / "search_spaces" / "quickstart.yaml",
        [
            "search={method: {choice: [prompt, injection]}, "
            "adapter.mlp_width: {choice: [64, 512], when: {method: injection}}, "
            "train.lr: {loguniform: [1.0e-4, 1.0e-2]}}",
            "tune.points_to_evaluate=[]",
            "tune.startup_trials=4",
            f"tune.multivariate={str(multivariate).lower()}",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no experimental-feature warnings reach the user
        sampler = optuna_sampler(search.tune)
        study = optuna.create_study(sampler=sampler)
        fn = DefineByRun(search.params, {})
        for i in range(12):
            trial = study.ask()
            fn(trial)
            p = trial.params
            assert ("adapter.mlp_width" in p) == (p["method"] == "injection")
            # a made-up objective TPE can learn: small lr, injection with a wide MLP
            study.tell(trial, p["train.lr"] * 100 + (0 if p.get("adapter.mlp_width") == 512 else 1))
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._multivariate == multivariate
    assert study.best_value < 1.5


@pytest.mark.parametrize(
    "patch, expected",
    [
        (
            {"search.adapter.mlp_widht": {"choice": [1, 2]}},
            "search.adapter.mlp_widht: unknown key (did you mean 'mlp_width'?)",
        ),
        (
            {"search.train.lr": {"loguniform": [1.0e-2, 1.0e-4]}},
            "search.train.lr.loguniform: low (0.01) must be smaller than high (0.0001)",
        ),
        (
            {"search.adapter.prefix_len": {"randint": [5, 2]}},
            "search.adapter.prefix_len.randint: low (5) must not exceed high (2)",
        ),
        (
            {"search.train.lr": {"normal": [0, 1]}},
            "search.train.lr: expected one of choice, uniform, loguniform, randint, qrandint",
        ),
        (
            {"tune.resources": {"cpus": 64, "gpus": 0}},
            "tune.resources.cpus: a trial asks for 64 CPUs but this machine has",
        ),
        (
            {"tune.resources": {"cpus": 1, "gpus": 1}},
            "tune.resources.gpus: a trial asks for 1 GPU but no GPU is visible",
        ),
        ({"tune.num_samlpes": 3}, "tune.num_samlpes: unknown key (did you mean 'num_samples'?)"),
        (
            {"tune.scheduler": {"type": "asha", "grace_period": 50}},
            "tune.scheduler.grace_period: 50 exceeds max_t (12)",
        ),
        (
            {"search.adapter.context_tokens": {"choice": [8, 32]}},
            "search.adapter.context_tokens: value 32 makes an invalid config",
        ),
    ],
)
def test_bad_search_file_fails_before_ray_starts(tmp_path, tiny_model, patch, expected):
    """In this process (test_bad_input.py runs the same contract as a real process)."""
    import ray

    if "gpus" in str(patch) and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is visible here")
    path = write_search(tmp_path / "s.yaml", tiny_model, "builtin:python-docs", tmp_path / "runs", **patch)
    start = time.time()
    code, out, err = run_main(tune_cli.main, [str(path)], tmp_path)
    assert code == 2, out + err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not (tmp_path / "runs").exists() and not ray.is_initialized()  # nothing half-written, Ray never started
    assert time.time() - start < 30


def test_dry_run_prints_the_plan(tmp_path, tiny_model):
    path = write_search(tmp_path / "s.yaml", tiny_model, "builtin:python-docs", tmp_path / "runs")
    code, out, err = run_main(tune_cli.main, [str(path), "--dry-run", "--set", "tune.num_samples=3"], tmp_path)
    assert code == 0, err
    assert "adapter.mlp_width: choice [16, 32]  when method in ['injection']" in out
    assert "budget: 3 trials, at most 36 optimizer steps" in out
    assert "TPE-guided after 3 random trials" in out
    assert "packing: tune.pack: off; every trial trains alone" in out
    code, out, err = run_main(tune_cli.main, [str(path), "--dry-run", "--set", "tune.pack=auto"], tmp_path)
    assert (
        "packing: tune.pack auto: at the start, a probe times a packed step of 2 of this search's largest trial "
        "against 2 separate steps on the trials' device"
    ) in out, out
    code, out, err = run_main(
        tune_cli.main, [str(path), "--dry-run", "--set", "tune.pack=4", "--set", "tune.resources.cpus=2"], tmp_path
    )
    assert "resources per trial: 2 CPU, 0 GPU (a pack of 4 shares one trial's CPUs: 0.5 CPU, 0 GPU each)" in out, out
    assert (
        "packing: tune.pack: 4 trials share each frozen LM; tune.max_concurrent_trials (2) caps how many run at once"
        in out
    )
    assert code == 0 and not (tmp_path / "runs").exists()


GRACE = "(tune.scheduler.grace_period: 3): every trial ends before ASHA judges it, so ASHA stops none"
PAST = (
    "ASHA's rung at step 6 is never reached: trials end at train.max_steps (5), below tune.scheduler.max_t (12); "
    "raise train.max_steps to 12, or lower"
)
LACKING = (
    "cannot run this search, whose trials ask for 64 CPUs each (tune.resources): the plan above is a "
    "preview. Run it with --address of a Ray cluster that has that for a trial (3 trials at a time take up to "
    "192 CPUs); started here, the search stops with exit 2"
)
TWO_OBJECTIVES = "tune.objectives=[{metric: val_perplexity, mode: min}, {metric: trainable_params, mode: min}]"


@pytest.mark.parametrize(
    "sets, warnings, line",
    [
        ([], [], "objective: val_perplexity (min)"),
        (
            ["train.max_steps=2", "tune.scheduler.max_t=12"],
            ["train.max_steps (2) is below ASHA's grace period " + GRACE],
            "at most 12 optimizer",
        ),
        (["train.max_steps=3", "tune.scheduler.max_t=12"], ["train.max_steps (3) equals ASHA's grace period"], None),
        (["train.max_steps=5", "tune.scheduler.max_t=12"], [PAST], "at most 30 optimizer"),
        (
            ["train.eval_every=7"],
            [
                "ASHA's rung at step 3 never judges a trial: trials report every 7 steps (train.eval_every)",
                "set train.eval_every to 3 or less",
            ],
            None,
        ),
        (["train.eval_every=5"], [], None),  # reports at 5 and 10 land on the rungs at 3 and 6
        (
            ["tune.scheduler.reduction_factor=1.5", "train.eval_every=2"],
            ["ASHA's rung at step 10.125 never judges a trial", "set train.eval_every to 1 or less"],
            None,
        ),
        (
            [TWO_OBJECTIVES],
            [],
            "objectives: multi-objective over val_perplexity (min), trainable_params (min): Optuna "
            "keeps a Pareto front (pareto_front.csv); ASHA and the champion follow the first, "
            "val_perplexity",
        ),
        (["tune.resources.cpus=64", "tune.max_concurrent_trials=3"], [LACKING], None),
        (
            ["tune.resources.gpus=0.5"],
            [
                "no GPU) cannot run this search, whose trials ask for 1 CPUs and 0.5 GPU each",
                "(2 trials at a time take up to 2 CPUs and 1 GPUs)",
            ],
            None,
        ),
    ],
    ids=[
        "fits",
        "steps-below-grace",
        "steps-at-grace",
        "rung-past-steps",
        "rung-between-reports",
        "reports-on-rungs",
        "fractional-rungs",
        "multi-objective",
        "cpus-lacking",
        "gpus-lacking",
    ],
)
def test_dry_run_warns_of_budget_mistakes_and_previews_what_this_machine_lacks(
    tmp_path, tiny_model, sets, warnings, line
):
    """Each warning on one line, the plan printed all the same, exit 0, nothing created; a search asking for more than
    this machine has is previewed (the search itself still stops with exit 2, as
    test_bad_search_file_fails_before_ray_starts checks)."""
    if "gpus" in str(sets) and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is visible here")
    path = write_search(tmp_path / "s.yaml", tiny_model, "builtin:python-docs", tmp_path / "runs")
    argv = [str(path), "--dry-run", *[x for s in sets for x in ("--set", s)]]
    code, out, err = run_main(tune_cli.main, argv, tmp_path)
    assert code == 0 and "storage: " in out and not (tmp_path / "runs").exists(), err
    said = [l for l in err.splitlines() if l.strip()]
    assert all(l.startswith("warning: ") for l in said) and len(said) == (1 if warnings else 0), err
    assert all(w in said[0] for w in warnings), err
    assert line is None or line in out, out


@pytest.mark.parametrize(
    "max_t, grace, factor", [(12, 3, 2), (40, 10, 2), (1560, 104, 3), (100, 10, 1.5), (40, 10, 3), (9, 9, 2)]
)
def test_the_dry_runs_asha_rungs_are_those_ray_places(max_t, grace, factor):
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(time_attr="step", max_t=max_t, grace_period=grace, reduction_factor=factor)
    assert asha_rungs(max_t, grace, factor) == sorted(milestone for milestone, _ in scheduler_rungs(asha))


@pytest.mark.parametrize(
    "flags, said",
    [
        ([], "registers 'test-adapter' (alias champion if it beats the version holding it)"),
        (["--promote"], "registers 'test-adapter' (alias champion by --promote)"),
        (["--no-register"], "registers nothing"),
        (["--set", "mlflow.register_as=null"], "registers nothing"),
    ],
)
def test_no_register_registers_nothing_and_contradicts_promote(tmp_path, tiny_model, flags, said):
    path = write_search(tmp_path / "s.yaml", tiny_model, "builtin:python-docs", tmp_path / "runs")
    code, out, err = run_main(tune_cli.main, [str(path), "--dry-run", *flags], tmp_path)
    assert code == 0 and out.splitlines()[-1].endswith(f"experiment 'test-search', {said}"), out + err
    code, _, err = run_main(tune_cli.main, [str(path), "--dry-run", "--no-register", "--promote", *flags], tmp_path)
    assert code == 2 and "error: argument --promote: not allowed with argument --no-register" in err, err


@pytest.mark.parametrize(
    "samples, startup, expected", [(10, None, 3), (24, None, 3), (40, None, 5), (200, None, 10), (10, 7, 7)]
)
def test_tpe_random_start_fits_the_search_size(samples, startup, expected):
    # Optuna's fixed 10 random trials would leave a 10-trial search with no guided trial at all
    assert TuneSettings(num_samples=samples, startup_trials=startup).random_trials_first == expected


def test_search_logs_everything_to_mlflow_and_champion_reproduces(tmp_path, tiny_model, shared_data):
    from mlflow.artifacts import download_artifacts

    storage = tmp_path / "runs"
    # intermediate evaluations on a subset of 12 of the 24 validation windows; the kept adapter on all 24
    path = write_search(
        tmp_path / "s.yaml",
        tiny_model,
        str(shared_data / "wikitext2_valid_detok"),
        storage,
        **{"train.eval_windows": 12},
    )
    proc = run_tune(str(path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "best trial" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    # the start speaks: its first line before the imports, then each warm-up stage with its seconds, then the table
    lines = proc.stdout.splitlines()
    assert lines[0] == f"starting a search from {path}: loading torch, Ray Tune and MLflow", lines[:3]
    warm = [line for line in lines if line.startswith("warm-up: ")]
    assert [line.rsplit(" in ", 1)[0] for line in warm] == [
        "warm-up: torch, Ray and MLflow loaded, the search file and its places checked",
        f"warm-up: model {tiny_model}",
        "warm-up: data windows and the frozen model's perplexity",
        "warm-up: encoder fourier and its sentence embeddings",
        "warm-up: Ray started on this machine",
        "warm-up: Ray Tune and MLflow set up",
    ], warm
    assert all(re.fullmatch(r"\d+\.\d s", line.rsplit(" in ", 1)[1]) for line in warm), warm
    assert lines.index(warm[-1]) < lines.index("== Status ==")
    assert "where its time went: embinject report " in proc.stdout
    assert (
        "Token authentication is enabled" not in proc.stderr
    )  # Ray's notice of its secure default is not the user's concern
    assert " INFO mlflow" not in proc.stdout + proc.stderr  # nor MLflow's database set-up and signature checks
    exp_dir = next(storage.glob("t-*"))
    assert f"Search folder: {exp_dir.resolve()}" in lines and "Result logdir" not in proc.stdout
    rounded = [line for line in lines if line.startswith(("Current best trial: ", "Bracket: ", "| trainable_"))]
    numbers = re.findall(r"\d+\.\d+", "\n".join(rounded))
    assert numbers and all(len(n.replace(".", "").lstrip("0")) <= 4 for n in numbers), rounded  # 4 significant digits
    summary = (exp_dir / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 6
    study = _check_study(exp_dir)
    assert {"COMPLETE", "PRUNED"} <= {t.state.name for t in study.trials}  # ASHA stopped some, others finished
    # the optuna CLI opens the study as the closing lines print the command
    line = next(l for l in proc.stdout.splitlines() if l.startswith("optuna: study "))
    assert line.startswith(f"optuna: study {exp_dir.name}; open with: optuna-dashboard {exp_dir / 'optuna.journal'} ")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("  or: optuna trials "))
    argv = shlex.split(line.split(": ", 1)[1])
    listed = subprocess.run(
        [str(Path(sys.executable).parent / argv[0]), *argv[1:], "-f", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert sorted((t["number"], t["state"]) for t in json.loads(listed.stdout)) == sorted(
        (t.number, t.state.name) for t in study.trials
    )
    for png in ("val_perplexity_curves.png", "optimization_history.png", "parallel_coordinate.png"):
        assert (exp_dir / png).stat().st_size > 5000

    uri = f"sqlite:///{storage / 'mlflow.db'}"
    client, parents, children = read_mlflow(uri, "test-search")
    assert len(parents) == 1 and len(children) == 6
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    for c in children:
        assert "train.lr" in c.data.params and "method" in c.data.params
        assert ("adapter.mlp_width" in c.data.params) == (c.data.params["method"] == "injection")
        history = client.get_metric_history(c.info.run_id, "val_perplexity")
        assert len(history) >= 1 and c.info.status == "FINISHED"
        assert sorted(h.step for h in history) == [h.step for h in sorted(history, key=lambda h: h.timestamp)]
        # The curve stays on the subset to its last point; the kept adapter's score on every window is
        # best_val_perplexity, not a last curve point on another set.
        reports = _results(exp_dir / f"trial_{c.data.tags['trial_id']}")
        last = max(history, key=lambda h: h.step)
        assert last.value == pytest.approx(reports[-1].get("val_perplexity_subset", reports[-1]["val_perplexity"]))
        if reports[-1].get("final"):
            assert "val_perplexity_subset" in reports[-1]
            assert c.data.metrics["best_val_perplexity"] == pytest.approx(reports[-1]["val_perplexity"])
    stopped = [c for c in children if c.data.tags.get("stopped_early") == "True"]
    assert len(stopped) >= 1  # ASHA cut at least one trial
    assert all(int(c.data.tags["steps"]) < 12 for c in stopped)
    assert parent.data.metrics["trials"] == 6
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"search", "results", "champion_adapter"} <= artifacts

    best = parent.data.metrics["best_val_perplexity"]
    assert best == pytest.approx(min(c.data.metrics["best_val_perplexity"] for c in children))

    # MLflow as its users expect it: readable run names and parameters, constants logged once, source tags,
    # the training data as a dataset input, the experiment opening in the model-training view
    exp = client.get_experiment_by_name("test-search")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert (
        f"runs table: http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        in proc.stdout
    )
    assert parent.data.params["search.train.lr"] == "loguniform [0.0001, 0.05]"
    assert parent.data.params["search.adapter.mlp_width"] == 'choice [16, 32] when method in ["injection"]'
    assert not any(v.startswith("(") for v in parent.data.params.values())
    for run in (parent, *children):
        assert "embinject.tune" in run.data.tags["mlflow.source.name"] and run.data.tags.get("mlflow.user")
        assert run.data.tags.get("mlflow.source.git.commit")  # the tests run inside the repository
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["wikitext2_valid_detok"]
    for c in children:
        assert c.info.run_name.startswith(c.data.params["method"] + " ") and " lr=" in c.info.run_name
        assert c.info.run_name.endswith(f"[{c.data.tags['trial_id']}]")
        assert len(client.get_metric_history(c.info.run_id, "baseline_perplexity")) == 1  # a constant: once
        assert "trainable_started_at" not in c.data.metrics and c.data.tags.get("trainable_started_at")

    # The champion: a pyfunc model on the winning trial's run, registered with alias `champion` and tags
    import mlflow
    import mlflow.pyfunc
    import pandas as pd

    mv = client.get_model_version_by_alias("test-adapter", "champion")
    winner = next(c for c in children if c.info.run_id == mv.run_id)
    assert (
        winner.data.metrics["best_val_perplexity"] == pytest.approx(best) and winner.data.tags.get("champion") == "true"
    )
    assert mv.tags["trial_id"] == winner.data.tags["trial_id"] and mv.tags["method"] == winner.data.params["method"]
    assert float(mv.tags["val_perplexity"]) == pytest.approx(best, rel=1e-5) and mv.tags["search"] == exp_dir.name
    # MLflow's global URIs (and, through its setters, MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI for the embinject
    # subprocesses below) on this store for the block, then as they were: other tests in this process use other stores
    with mlflow_global_uris(uri, uri):
        model = mlflow.pyfunc.load_model("models:/test-adapter@champion")
        out = model.predict(
            pd.DataFrame({"prompt": ["The history", "A"], "context": ["of the city", "b"]}),
            params={"max_new_tokens": 3},
        )
        assert len(out) == 2 and list(out.columns) == ["generated_text"]
        # The hint the search printed works as printed, from another directory, without MLFLOW_TRACKING_URI, and
        # leaves no empty ./mlflow.db behind.
        hint = next(line for line in proc.stdout.splitlines() if "use it: embinject generate" in line)
        argv = shlex.split(hint.split("use it: ", 1)[1].split(", or ", 1)[0].replace("--prompt TEXT", ""))
        elsewhere, scratch = tmp_path / "elsewhere", tmp_path / "scratch"
        elsewhere.mkdir()
        scratch.mkdir()
        gen = subprocess.run(
            [sys.executable, "-m", *argv, "--prompt", "The history", "--max-new-tokens", "3", "--json"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=300,
            env={
                **{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")},
                "TMPDIR": str(scratch),
            },
        )
        assert gen.returncode == 0, gen.stderr[-2000:]
        assert "--tracking-uri" in argv and not any(elsewhere.iterdir())
        assert not list(scratch.glob("embinject-*"))  # the adapter it downloaded is gone
        report = subprocess.run(
            [sys.executable, "-m", "embinject", "report", parent.info.run_id, "--output-dir", str(tmp_path / "report")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert report.returncode == 0, report.stderr[-2000:]
    # Loading an adapter from the registry in a process (a notebook) leaves MLflow's URIs and their variables as they
    # were (a later search or subprocess of that process must not find this store's registry pinned), and keeps no
    # copy: the download is removed when the block ends
    before = mlflow_state()
    with adapter_directory("models:/test-adapter@champion", tracking_uri=uri) as downloaded:
        assert (downloaded / "embinject.json").is_file()
    assert mlflow_state() == before and not downloaded.exists()
    trials = (tmp_path / "report" / "report.md").read_text().split("## Where the time went")[0]  # the first table
    table = [l for l in trials.splitlines() if l.startswith("| ")][1:]
    assert len(table) == 6 and table[0].startswith(f"| 1 | {winner.data.tags['trial_id']} |")
    assert (tmp_path / "report" / "report_val_perplexity.png").stat().st_size > 5000
    from_dir = subprocess.run(
        [sys.executable, "-m", "embinject", "report", str(exp_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert from_dir.returncode == 0 and f"| 1 | {winner.data.tags['trial_id']} |" in (exp_dir / "report.md").read_text()
    # where each trial's time went: in summary.csv, as metrics of its run, and in the report from either source
    seconds = check_time_split(exp_dir, from_dir.stdout, packed=False)
    for c in children:
        if c.data.tags["trial_id"] in seconds:
            logged = {k: c.data.metrics[k] for k in (*TIME_SPLIT, WALL)}
            assert logged == pytest.approx(seconds[c.data.tags["trial_id"]])
    assert "## Where the time went" in report.stdout and "s of wall time" in report.stdout, report.stdout[-3000:]

    with mlflow_global_uris(uri, uri):  # mv.source may be a models:/ URI, resolved through them
        local = download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / "champion"))
    local = next(Path(local).rglob("embinject.json")).parent
    meta = json.loads((Path(local) / "embinject.json").read_text())
    lm = load_frozen_lm(tiny_model)
    cfg = config_from_dict(meta["config"])
    method = load_method(local, lm.model, lm.tokenizer)
    assert perplexity(method, prepare(cfg).val, 32, autocast_dtype=autocast_dtype(cfg, "cpu")) == pytest.approx(
        best, rel=1e-5
    )

    # The best adapters, plural: the 3 best trials' adapters are logged models on their runs, the champion first
    ranked = sorted(children, key=lambda c: c.data.metrics["best_val_perplexity"])  # as the champion is chosen
    models = client.search_logged_models([exp.experiment_id])
    by_run = {m.source_run_id: m for m in models}
    assert len(models) == min(3, len(ranked)) and set(by_run) == {c.info.run_id for c in ranked[:3]}
    assert by_run[winner.info.run_id].tags["rank"] == "1" and all(m.status == "READY" for m in models)
    assert [by_run[c.info.run_id].name for c in ranked[:3]] == [
        f"t-rank{i}-{c.data.tags['trial_id']}" for i, c in enumerate(ranked[:3], 1)
    ]  # named by search, rank and trial
    runner_up = by_run[ranked[1].info.run_id]
    assert [m.value for m in runner_up.metrics if m.key == "best_val_perplexity"] == [
        pytest.approx(ranked[1].data.metrics["best_val_perplexity"])
    ]
    gen = subprocess.run(
        [
            sys.executable,
            "-m",
            "embinject",
            "generate",
            "--adapter",
            f"runs:/{ranked[1].info.run_id}/model",
            "--tracking-uri",
            uri,
            "--prompt",
            "The history",
            "--max-new-tokens",
            "2",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert gen.returncode == 0 and "Downloading artifacts" not in gen.stderr, gen.stderr[-2000:]
    _check_warm_starts(tmp_path, path, exp_dir, parent, children, uri)


def test_the_champion_alias_stays_with_a_version_a_new_search_does_not_beat(tmp_path, tiny_model):
    """Two one-trial searches against one registry, the second worse by construction (a learning rate of 1e-7 leaves
    the prompt as initialised): each registers a version, tagged with what its number was measured on; the first takes
    the alias `champion`, the second does not, and one line says so with both numbers. (--promote: the warm-started
    search of test_search_logs_everything_to_mlflow_and_champion_reproduces; versions that cannot be compared:
    test_a_champion_is_compared_only_on_the_same_model_data_and_metric.)"""
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "runs"
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}", registry_uri=f"sqlite:///{storage / 'mlflow.db'}")

    def search(lr: float) -> tuple[list[str], dict]:
        path = write_search(
            tmp_path / "s.yaml",
            tiny_model,
            "builtin:python-docs",
            storage,
            **{
                "method": "prompt",
                "search": {"train.lr": {"choice": [lr]}},
                "tune.points_to_evaluate": [],
                "tune.num_samples": 1,
                "tune.scheduler": {"type": "none"},
                "train.max_steps": 3,
                "train.eval_every": 3,
                "mlflow.keep_top": 1,
            },
        )
        proc = run_tune(str(path))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        lines = proc.stdout.splitlines()
        said = next(l for l in lines if l.startswith("best adapter: "))
        version = said.split(" version ")[1].split(",")[0].rstrip(")")
        return lines, {**client.get_model_version("test-adapter", version).tags, "version": version}

    lines, better = search(0.05)
    assert better["version"] == "1" and client.get_registered_model("test-adapter").aliases == {"champion": 1}
    assert better["model"] == tiny_model and better["data"] == "builtin:python-docs" and better["data_digest"]
    assert (better["metric"], better["mode"], better["scored_tokens"]) == ("val_perplexity", "min", "after the first 8")
    assert not [l for l in lines if "alias champion" in l and not l.startswith("best adapter: ")]  # the first: no line

    lines, worse = search(1e-7)
    assert float(worse["val_perplexity"]) > float(better["val_perplexity"])  # the premise: worse by construction
    assert worse["version"] == "2" and client.get_registered_model("test-adapter").aliases == {"champion": 1}
    assert [l for l in lines if "alias champion" in l] == [
        "version 2 of test-adapter is registered without the alias champion, which stays on version 1: this search's "
        f"val_perplexity {worse['val_perplexity']} does not beat its {better['val_perplexity']} (the same frozen "
        "model, validation data and metric); --promote moves it anyway"
    ]
    assert "best adapter: " in next(l for l in lines if "(registered as test-adapter version 2)" in l)
    assert any("--adapter models:/test-adapter/2 " in l for l in lines)  # the hint names the version, not the alias


SAME = {
    "model": "m",
    "data": "builtin:python-docs",
    "data_digest": "d1",
    "scored_tokens": "all",
    "metric": "val_perplexity",
    "mode": "min",
}
KEPT = "version 2 of a is registered without the alias champion, which stays on version 1: "


@pytest.mark.parametrize(
    "search, expected",
    [("quickstart", "quickstart-rank1-d95cd911"), ("v1.2/a:b%c'd\"e", "v1-2-a-b-c-d-e-rank1-d95cd911")],
)
def test_logged_models_are_named_by_search_rank_and_trial_as_mlflow_takes_them(search, expected):
    from mlflow.utils.validation import _validate_logged_model_name  # MLflow's own rule (records replicates it)

    assert logged_model_name(search, 1, "d95cd911") == expected
    _validate_logged_model_name(expected)  # raises where MLflow refuses it


@pytest.mark.parametrize(
    "old, new, promote, moved, line",
    [
        (
            {"val_perplexity": "20"},
            {"val_perplexity": "19.5"},
            False,
            True,
            "the alias champion of a moved to version 2, which beats version 1 (val_perplexity 19.5, version 1's 20)",
        ),
        (
            {"val_perplexity": "20"},
            {"val_perplexity": "20"},
            False,
            False,
            KEPT
            + (
                "this search's val_perplexity 20 does not beat its 20 "
                "(the same frozen model, validation data and metric); --promote moves it anyway"
            ),
        ),
        (
            {"val_perplexity": "20", "mode": "max"},
            {"val_perplexity": "19.5", "mode": "max"},
            False,
            False,
            KEPT + "this search's val_perplexity 19.5 does not beat its 20 (the same frozen model, validation data and "
            "metric); --promote moves it anyway",
        ),
        (
            {"val_perplexity": "30"},
            {"val_perplexity": "20", "data": "/d/wiki.txt", "data_digest": "d2"},
            False,
            False,
            KEPT + "the two cannot be compared (the validation data differs: builtin:python-docs (d1) for version 1, "
            "/d/wiki.txt (d2) for this search); --promote moves it",
        ),
        (
            {"val_perplexity": "30"},
            {"val_perplexity": "20", "model": "n"},
            False,
            False,
            KEPT
            + "the two cannot be compared (the frozen model differs: m for version 1, n for this search); --promote "
            "moves it",
        ),
        (
            {"val_perplexity": "30"},
            {"val_perplexity": "20", "scored_tokens": "after the first 8"},
            False,
            False,
            KEPT
            + (
                "the two cannot be compared "
                "(the choice of scored tokens differs: all for version 1, after the first 8 for this search); "
                "--promote moves it"
            ),
        ),
        (
            {"val_perplexity": "30", "model": None},
            {"val_perplexity": "20"},
            False,
            False,
            KEPT
            + (
                "the two cannot be compared "
                "(version 1 does not record its frozen model: registered by hand or by an older embinject); "
                "--promote moves it"
            ),
        ),
        (
            {"val_perplexity": "10"},
            {"val_perplexity": "20", "model": "n"},
            True,
            True,
            "the alias champion of a moved to version 2 by --promote (val_perplexity 20, version 1's 10; not "
            "comparable: the frozen model differs: m for version 1, n for this search)",
        ),
        (
            {"val_perplexity": "10"},
            {"val_perplexity": "20"},
            True,
            True,
            "the alias champion of a moved to version 2 by --promote (val_perplexity 20, version 1's 10)",
        ),
    ],
    ids=[
        "better",
        "equal",
        "worse-on-max",
        "other-data",
        "other-model",
        "other-scored-tokens",
        "holder-unrecorded",
        "promote-other-model",
        "promote-worse",
    ],
)
def test_a_champion_is_compared_only_on_the_same_model_data_and_metric(old, new, promote, moved, line):
    from types import SimpleNamespace

    tags = lambda changes: {k: v for k, v in {**SAME, **changes}.items() if v is not None}  # noqa: E731
    holder = SimpleNamespace(version="1", tags=tags(old))  # as MlflowClient.get_model_version returns it
    assert champion_move("a", holder, "2", tags(new), promote) == (moved, line)


def _check_warm_starts(tmp_path, path, exp_dir, parent, children, uri):
    """A search warm-started from the one above: of the same setup, its 6 trials enter Optuna as completed trials; of
    another (fewer steps, a narrower space), its best configurations go first and values outside the space are
    dropped."""
    same = load_search_file(path, [f"tune.warm_start=[{exp_dir}]"])
    warm = read_warm_start(same)
    assert len(warm.completed) == 6 and not warm.prior and warm.first_points([]) == []
    (tmp_path / "probe").mkdir()
    searcher = make_searcher(same, tmp_path / "probe", warm)
    study = searcher_study(searcher.searcher)
    earlier = [t for t in study.trials if t.user_attrs.get("warm_start")]
    assert len(earlier) == 6 and len(study.trials) == 6  # the search file's own starting point waits to be asked for
    searcher.save(str(tmp_path / "searcher.pkl"))  # what --resume restores: the study with the earlier trials in it
    (tmp_path / "probe-restored").mkdir()
    restored = make_searcher(load_search_file(path), tmp_path / "probe-restored")
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert sum(bool(t.user_attrs.get("warm_start")) for t in searcher_study(restored.searcher).trials) == 6
    assert sorted(t.value for t in earlier if t.state.name == "COMPLETE")[0] == pytest.approx(
        min(c.data.metrics["best_val_perplexity"] for c in children)
    )

    proc = run_tune(
        str(path),
        "--set",
        f"tune.warm_start=[runs:/{parent.info.run_id}]",
        "--set",
        "tune.num_samples=3",
        "--set",
        "tune.points_to_evaluate=[]",
        "--set",
        "train.max_steps=9",
        "--set",
        "tune.scheduler.max_t=9",
        "--set",
        "search.adapter.prefix_len={randint: [1, 3]}",
        "--set",
        "tune.name=w",
        "--promote",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("warm start from"))
    finished = sorted(
        (c for c in children if c.data.tags.get("stopped_early") == "False"),
        key=lambda c: c.data.metrics["best_val_perplexity"],
    )
    assert f"runs:/{parent.info.run_id}" in line and "another setup (train.max_steps" in line
    assert f"its best {min(3, len(finished))} configurations go first" in line
    out_of_space = sum(c.data.params["adapter.prefix_len"] == "4" for c in children)
    assert (f"warm start: {out_of_space} earlier values are outside" in proc.stdout) == (out_of_space > 0)
    expected = [(c.data.params["method"], float(c.data.params["train.lr"])) for c in finished[:3]]
    client, parents, _ = read_mlflow(uri, "test-search")
    new_parent = next(p for p in parents if p.info.run_id != parent.info.run_id)
    assert new_parent.data.tags["embinject.warm_start_runs"] == parent.info.run_id
    # --promote: the alias moves whether or not the new version beats the old (the same model, data and metric here)
    first, second = (client.get_model_version("test-adapter", v).tags["val_perplexity"] for v in ("1", "2"))
    assert client.get_registered_model("test-adapter").aliases == {"champion": 2}
    assert (
        f"the alias champion of test-adapter moved to version 2 by --promote (val_perplexity {second}, version 1's "
        f"{first})"
    ) in proc.stdout.splitlines(), proc.stdout[-3000:]
    rows = list(csv.DictReader((next((tmp_path / "runs").glob("w-*")) / "summary.csv").open()))
    assert {(r["method"], float(r["train.lr"])) for r in rows} >= set(expected)


def check_time_split(exp_dir: Path, report: str, packed: bool) -> dict[str, dict[str, float]]:
    """Each trial's seconds in summary.csv: every category, none negative, together within the trial's wall time;
    `embinject report`'s output (`report`) sums them in its time table. Returns trial id -> its seconds."""
    with (exp_dir / "summary.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["status"] == "ok"]
    seconds = {r["trial_id"]: {k: float(r[k]) for k in (*TIME_SPLIT, WALL)} for r in rows}
    for trial, split in seconds.items():
        assert min(split.values()) >= 0 and split[WALL] > 0 and split["seconds_steps"] > 0, (trial, split)
        assert split["seconds_setup"] > 0 and split["seconds_eval"] > 0, (trial, split)
        # disjoint stretches of the trial's time, each measured once (0.05 s: rounding, two clocks of one machine)
        assert sum(split[k] for k in TIME_SPLIT) <= split[WALL] + 0.05, (trial, split)
    rendezvous = [split["seconds_rendezvous"] for split in seconds.values()]
    assert sum(rendezvous) > 0 if packed else not any(rendezvous), rendezvous  # only a pack's members wait for others
    assert "## Where the time went" in report, report[-3000:]
    wall = sum(split[WALL] for split in seconds.values())
    steps = sum(split["seconds_steps"] for split in seconds.values())
    assert f"| {TIME_SPLIT['seconds_steps']} | {steps:.1f} | {100 * steps / wall:.1f}% |" in report, report[-3000:]
    assert f"| trials' wall time | {wall:.1f} | 100% |" in report and "s of wall time" in report, report[-3000:]
    return seconds


def _check_study(exp_dir: Path, objectives: tuple = ("val_perplexity",), rel: float = 1e-6, killed: bool = False):
    """Optuna's study in the search's folder holds the trials of summary.csv: each once, with its Ray id, its searched
    values, the state and value summary.csv gives, and (one objective) its validation curve as intermediate values.
    Trials Ray lost when its driver was killed (not in summary.csv) are there too, FAIL, ended_by lost_at_kill.
    `killed`: the driver was killed, so the study may hold points of the trial's curve that result.json lacks."""
    import optuna

    journal = optuna.storages.journal.JournalFileBackend(str(exp_dir / "optuna.journal"))
    study = optuna.load_study(storage=optuna.storages.JournalStorage(journal), study_name=exp_dir.name)
    with (exp_dir / "summary.csv").open() as fh:
        rows = {r["trial_id"]: r for r in csv.DictReader(fh)}
    trials = {t.user_attrs["trial_id"]: t for t in study.trials if not t.user_attrs.get("warm_start")}
    assert len(trials) == len(study.trials) and set(rows) <= set(trials)
    for trial_id, t in trials.items():
        row = rows.get(trial_id)
        if row is None:
            assert t.state.name == "FAIL" and t.user_attrs["ended_by"] == "lost_at_kill", (trial_id, t)
            continue
        state = {"ok": "PRUNED" if row["stopped_early"] == "True" else "COMPLETE", "cut": "PRUNED"}.get(
            row["status"], "FAIL"
        )
        assert t.state.name == state, (row, t)
        if row["status"] != "not_started":  # Ray proposed its values, but summary.csv has none for a trial never run
            assert {k: str(v) for k, v in t.params.items()} == {k: row[k] for k in t.params}
        if state == "COMPLETE":
            metrics = [row["best_val_perplexity" if name == "val_perplexity" else name] for name in objectives]
            assert t.values == pytest.approx([float(v) for v in metrics], rel=rel)
        if len(objectives) == 1:
            reports = _results(exp_dir / f"trial_{trial_id}")
            curve = {r["step"]: r.get("val_perplexity_subset", r["val_perplexity"]) for r in reports}
            curve = {s: v for s, v in curve.items() if math.isfinite(v)}
            only_study = set(t.intermediate_values) - set(curve)
            if killed and only_study:
                # Ray hands a result to the searcher (the journal) before its loggers (result.json): a kill between
                # the two leaves a point in the study only. It must be the trial's own, as its checkpoints record it.
                history = _checkpoint_history(exp_dir / f"trial_{trial_id}")
                curve.update({s: history[s] for s in only_study if s in history})
            assert t.intermediate_values == pytest.approx(curve, rel=rel)
            if state == "PRUNED" and row["final_val_perplexity"]:
                assert t.value == pytest.approx(float(row["final_val_perplexity"]), rel=rel)
    return study


def _checkpoint_history(trial_dir: Path) -> dict[int, float]:
    """A trial's validation points as its newest checkpoint records them (step -> val_perplexity)."""
    newest = max(
        trial_dir.glob("checkpoint_*"), key=lambda c: json.loads((c / "trainer_state.json").read_text())["loop"]["step"]
    )
    history = json.loads((newest / "trainer_state.json").read_text())["loop"]["history"]
    return {h["step"]: h["val_perplexity"] for h in history if "val_perplexity" in h}


def _results(trial_dir: Path) -> list[dict]:
    """Ray Tune's rows for a trial; a last line still being written (read while the search runs) is left out."""
    f = trial_dir / "result.json"
    rows = []
    for line in f.read_text().splitlines() if f.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def _named_checkpoint(trial: Path) -> str | None:
    """The checkpoint of this trial that Ray's newest experiment snapshot names, if the snapshot is whole. Ray rewrites
    the snapshot in place: a kill -9 during that write leaves it empty, and a restore from it loses the trials (a Ray
    limit this test is not about)."""
    return snapshot_checkpoints(trial.parent).get(trial.name)


def _without_redelivery(rows: list[dict]) -> list[dict]:
    """A trial resumed from its last (final) checkpoint reports that final result again, because the
    killed driver may never have recorded it; drop such a repeat of the previous row. Its evaluation is run again,
    perhaps with another thread count (a pack host's, then a lone trial's), so its value may differ in rounding."""

    def same(a, b):
        return (a["step"], a["final"]) == (b["step"], b["final"]) and abs(
            a["val_perplexity"] - b["val_perplexity"]
        ) <= 1e-4 * b["val_perplexity"]

    return [r for i, r in enumerate(rows) if i == 0 or not same(r, rows[i - 1])]


def kill_session(sid: int, timeout: float = 30, child: subprocess.Popen | None = None) -> None:
    """SIGKILL every process of a session (Ray's agents outlive their raylet otherwise and hold
    their ports), then wait until they are gone. `child`: the session leader, when this process started it
    (it stays a zombie until this process waits for it; Popen.poll records its exit code as it does)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if child is not None:
            child.poll()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getsid(int(entry.name)) == sid:
                        pids.append(int(entry.name))
                except (ProcessLookupError, PermissionError):
                    pass
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _session_pids(sid: int, until=None, timeout: float = 120) -> dict[int, str]:
    """The processes of a session, pid -> command; with `until`, once it holds for their commands (a bound only if
    it never does)."""
    deadline = time.time() + timeout
    while True:
        found = {}
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and os.getsid(int(entry.name)) == sid:
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode().strip()
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                pass
        if until is None or until(found.values()):
            return found
        assert time.time() < deadline, f"the session's processes stayed: {found}"
        time.sleep(0.5)


def test_resume_after_the_driver_is_killed(tmp_path, tiny_model, monkeypatch):
    storage = tmp_path / "runs"
    path = write_search(
        tmp_path / "s.yaml",
        tiny_model,
        "builtin:python-docs",
        storage,
        **{
            "train.max_steps": 150,
            "train.max_epochs": 100,
            "train.eval_every": 25,
            "tune.num_samples": 4,
            "tune.max_concurrent_trials": 1,
            "tune.scheduler": {"type": "none"},
        },
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "embinject.tune", str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    finished_before: dict[str, int] = {}
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            trials = sorted(storage.glob("t-*/trial_*"))
            done = {t.name: len(r) for t in trials if (r := _results(t)) and r[-1].get("final")}
            running = [t for t in trials if t.name not in done and len(_results(t)) >= 2]
            if done and running and _named_checkpoint(running[0]):
                finished_before = done
                break
        assert finished_before, "the search ended before it could be interrupted"
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone: Ray's processes share its fate, but for two
        proc.wait()
        leftovers = _session_pids(proc.pid, until=lambda names: set(names) <= set(RAY_AGENTS))
        # Ray's agents outlive the killed driver (Ray 2.60): the premise of what --resume must stop below
        assert sorted(leftovers.values()) == sorted(RAY_AGENTS), leftovers
    except BaseException:
        kill_session(proc.pid, child=proc)
        raise
    # What a kill leaves when it lands between Ray deleting a trial's previous checkpoint (as the next one is saved)
    # and its experiment snapshot naming the new one: the snapshot names a checkpoint that is gone, a newer one exists.
    # Ray may not have deleted the named one yet (it does so once the next is saved): that state is made here too.
    named = _named_checkpoint(running[0])
    assert named, "Ray's snapshot, whole before the kill, was cut by it (a Ray limit this test is not about)"
    newest = max(running[0].glob("checkpoint_*"))
    ahead = newest.with_name(f"checkpoint_{int(newest.name.split('_')[1]) + 1:06d}")
    newest.rename(ahead)
    shutil.rmtree(running[0] / named, ignore_errors=True)
    # The repair's copy meets a full disk: the error goes up (the command says it in one line) and no half copy stays.
    exp_dir = next(storage.glob("t-*"))
    copytree = shutil.copytree

    def fills_the_disk(src, dst, *args, **kwargs):  # shutil calls it again for each subfolder: a copy cut short
        copytree(src, dst, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copytree", fills_the_disk)
    with pytest.raises(OSError) as full:
        restore_superseded_checkpoints(exp_dir)
    monkeypatch.undo()
    assert disk_full(full.value) and ahead.is_dir() and not newest.exists()  # shutil wraps a subfolder's error
    assert not list(exp_dir.glob("trial_*/.checkpoint_*"))
    try:
        result = run_tune(str(path), "--resume")
        gone = _session_pids(proc.pid) == {}  # stopped by --resume before it started its own Ray
    finally:
        kill_session(proc.pid)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resume: trial {running[0].name.removeprefix('trial_')} continues from {ahead.name}" in result.stdout
    pids = ", ".join(map(str, sorted(leftovers)))
    assert (
        gone
        and (f"stopped 2 Ray processes (pid {pids}) that search {exp_dir.name} left running when its driver was killed")
        in result.stdout
    ), result.stdout[-3000:]
    with (exp_dir / "summary.csv").open(newline="") as fh:
        known = {r["trial_id"] for r in csv.DictReader(fh)}
    # A trial Ray started just before the kill, before its snapshot named it, may have written its folder (even a
    # first checkpoint): Ray forgets that trial (its MLflow run ends lost_at_kill, below), the folder stays
    trials = [t for t in sorted(exp_dir.glob("trial_*")) if t.name.removeprefix("trial_") in known]
    assert len(trials) == 4 and not list(exp_dir.glob("trial_*/.checkpoint_*"))  # no copy left half-made
    for t in trials:
        rows = _without_redelivery(_results(t))
        steps = [r["step"] for r in rows]
        assert steps == sorted(set(steps)), f"{t.name} repeated steps {steps}: it restarted instead of resuming"
        errors = "".join(f.read_text()[-1500:] for f in t.glob("error*.txt"))
        assert rows[-1]["final"] and rows[-1]["step"] == 150, (
            f"{t.name}: {[(r['step'], r['final']) for r in rows]} {errors}"
        )
        if t.name in finished_before:
            assert len(rows) == finished_before[t.name]  # a finished trial is not run again
    _, parents, children = read_mlflow(f"sqlite:///{storage / 'mlflow.db'}", "test-search")
    seen = [(c.data.tags.get("trial_id"), c.info.status, c.data.tags.get("stopped_by")) for c in children]
    finished = {c.data.tags["trial_id"] for c in children if c.info.status == "FINISHED"}
    assert len(parents) == 1 and finished == {t.name.removeprefix("trial_") for t in trials}, seen
    # A kill right after Ray started the next trial, before its snapshot named it: Ray forgets that trial and its
    # searcher proposes the configuration again under a new id. The forgotten trial's run ends KILLED as lost_at_kill.
    assert all(
        status == "KILLED" and why == "lost_at_kill" for trial_id, status, why in seen if trial_id not in finished
    ), seen
    # Optuna's study went on in its journal: the 4 trials of summary.csv, each once, and the forgotten one as lost
    study = _check_study(exp_dir, rel=1e-4, killed=True)  # a resumed trial's first step again may differ in rounding
    assert {trial_id for trial_id, _, _ in seen} <= {t.user_attrs["trial_id"] for t in study.trials}


def test_the_live_asha_line_counts_the_trials_it_cut_not_those_that_ended():
    from types import SimpleNamespace

    search = load_search_file(
        ROOT / "search_spaces" / "quickstart.yaml",
        ["tune.scheduler={type: asha, max_t: 4, grace_period: 1, reduction_factor: 2}"],
    )
    asha = make_scheduler(search)
    asha.set_search_properties("val_perplexity", "min")
    a, b, c = (SimpleNamespace(trial_id=i) for i in "abc")
    for trial in (a, b, c):
        asha.on_trial_add(None, trial)
    assert asha.on_trial_result(None, a, {"step": 1, "val_perplexity": 10.0}) == asha.CONTINUE
    assert asha.on_trial_result(None, b, {"step": 1, "val_perplexity": 20.0}) == asha.STOP  # cut at the first rung
    assert asha.on_trial_result(None, c, {"step": 4, "val_perplexity": 5.0, "final": True}) == asha.STOP  # at max_t
    assert asha.debug_string().startswith(
        "ASHA: 1 stopped early; val_perplexity a trial must beat to go on, per rung: "
    )


def test_pareto_front_keeps_exactly_the_undominated_trials():
    objectives = [{"metric": "val_perplexity", "mode": "min"}, {"metric": "tokens_per_second", "mode": "max"}]
    rows = [
        {"trial_id": t, "best_val_perplexity": p, "tokens_per_second": s}
        for t, p, s in [("a", 10, 100), ("b", 12, 300), ("c", 11, 90), ("d", 10, 100), ("e", 20, 300)]
    ]
    assert [r["trial_id"] for r in pareto_front(rows, objectives)] == ["a", "b", "d"]  # c: beaten by a; e: by b


@pytest.mark.parametrize(
    "objectives, expected",
    [
        ([{"metric": "val_perplexity"}], "tune.objectives: a multi-objective search needs at least two objectives"),
        (
            [{"metric": "val_perplexity"}, {"metric": "latency"}],
            "tune.objectives[1].metric: expected one of val_perplexity",
        ),
        (
            [{"metric": "val_perplexity"}, {"metric": "trainable_params", "mode": "low"}],
            "tune.objectives[1].mode: expected min or max",
        ),
        (
            [{"metric": "val_perplexity"}, {"metric": "val_perplexity"}],
            "tune.objectives[1].metric: val_perplexity is already an objective",
        ),
    ],
)
def test_bad_objectives_are_named(tmp_path, tiny_model, objectives, expected):
    path = write_search(
        tmp_path / "s.yaml", tiny_model, "builtin:python-docs", tmp_path / "runs", **{"tune.objectives": objectives}
    )
    code, _, err = run_main(tune_cli.main, [str(path), "--dry-run"], tmp_path)
    assert_one_error_line(code, err, expected)


def test_multi_objective_search_reports_its_pareto_front_and_a_warm_worker_leaves_nothing_behind(tmp_path, tiny_model):
    """A Pareto front over validation perplexity and trainable parameters; and, in the same search (one search's start
    costs more than its trials here), consecutive trials reuse a worker that already holds the frozen LM
    (tune.reuse_actors, the default): a LoRA trial runs first (it changes the shared LM object in place), and the
    prompt trial after it in the same worker must match a fresh process exactly."""
    import csv

    storage = tmp_path / "runs"
    path = write_search(
        tmp_path / "s.yaml",
        tiny_model,
        "builtin:python-docs",
        storage,
        **{
            "search": {"method": {"choice": ["lora", "prompt"]}, "train.lr": {"loguniform": [1.0e-3, 5.0e-2]}},
            "tune.points_to_evaluate": [{"method": "lora", "train.lr": 0.02}, {"method": "prompt", "train.lr": 0.02}],
            "tune.num_samples": 4,
            "tune.max_concurrent_trials": 1,
            "train.max_steps": 6,
            "tune.scheduler": {"type": "asha", "grace_period": 3, "reduction_factor": 2},
            "tune.objectives": [
                {"metric": "val_perplexity", "mode": "min"},
                {"metric": "trainable_params", "mode": "min"},
            ],
        },
    )
    proc = run_tune(str(path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp_dir = next(storage.glob("t-*"))
    with (exp_dir / "summary.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh)]
    ok = [r for r in rows if r["status"] == "ok"]
    undominated = {
        r["trial_id"]
        for r in ok
        if not any(
            float(o["best_val_perplexity"]) <= float(r["best_val_perplexity"])
            and int(o["trainable_params"]) <= int(r["trainable_params"])
            and (o["best_val_perplexity"], o["trainable_params"]) != (r["best_val_perplexity"], r["trainable_params"])
            for o in ok
        )
    }
    assert {r["trial_id"] for r in rows if r["pareto"] == "True"} == undominated and undominated
    with (exp_dir / "pareto_front.csv").open() as fh:
        assert {r["trial_id"] for r in csv.DictReader(fh)} == undominated
    assert f"Pareto front ({len(undominated)} trials; val_perplexity min, trainable_params min):" in proc.stdout
    _check_study(exp_dir, ("val_perplexity", "trainable_params"))
    client, parents, _ = read_mlflow(f"sqlite:///{storage / 'mlflow.db'}", "test-search")
    results = {a.path for a in client.list_artifacts(parents[0].info.run_id, "results")}
    assert {"results/pareto_front.csv", "results/pareto_front.png"} <= results
    report = subprocess.run(
        [sys.executable, "-m", "embinject", "report", str(exp_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        report.returncode == 0
        and "| pareto |" in report.stdout
        and "![pareto_front](pareto_front.png)" in report.stdout
    )

    # the warm worker: one worker ran every trial, at the command's priority (not Ray's nice +15 for workers, which
    # lets any busy process starve trials)
    trials = {t: _results(t) for t in sorted(exp_dir.glob("trial_*"))}
    assert len(trials) == 4 and len({rows[0]["pid"] for rows in trials.values()}) == 1
    assert {rows[0]["nice"] for rows in trials.values()} == {os.nice(0)}
    params = {t: json.loads((t / "params.json").read_text()) for t in trials}
    lora, second = (next(t for t in trials if params[t] == {"method": m, "train.lr": 0.02}) for m in ("lora", "prompt"))
    assert trials[lora][0]["trainable_started_at"] <= trials[second][0]["trainable_started_at"]  # the LoRA trial first
    search = load_search_file(str(path))
    cfg = trial_config(search.base, {**params[second], "train.device": "cpu"})
    cfg.train.threads, cfg.train.progress = 1, False
    script = (
        "import json, sys; from embinject.config import config_from_dict; from embinject.train import train; "
        "r, m = train(config_from_dict(json.loads(sys.argv[1]))); "
        "print(json.dumps([h['val_perplexity'] for h in r['history']]))"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", script, json.dumps(cfg.to_dict())], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    warm = [r["val_perplexity"] for r in trials[second]]  # ASHA may have stopped it at its first rung
    assert json.loads(fresh.stdout.splitlines()[-1])[: len(warm)] == warm and warm


def test_a_search_begun_before_its_study_was_kept_on_disk_is_resumed_without_one(tmp_path):
    """A search interrupted under an embinject that kept Optuna's study in memory resumes with the searcher Ray saved
    then: its end finds no study in the folder, names none, and leaves no empty journal behind."""
    assert close_study(tmp_path, [], ["val_perplexity"], "search_end") is False and not any(tmp_path.iterdir())


def test_search_plots_draw_without_warnings_when_every_trial_drew_the_same_value(tmp_path):
    import warnings

    params = parse_space({"train.lr": {"loguniform": [1e-4, 1e-2]}, "adapter.prefix_len": {"choice": [4, 8]}})
    trials = [
        ScoredTrial("0a1b2c3d", {"train.lr": 1e-3, "adapter.prefix_len": 4}, 30.0),
        ScoredTrial("4e5f6071", {"train.lr": 1e-3, "adapter.prefix_len": 4}, 31.0),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        paths = search_plots(params, trials, tmp_path)
    assert sorted(p.name for p in paths) == ["optimization_history.png", "parallel_coordinate.png"]


def _overlapping(texts) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent()) for t in texts if t.get_text()]
    return [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1 :] if box.overlaps(other)]


def test_search_plots_name_trials_by_id_and_axes_by_metric_and_draw_no_inactive_parameter():
    """A conditional parameter's axis appears only in the panel of the trials that drew it (never a `None` value),
    every axis and the colour bar are named by the metric and config keys, and no two labels overlap."""
    four = ["q_proj", "k_proj", "v_proj", "o_proj"]
    params = parse_space(
        {
            "method": {"choice": ["prompt", "lora"]},
            "train.lr": {"loguniform": [1e-4, 1e-2]},
            "adapter.prefix_len": {"randint": [1, 8], "when": {"method": "prompt"}},
            "adapter.target_modules": {"choice": [["q_proj", "v_proj"], four], "when": {"method": "lora"}},
        }
    )
    lora = {"method": "lora", "adapter.target_modules": four}
    trials = [
        ScoredTrial("a1b2c3d4", {"method": "prompt", "train.lr": 1e-3, "adapter.prefix_len": 3}, 40.0),
        ScoredTrial("e5f60718", {**lora, "train.lr": 3e-3}, 35.0),
        ScoredTrial("9abcdef0", {**lora, "train.lr": 2e-4, "adapter.target_modules": ["q_proj", "v_proj"]}, 38.0),
    ]
    fig = parallel_coordinate_figure(params, trials, "best_val_perplexity")
    fig.canvas.draw()
    panels = {ax.get_title(loc="left"): ax for ax in fig.axes if ax.get_title(loc="left")}
    axes = {title: [t.get_text() for t in ax.get_xticklabels()] for title, ax in panels.items()}
    assert axes == {
        "method = lora: 2 trials": ["best_val_perplexity", "train.\nlr", "adapter.\ntarget_modules"],
        "method = prompt: 1 trial": ["best_val_perplexity", "train.\nlr", "adapter.\nprefix_len"],
    }
    values = {t.get_text() for ax in panels.values() for t in ax.texts}
    assert "None" not in values and {"q_proj,v_proj", "q_proj,k_proj…", "3"} <= values, values
    colour_bar = [ax for ax in fig.axes if ax not in panels.values()]
    assert [ax.get_ylabel() for ax in colour_bar] == ["best_val_perplexity"]
    for ax in panels.values():
        assert not _overlapping(ax.get_xticklabels()) and not _overlapping(ax.texts), ax.get_title(loc="left")
    assert "Objective Value" not in {t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))}

    history = optimization_history_figure(trials, "best_val_perplexity")
    history.canvas.draw()
    ax = history.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a1b2c3d4", "e5f60718", "9abcdef0"]  # as in summary.csv
    assert ax.get_ylabel() == "best_val_perplexity" and not _overlapping(ax.get_xticklabels())


def test_a_logged_search_prints_its_trial_table_when_a_trial_starts_or_ends_not_every_15_seconds(monkeypatch):
    import types

    now = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: now[0])

    def trial(i, status, ppl=None):
        return types.SimpleNamespace(
            trial_id=str(i),
            status=status,
            last_result={"val_perplexity": ppl},
        )

    log = progress.trial_table({"train.lr": "lr"}, {"step": "step"}, 20, interactive=False)
    running = [trial(1, "RUNNING")]
    assert log.should_report(running)
    printed = 0
    for _ in range(100):  # 250 s of Ray asking, nothing started or ended
        now[0] += 2.5
        printed += log.should_report(running)
    assert printed == 0
    changed = [trial(1, "TERMINATED"), trial(2, "RUNNING")]
    assert log.should_report(changed)
    now[0] += 5
    assert not log.should_report([trial(1, "TERMINATED"), trial(2, "TERMINATED")])  # at most one table per 15 s ...
    now[0] += 15
    assert log.should_report([trial(1, "TERMINATED"), trial(2, "TERMINATED")])  # ... and the change is not lost
    now[0] += 301
    # a quiet log still shows it every 5 minutes
    assert log.should_report([trial(1, "TERMINATED"), trial(2, "TERMINATED")])
    assert log.should_report([trial(1, "TERMINATED")], done=True)
    terminal = progress.trial_table({"train.lr": "lr"}, {"val_perplexity": "val_ppl"}, 20, interactive=True)
    assert [terminal.should_report(running) for _ in range(3)] == [True, False, False]
    now[0] += 400
    assert not terminal.should_report(running)  # a terminal's table is printed again only when something in it changed
    assert terminal.should_report([trial(1, "RUNNING", 32.590646)])
    now[0] += 16
    assert not terminal.should_report([trial(1, "RUNNING", 32.59001)])  # the same value as shown, to 4 digits
    assert terminal.should_report([trial(1, "RUNNING", 30.1)])
    now[0] += 5
    assert not terminal.should_report([trial(1, "TERMINATED", 30.1)])  # at most every 15 s, and the change is not lost
    now[0] += 15
    assert terminal.should_report([trial(1, "TERMINATED", 30.1)])


def test_the_trial_table_names_the_search_folder_and_shows_4_significant_digits(tmp_path):
    """Ray's status names its own session folder and prints every digit of the best value and the scheduler's rungs."""
    from ray.tune.experiment import Trial

    def trial(i, status, result):
        t = Trial("trainable", config={"train.lr": 0.00123456789 * i}, trial_id=f"t{i}", stub=True)
        t.set_status(status)
        t.run_metadata.last_result = {**result, "config": t.config}
        return t

    trials = [
        trial(1, "RUNNING", {"step": 9, "val_perplexity": 32.590646154251644, "tokens_per_second": 12345.678}),
        trial(2, "TERMINATED", {"step": 12, "val_perplexity": 40.123456, "tokens_per_second": 987.654321}),
    ]
    folder = tmp_path / "t-2026-12-07_05-00-00"
    table = progress.trial_table(
        {"train.lr": "lr"},
        {"step": "step", "val_perplexity": "val_ppl", "tokens_per_second": "tok/s"},
        20,
        folder,
        interactive=True,
    )
    table.setup(start_time=time.time(), total_samples=6, metric="val_perplexity", mode="min")
    text = progress.status(
        table,
        trials,
        False,
        (
            "Using AsyncHyperBand: num_stopped=1\nBracket: Iter 3.000: 32.590646154251644",
            "Logical resource usage: 2.0/2 CPUs, 0/0 GPUs",
        ),
        folder,
    )
    lines = text.splitlines()
    assert f"Search folder: {folder}" in lines and "Result logdir" not in text
    assert "Current best trial: t1, val_perplexity 32.59 (lr 0.001235)" in lines
    assert "Bracket: Iter 3: 32.59" in lines and "Logical resource usage: 2/2 CPUs, 0/0 GPUs" in lines
    assert "Number of trials: 2/6 (1 RUNNING, 1 TERMINATED)" in lines
    row = next(line for line in lines if "trainable_t1" in line)
    assert [cell.strip() for cell in row.split("|")[4:8]] == ["0.001235", "9", "32.59", "12350"], row
    assert "32.5906" not in text and "0.00123457" not in text and "987.654" not in text and "987.7" in text


def test_the_trial_table_sorts_finished_trials_without_a_value_last_where_ray_fails():
    """A time budget can end a trial before its first evaluation: Ray's own sort of the finished trials then compares
    None with a number and ended the search with a traceback. The table sorts them itself: best first, no value last."""
    from ray.tune.experiment import Trial
    from ray.tune.progress_reporter import _get_progress_table_data

    def trial(i, status, value=None):
        t = Trial("trainable", config={"train.lr": 0.001 * i}, trial_id=f"t{i}", stub=True)
        t.set_status(status)
        if value is not None:
            t.run_metadata.last_result = {"val_perplexity": value, "config": t.config}
        return t

    trials = [
        trial(1, "TERMINATED"),
        trial(2, "TERMINATED", 12.0),
        trial(3, "RUNNING", 30.0),
        trial(4, "TERMINATED"),
        trial(5, "TERMINATED", 9.0),
    ]
    table = dict(
        metric_columns={"val_perplexity": "ppl"},
        parameter_columns={"train.lr": "lr"},
        metric="val_perplexity",
        mode="min",
    )
    with pytest.raises(TypeError):  # Ray's sort: the table this project no longer asks it for
        _get_progress_table_data(trials, sort_by_metric=True, **table)
    ordered = progress.finished_last_by_metric(trials, "val_perplexity", "min")
    assert [t.trial_id for t in ordered] == ["t3", "t5", "t2", "t1", "t4"]
    rows, _, _ = _get_progress_table_data(ordered, sort_by_metric=False, **table)
    assert [r[0] for r in rows] == ["trainable_t3", "trainable_t5", "trainable_t2", "trainable_t1", "trainable_t4"]
    assert [t.trial_id for t in progress.finished_last_by_metric(trials, "val_perplexity", "max")][1:3] == ["t2", "t5"]
    assert progress.trial_table({"train.lr": "lr"}, {"val_perplexity": "ppl"}, 20)._sort_by_metric is False
    live = progress.trial_table({"train.lr": "lr"}, {"val_perplexity": "ppl"}, 20)
    live.setup(start_time=0.0, total_samples=5, metric="val_perplexity", mode="min")  # as Ray hands it the search's
    assert (live.sort_metric, live.sort_mode) == ("val_perplexity", "min")


def test_a_search_of_60_trials_keeps_every_trial_a_flat_driver_and_a_short_log(tmp_path):
    """benchmarks.many_trials at a fifth of its size: every trial in summary.csv and MLflow, the driver's memory at the
    end within 20% of its memory after the first 20 trials, and a log (output not a terminal) with no per-trial wall."""
    r = measure(60, 2, 20, tmp_path)
    whole = json.dumps(r)  # a string, so that pytest shows all of it
    assert r["summary_rows"] == r["mlflow_trial_runs"] == r["mlflow_finished_runs"] == 60, whole
    assert r["driver_rss_end_over_first"] is not None, whole
    assert r["driver_rss_end_over_first"] <= 1.2, whole
    assert r["log_lines"] <= 4 * 60 and r["longest_log_line"] <= 300, whole


def test_a_search_key_set_again_in_nested_form_replaces_the_dotted_one():
    """`--set search.adapter.prefix_len=...` over a file that writes `adapter.prefix_len:` dotted: one parameter, the
    override (two would ask Optuna for one name under two ranges, and the first range would win)."""
    params = parse_space(
        {
            "adapter.prefix_len": {"randint": [1, 4]},
            "train.lr": {"loguniform": [1e-4, 1e-2]},
            "adapter": {"prefix_len": {"randint": [1, 3]}},
        }
    )
    assert [(p.key, p.args) for p in params] == [("adapter.prefix_len", [1, 3]), ("train.lr", [1e-4, 1e-2])]
