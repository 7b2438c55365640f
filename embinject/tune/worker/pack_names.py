"""What names a pack host, what a search's packs are (`PackPlan`) and how many packs a node runs: torch-free, for the
driver and for a packed trial's own process, which only relays (`embinject.tune.worker.member`)."""

from __future__ import annotations

import dataclasses
import hashlib

from ...config import Config

POLL_S = 2.0  # a trainable's heartbeat reaches its host this often (also while Tune holds it in tune.report) ...
LOST_AFTER_S = 20.0  # ... and a member whose trainable has sent none for this long is dropped (stopped or killed)
NAMESPACE = "embinject"


@dataclasses.dataclass(frozen=True)
class PackPlan:
    size: int  # trials per pack; 1: every trial trains alone, in its own process
    why: str  # one line: how `size` was chosen
    key: str = ""  # names this search's hosts
    starter: str = ""  # names the actor that starts the hosts members ask for, where the driver started one

    def cpus_each(self, cpus: float) -> float:
        return cpus / self.size

    def gpus_each(self, gpus: float) -> float:
        return 0.0 if gpus <= 0 else 1.0 / self.size  # a pack holds a whole GPU: one LM, `size` members

    def resources(self, cpus: float, gpus: float) -> dict:
        """What one member asks Ray for: a pack of `size` takes the CPUs one trial alone asks for, and a whole GPU."""
        return {"cpu": self.cpus_each(cpus), "gpu": self.gpus_each(gpus)}


def host_prefix(plan: PackPlan) -> str:
    """What the names of this search's hosts begin with."""
    return f"embinject-pack-{plan.key}-"


def starter_name(plan: PackPlan) -> str:
    return f"{host_prefix(plan)}starter"


def host_name(plan: PackPlan, cfg: Config, node_id: str, gpu: str, lane: int = 0) -> str:
    what = f"{cfg.model}|{cfg.train.dtype}|{cfg.train.gradient_checkpointing}"
    return f"{host_prefix(plan)}{node_id[:12]}-{gpu}-{lane}-{hashlib.sha256(what.encode()).hexdigest()[:8]}"


def lanes(cpus: float, trial_cpus: float) -> int:
    """How many packs `cpus` CPU cores run side by side: one per trial's worth of them (at least one)."""
    return max(1, int(cpus // max(trial_cpus, 1e-9)))


def pack_cpus(plan: PackPlan) -> float:
    """The CPUs a pack computes on, from a member's process: the share Ray gave it times the pack's size (one trial's
    CPUs), to the hundredth (Ray keeps fractions to 1e-4: 7 members of 1/7 CPU hold 1.0003)."""
    import ray  # already imported where this runs: in Ray's processes

    return round(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0) * plan.size, 2)


def node_cpus(node_id: str | None = None) -> float:
    """The CPUs Ray counts on a node (None: this process's)."""
    import ray  # already imported where this runs: in Ray's processes and the driver

    node_id = node_id or ray.get_runtime_context().get_node_id()
    return next((n["Resources"].get("CPU", 1.0) for n in ray.nodes() if n["NodeID"] == node_id), 1.0)
