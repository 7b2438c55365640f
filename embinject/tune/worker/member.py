"""A packed trial's own process: it joins a pack host (`embinject.tune.worker.pack_host`), which trains it, and
relays what the host reports to Ray Tune. It imports no torch (a contract holds it): a packed search starts one such
process per trial at once, and on a CPU each would otherwise spend seconds of the pack's cores importing what it never
runs. It finds its host by name, and where the host does not exist yet asks the search's starter (an actor the
driver started) to start it; where the driver started none (on GPUs), `pack_host.packed_trainable` runs instead,
which starts hosts itself.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time

from ...config import Config
from ...fsutil import scratch_dir
from ...space import trial_config
from .pack_names import NAMESPACE, POLL_S, PackPlan, host_name, lanes, node_cpus, pack_cpus


def packed_trainable(config: dict, base: dict | None = None, plan: PackPlan | None = None) -> None:
    """One trial of a packed search whose hosts the driver started (every trial of it packs)."""
    relay(trial_config(base, config), plan, find_host)


def find_host(plan: PackPlan, cfg: Config, lane: int):
    """The host of this node's `lane` on its CPUs, started by the search's starter where it does not exist yet (a
    lane the driver did not fill, another node, a host that left or was killed)."""
    import ray  # already imported in a trial's process: Ray runs it

    node_id = ray.get_runtime_context().get_node_id()
    try:
        return ray.get_actor(host_name(plan, cfg, node_id, "cpu", lane), namespace=NAMESPACE)
    except ValueError:
        pass
    try:
        starter = ray.get_actor(plan.starter, namespace=NAMESPACE)
    except ValueError:  # Ray's own "failed to look up actor" says neither what it is nor what to do
        raise RuntimeError(
            f"pack host starter {plan.starter} is gone (the search's driver starts it and owns it; it ends with the "
            "driver): this trial cannot start its pack host; resume the search with --resume"
        ) from None
    return ray.get(starter.start_host.remote(plan, cfg.to_dict(), node_id, lane, max(1, round(pack_cpus(plan)))))


def relay(cfg: Config, plan: PackPlan, find) -> None:
    """Joins this trial's host (`find(plan, cfg, lane)`: the handle of that lane's host) and relays what its member
    reports to Ray Tune until the member ends."""
    import ray  # already imported in a trial's process: Ray runs it
    from ray import tune

    started_at = time.time()
    work = scratch_dir("trial")
    host = key = None
    alive = threading.Event()
    alive.set()
    try:
        resume_dir = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            resume_dir = checkpoint.to_directory(str(work / "resume"))
        if cfg.train.device == "auto":
            cfg.train.device = "cuda" if ray.get_gpu_ids() else "cpu"
        host, joined = join_lane(plan, cfg, tune.get_context().get_trial_id(), resume_dir, find)
        key = joined["member"]
        threading.Thread(target=_beat, args=(host, key, alive), daemon=True).start()
        extra = {
            "node_id": ray.get_runtime_context().get_node_id(),
            "trainable_started_at": started_at,
            "pid": os.getpid(),
            "pack_pid": joined["pid"],
        }
        # attaching (a new host loads the LM first) and joining: both clocks are this node's (the host runs here)
        joining = max(0.0, joined["joined_at"] - started_at)
        while True:
            event = ray.get(host.next_event.remote(key, POLL_S))
            if event is None:
                continue
            kind = event[0]
            if kind == "report":
                _, metrics, directory = event
                metrics["spent_waiting"] = metrics.get("spent_waiting", 0.0) + joining  # see time_split (callback)
                tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(directory))
                host.ack.remote(key)
            elif kind == "diverged":  # as `trainable` reports it
                _, step, value, message = event
                value = value if math.isfinite(value) else float("inf")
                tune.report({"step": step, "val_perplexity": value, "final": True, "diverged": message, **extra})
                return
            elif kind == "end":
                return
            else:
                raise RuntimeError(f"pack member {key} failed: {event[1]}")
    finally:
        alive.clear()
        if host is not None and key is not None:
            # out of the pack before Ray ends this process (a stopped trial's member would train on, unseen, until
            # found lost): waited for, briefly, since a host that is gone never answers
            ray.wait([host.leave.remote(key)], timeout=5.0)
        shutil.rmtree(work, ignore_errors=True)


def join_lane(plan: PackPlan, cfg: Config, trial_id: str, resume_dir: str | None, find):
    """This trial's host and its answer to `join`: on a GPU, the GPU's host; on CPUs, the node's lowest lane with
    room. Ray places no more members on a node than its lanes hold, but a member that just ended may keep its place
    a moment: where every lane is full, the trial joins the one with the fewest members."""
    import ray  # already imported in a trial's process: Ray runs it

    count = 1
    if not ray.get_gpu_ids():
        count = lanes(node_cpus(), pack_cpus(plan))
    fullest = []
    for lane in range(count):
        host = find(plan, cfg, lane)
        joined = ray.get(host.join.remote(trial_id, cfg.to_dict(), resume_dir, plan.size if count > 1 else None))
        if "full" not in joined:
            return host, joined
        fullest.append((joined["full"], lane, host))
    _, _, host = min(fullest, key=lambda f: f[:2])
    return host, ray.get(host.join.remote(trial_id, cfg.to_dict(), resume_dir))


def _beat(host, key: str, alive: threading.Event) -> None:
    """Tells the host this trial lives, also while `tune.report` waits on a driver that is slow to take results
    (a tracking server that does not answer, say); a process that dies stops beating and its member is dropped."""
    while alive.is_set():
        host.heartbeat.remote(key)
        time.sleep(POLL_S)
