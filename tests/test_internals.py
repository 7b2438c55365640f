"""Each use of Ray's or Optuna's internals (embinject/tune/driver/internals.py) on the installed Ray and Optuna: a
version whose internals differ fails here, naming the versions, rather than somewhere in a search. No Ray cluster: each
builds the Ray or Optuna object alone."""

from __future__ import annotations

import importlib.util
import inspect
import json
import warnings

import optuna
import pytest
import ray
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from embinject.tune.driver import internals
from embinject.tune.driver.searcher import ASHA, StudySearch

WRITTEN_FOR = (
    f"embinject.tune.driver.internals was written for {internals.RAY_VERSIONS} and {internals.OPTUNA_VERSIONS}"
)
INSTALLED = f"installed: Ray {ray.__version__}, Optuna {optuna.__version__}"


def changed(what: str) -> str:
    return f"{what}: {INSTALLED}, whose internals differ; {WRITTEN_FOR}. Update that module and its test."


def _space(trial) -> None:
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)


@pytest.fixture
def searcher():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return OptunaSearch(_space, metric="loss", mode="min", sampler=optuna.samplers.RandomSampler(seed=0))


def _asha() -> ASHAScheduler:
    return ASHAScheduler(time_attr="step", metric="loss", mode="min", max_t=12, grace_period=3, reduction_factor=2)


def _trial(trial_id: str):
    from ray.tune.experiment.trial import Trial

    return Trial("__fake", trial_id=trial_id, stub=True)


def test_optuna_search_study(searcher):
    study = getattr(searcher, "_ot_study", None)
    assert isinstance(study, optuna.study.Study), changed("OptunaSearch._ot_study is not an optuna.Study")
    assert internals.searcher_study(searcher) is study


def test_optuna_search_trials(searcher):
    searcher.suggest("t1")
    trials = getattr(searcher, "_ot_trials", None)
    assert isinstance(trials, dict) and isinstance(trials.get("t1"), optuna.trial.Trial), changed(
        "OptunaSearch._ot_trials is not a dict of Ray trial id -> optuna.trial.Trial"
    )
    assert internals.searcher_trials(searcher) is trials


def test_optuna_search_completed_trials(searcher):
    searcher.suggest("t1")
    assert isinstance(getattr(searcher, "_completed_trials", None), set), changed(
        "OptunaSearch._completed_trials is not a set of Ray trial ids"
    )
    internals.mark_searcher_trial_ended(searcher, "t1")
    searcher.on_trial_complete("t1", {"loss": 1.0})  # ignored, as by a trial Ray's searcher ended itself
    state = internals.searcher_study(searcher).trials[0].state
    assert state == optuna.trial.TrialState.RUNNING, changed("OptunaSearch ends a trial marked in _completed_trials")


def test_asha_stopped_count():
    asha = _asha()
    assert isinstance(getattr(asha, "_num_stopped", None), int), changed("ASHAScheduler._num_stopped is not an int")
    asha.on_trial_add(None, _trial("a"))
    asha.on_trial_add(None, _trial("b"))
    asha.on_trial_result(None, _trial("a"), {"step": 3, "loss": 1.0})
    assert asha.on_trial_result(None, _trial("b"), {"step": 3, "loss": 9.0}) == asha.STOP
    assert internals.asha_stopped(asha) == 1, changed("ASHAScheduler._num_stopped does not count a STOP")
    internals.uncount_asha_stop(asha)
    assert internals.asha_stopped(asha) == 0


def test_asha_rungs_and_metric_sign():
    asha = _asha()
    brackets = getattr(asha, "_brackets", None)
    assert isinstance(brackets, list) and len(brackets) == 1, changed("ASHAScheduler._brackets is not a list of one")
    rungs = getattr(brackets[0], "_rungs", None)
    assert isinstance(rungs, list) and all(isinstance(r, tuple) and isinstance(r[1], dict) for r in rungs), changed(
        "ASHA's _Bracket._rungs is not a list of (milestone, {trial id: value})"
    )
    assert callable(getattr(brackets[0], "cutoff", None)), changed("ASHA's _Bracket has no cutoff(recorded)")
    assert getattr(asha, "_metric_op", None) == -1.0, changed("ASHAScheduler._metric_op is not -1 when minimising")
    for trial_id, loss in (("a", 2.0), ("b", 4.0)):
        asha.on_trial_add(None, _trial(trial_id))
        asha.on_trial_result(None, _trial(trial_id), {"step": 3, "loss": loss})
    assert internals.asha_rungs(asha) == [(3, 3.0), (6, None), (12, None)], changed(
        "ASHA's rungs or cut-offs (in the metric's units) are not as read"
    )


