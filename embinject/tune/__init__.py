"""Search: Ray Tune runs trials of `embinject.train.train` (`trainable`), Optuna proposes them and ASHA stops
them (`searcher`), the driver alone logs to MLflow (`callback`, through `embinject.tracking`) and writes the
summary and the champion (`results`). This is the only package that imports Ray; `python -m embinject.tune`
is its command (`__main__`)."""
from .cluster import warm_caches
from .driver import AlreadyFinished, run_search
from .results import objective_value, pareto_front, summarize
from .searcher import optuna_sampler
from .trainable import trainable

__all__ = ["AlreadyFinished", "objective_value", "optuna_sampler", "pareto_front", "run_search", "summarize", "trainable",
           "warm_caches"]
