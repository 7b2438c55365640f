"""Search: Ray Tune runs trials of `embinject.train.train` (`trainable`), Optuna proposes them and ASHA stops
them (`searcher`), the driver alone logs to MLflow (`callback`, through `embinject.tracking`) and writes the
summary and the champion (`results`). This is the only package that imports Ray; `python -m embinject.tune`
is its command (`__main__`).

Nothing is imported here: a Ray worker that runs trials imports `trainable` through this package, and the
driver's modules (MLflow, plots, serving) would add seconds to every worker's start. Import from the modules:
`from embinject.tune.driver import run_search`."""