def test_frozen_trial_storage_id():
    study = optuna.create_study()
    study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    assert isinstance(getattr(frozen, "_trial_id", None), int), changed("optuna FrozenTrial._trial_id is not an int")
    optuna.trial.Trial(study, internals.storage_trial_id(frozen)).set_user_attr("ended_by", "test")
    assert study.get_trials(deepcopy=False)[0].user_attrs == {"ended_by": "test"}, changed(
        "optuna.trial.Trial(study, FrozenTrial._trial_id) does not reach the study's trial"
    )


def test_ray_token_logger_module():
    spec = importlib.util.find_spec(internals.RAY_TOKEN_LOGGER)
    assert spec is not None, changed(f"Ray has no module {internals.RAY_TOKEN_LOGGER}")
    with open(spec.origin, encoding="utf-8") as f:
        assert "Token authentication is enabled for this Ray cluster" in f.read(), changed(
            f"{internals.RAY_TOKEN_LOGGER} no longer logs the token authentication notice"
        )


def test_ray_init_system_config():
    source = inspect.getsource(inspect.unwrap(ray.init))
    assert f'"{internals.RAY_SYSTEM_CONFIG_ARG}"' in source, changed("ray.init takes no _system_config")


def test_ray_experiment_snapshot_trial_data(tmp_path):
    from ray import tune
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment.trial import Trial

    assert '"trial_data"' in inspect.getsource(TuneController), changed("Ray's experiment snapshot has no trial_data")
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp", trial_dir_name="trial_abc")
    trial = Trial("__fake", stub=True, storage=storage, placement_group_factory={"CPU": 1})
    trial.create_placement_group_factory()
    checkpoint = tmp_path / "exp" / "trial_abc" / "checkpoint_000003"
    checkpoint.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial.run_metadata.checkpoint_manager.register_checkpoint(
            _TrainingResult(checkpoint=tune.Checkpoint(str(checkpoint)), metrics={})
        )
    snapshot = tmp_path / "experiment_state-2026.json"
    snapshot.write_text(json.dumps({"trial_data": [trial.get_json_state()]}))
    assert internals.snapshot_trial_checkpoints(snapshot) == {"trial_abc": "checkpoint_000003"}, changed(
        "Ray's trial loader does not read a snapshot's trial_data as written"
    )


def test_the_searcher_classes_join_rays_and_pickle_by_name():
    """StudySearch and ASHA are importable alone, subclasses of Ray's, and found by name (Ray pickles its state)."""
    import pickle

    assert issubclass(StudySearch, OptunaSearch) and issubclass(ASHA, ASHAScheduler)
    assert pickle.loads(pickle.dumps(StudySearch)) is StudySearch and pickle.loads(pickle.dumps(ASHA)) is ASHA
    asha = ASHA(time_attr="step", metric="loss", mode="min", max_t=12, grace_period=3, reduction_factor=2)
    assert (
        asha.debug_string()
        == "ASHA: 0 stopped early; loss a trial must beat to go on, per rung: step 3: -, step 6: -, step 12: -"
    )


def test_cli_reporter_settings_and_status_helpers():
    """The status text (tune.progress.status) reads CLIReporter's settings and builds its table with Ray's private
    helpers: each on the installed Ray, on a trial that ended with a value."""
    import time

    from ray.tune import CLIReporter

    reporter = CLIReporter(parameter_columns={"lr": "lr"}, metric_columns={"loss": "loss"}, max_column_length=20)
    reporter.set_search_properties("loss", "min")
    reporter.set_total_samples(3)
    trial = _trial("t1")
    trial.config = {"lr": 0.01}
    trial.run_metadata.last_result = {"loss": 1.25}
    trial.status = "TERMINATED"
    try:
        settings = internals.reporter_settings(reporter)
        rows, columns, overflow, _ = internals.progress_table([trial], settings, done=True)
        line = internals.time_passed_line(settings["start_time"], time.time())
        errors = internals.trial_errors([], None)  # called only where a trial failed; its signature checked here
        table = internals.psql_table(rows, columns)
    except (AttributeError, TypeError, ValueError, ImportError) as exc:
        pytest.fail(changed(f"CLIReporter's settings or ray.tune.progress_reporter's table helpers ({exc})"))
    assert (settings["metric"], settings["mode"], settings["total_samples"]) == ("loss", "min", 3), changed(
        "CLIReporter"
    )
    assert "loss" in columns and "lr" in columns and overflow == 0 and "1.25" in table, changed(
        "_get_progress_table_data"
    )
    assert line.startswith("Current time:"), changed("_time_passed_str")
    assert isinstance(errors, str), changed("_trial_errors_str")
