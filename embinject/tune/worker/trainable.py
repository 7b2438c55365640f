"""The trainable: one trial in its own Ray worker process. It is `embinject.train.train` unchanged, with a
report callback that hands each evaluation and checkpoint to Ray Tune."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from ...fsutil import scratch_dir
from ...space import trial_config
from ...train import Diverged, train


def trainable(config: dict, base: dict | None = None) -> None:
    import ray  # already imported in a trial's process: Ray runs it
    from ray import tune

    started_at = time.time()  # wall clock, comparable with the driver's record of the trial's start
    cfg = trial_config(base, config)
    cfg.train.progress = False
    if cfg.train.threads is None:  # match torch's threads to the CPUs Ray gave this trial
        cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
        cfg.train.threads = max(1, int(cpus))
    node_id = ray.get_runtime_context().get_node_id()
    work = scratch_dir("trial")  # also removes what trials that Ray killed on this host left
    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume_from = Path(checkpoint.to_directory(str(work / "resume")))

    # nice: the priority trials run at, 0 unless the user lowered the whole search (see cluster.LOCAL_RAY_SYSTEM_CONFIG)
    extra = {"node_id": node_id, "trainable_started_at": started_at, "pid": os.getpid(), "nice": os.nice(0)}

    def report(metrics: dict, write_checkpoint) -> None:
        out = Path(tempfile.mkdtemp(dir=work))
        write_checkpoint(out)
        tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(str(out)))
        shutil.rmtree(out, ignore_errors=True)

    method = None
    try:
        _, method = train(cfg, report=report, resume_from=resume_from)
    except Diverged as exc:
        # A final result without a checkpoint: the last checkpoint keeps the finite best adapter, the
        # scheduler sees a very bad value, and the searcher (Optuna's FAIL) and the driver mark the trial failed.
        value = exc.value if math.isfinite(exc.value) else float("inf")
        tune.report({"step": exc.step, "val_perplexity": value, "final": True, "diverged": str(exc), **extra})
    finally:
        if method is not None:
            method.release()
        shutil.rmtree(work, ignore_errors=True)
