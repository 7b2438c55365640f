"""The search file's own sections as typed settings: `tune:` (how the search runs: trials, sampler, scheduler,
resources, packing, warm starts) and `mlflow:` (where its runs and models go). Built and checked as the training
config is (`embinject.fields.settings_from_dict`), so a wrong key or value is one line naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .config import walk_key
from .fields import choice, number, setting
from .errors import ConfigError


@dataclass
class SchedulerSettings:
    type: str = choice("asha", "none", default="asha", help="early stopping of weak trials: ASHA, or none")
    max_t: Optional[int] = number(
        None, positive=True, help="ASHA's last rung in optimizer steps (null: train.max_steps)"
    )
    grace_period: int = number(10, positive=True, help="optimizer steps before ASHA's first cut")
    reduction_factor: float = number(2.0, min=1.01, help="ASHA keeps 1 / reduction_factor of the trials at each rung")


@dataclass
class ResourceSettings:
    cpus: float = number(
        1.0,
        positive=True,
        help="CPUs each trial asks Ray for; a pack of trials computes on this "
        "many (a node runs as many packs side by side as it holds trials)",
    )
    gpus: float = number(0.0, min=0.0, help="GPUs each trial asks for; fractional: small trials share one GPU")


@dataclass
class TuneSettings:
    name: str = setting("search", help="the search's name: its folder is <storage_path>/<name>-<timestamp>")
    num_samples: int = number(8, positive=True, help="trials to run")
    max_concurrent_trials: int = number(2, positive=True, help="trials running at once at most")
    metric: str = choice("val_perplexity", "train_loss", default="val_perplexity", help="what the search optimises")
    mode: str = choice("min", "max", default="min", help="whether metric is minimised or maximised")
    # ASHA and the champion follow the first objective
    objectives: list[dict] = setting(
        factory=list,
        help="multi-objective instead of metric/mode, e.g. [{metric: "
        "val_perplexity, mode: min}, {metric: trainable_params, mode: min}]",
    )
    time_budget_s: Optional[float] = number(
        None, positive=True, help="stop the search after this many seconds (null: no limit)"
    )
    search_alg: str = choice("optuna", "random", default="optuna", help="Optuna's TPE (seeded) or random sampling")
    # Optuna's own default of 10 would leave a 10-trial search with no guided trial at all
    startup_trials: Optional[int] = number(
        None, positive=True, help="TPE samples at random for this many trials first (null: num_samples / 8, 3 to 10)"
    )
    # Optuna's group=True splits a conditional space into the groups of parameters that appear together
    multivariate: bool = setting(
        False, help="one joint TPE model per group of parameters that appear together, not one per parameter"
    )
    seed: int = setting(0, help="the sampler's seed")

    @property
    def random_trials_first(self) -> int:
        """How many trials TPE samples at random before its model guides the draws."""
        return self.startup_trials or min(10, max(3, self.num_samples // 8))

    points_to_evaluate: list[dict] = setting(
        factory=list, help="trials to run first, as {dotted key: value} mappings of searched keys"
    )
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    resources: ResourceSettings = field(default_factory=ResourceSettings)
    storage_path: str = setting(
        "runs/tune", help="where searches live; shared storage (NFS, s3://...) on several nodes"
    )
    reuse_actors: bool = setting(True, help="consecutive trials on a node reuse a worker that holds the frozen LM")
    pack: Union[int, str] = field(
        default="auto",
        metadata={
            "pack": True,
            "help": "trials sharing one frozen LM and "
            "one step: auto (packs where a probe at the start finds a packed step faster than "
            "separate steps: as many as run at once, at most 8, and on a GPU as memory holds), "
            "off, or K",
        },
    )
    max_failures: int = number(
        2, min=0, help="restarts of a trial whose worker or node died, each from its last checkpoint"
    )
    warm_start: list = field(
        default_factory=list,
        metadata={
            "warm_start": True,
            "help": "earlier searches to start "
            "from: folders, runs:/PARENT_RUN_ID, experiment:NAME, {run|experiment, tracking_uri}",
        },
    )


OBJECTIVE_METRICS = ("val_perplexity", "train_loss", "trainable_params", "tokens_per_second")


@dataclass
class MlflowSettings:
    tracking_uri: Optional[str] = setting(None, help="the MLflow store (null: sqlite:///<storage_path>/mlflow.db)")
    experiment: str = field(
        default="embinject",
        metadata={"mlflow_name": "experiment", "help": "the MLflow experiment of the search's runs"},
    )
    register_as: Optional[str] = field(
        default=None,
        metadata={
            "mlflow_name": "registered model",
            "help": "the registered model the champion becomes a version of (null: register nothing)",
        },
    )
    keep_top: int = number(3, positive=True, help="the k best trials' adapters become MLflow logged models")


def value_type(key: str) -> Any:
    """The declared type of a dotted key of the training config or of the `tune:` and `mlflow:` settings; None
    for a section, a `search:` entry or a key nobody declared (named later, where the config is built)."""
    head, _, rest = key.partition(".")
    sections = {"tune": TuneSettings, "mlflow": MlflowSettings}
    try:
        tp, _, section = walk_key(rest, sections[head]) if head in sections and rest else walk_key(key)
    except ConfigError:
        return None
    return None if section else tp
