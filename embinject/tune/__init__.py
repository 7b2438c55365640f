"""Search, split by where its code runs. `driver/`, in the command's process: Optuna proposes trials and ASHA stops
them (`driver.searcher`), `tune.pack` is resolved once (`driver.pack_plan`), the driver alone logs to MLflow
(`driver.callback`, through `embinject.tracking`) and writes the summary and the champion (`driver.results`).
`worker/`, in Ray's worker processes: each trial runs `embinject.train.train` (`worker.trainable`) or joins a pack's
host (`worker.pack_host`), from a process that only relays and imports no torch (`worker.member`); it imports neither
MLflow nor the driver. This is the only package that imports Ray;
`python -m embinject.tune` is its command (`__main__`).

Nothing is imported here: a Ray worker that runs trials imports `worker.trainable` through this package, and the
driver's modules (MLflow, plots, serving) would add seconds to every worker's start. Import from the modules:
`from embinject.tune.driver.run import run_search`."""
