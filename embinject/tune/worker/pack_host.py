"""Packed trials, the side that runs in Ray's workers: a host actor owns a frozen LM and trains up to `PackPlan.size`
trials attached to it in packed steps (`embinject.train.packing`). A pack computes on one trial's CPUs and, on GPUs,
holds a whole GPU, so a node runs one host per GPU, or on CPUs one per trial's worth of its cores (its lanes: 2 hosts
of 8 members on 2 cores with 1 CPU a trial), each with the members Ray placed there filling the lowest lane with
room. Each trial stays a Ray Tune trial: a thin trainable process that Optuna sampled and ASHA can stop, which joins
the host, relays its reports and checkpoints to Tune (`embinject.tune.worker.member`), and resumes from its own
checkpoint when Ray restarts it. A host drops a member whose trainable stopped asking for news (stopped, killed) and
leaves when it has had no member for a while. How a search packs (`PackPlan`) is decided by the driver
(`embinject.tune.driver.pack_plan`).
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

from ...config import Config, config_from_dict
from ...errors import first_line
from ...fsutil import scratch_dir
from ...space import trial_config
from ...train import Diverged, checkpointed_lm, precision, shared_lm, train
from ...train.packing import Left, PackedSteps, StepPack, unpackable_reason
from .member import relay
from .pack_names import LOST_AFTER_S, NAMESPACE, POLL_S, PackPlan, host_name, pack_cpus
from .trainable import trainable

IDLE_EXIT_S = 60.0  # a host with no member for this long exits (its name and memory are freed)


class _Member:
    def __init__(self, key: str):
        self.key = key
        self.events: queue.Queue = queue.Queue()
        self.acked = threading.Event()  # no report of this member is in flight (Tune holds the last one's checkpoint)
        self.acked.set()
        self.in_flight: str | None = None  # the checkpoint directory of the report in flight, removed once acked
        self.last_poll = time.monotonic()
        self.gone = False


class PackHost:
    """The actor (see the module docstring). Its methods run in a thread pool: members' threads train, trainables
    wait in `next_event` (a blocking call with a timeout, answered as soon as an event is queued) and `ack` each report
    once Tune holds its checkpoint; a member trains on meanwhile, and its next report waits for that `ack`."""

    def __init__(self, model: str, device: str, dtype: str, checkpointing: bool, threads: int):
        torch.set_num_threads(max(1, threads))
        self.device = device
        self.lm = shared_lm(model, device)
        # set once for every member (the members' loops leave the LM's mode alone here), as a lone trial's loop sets it
        checkpointed_lm(self.lm.model, checkpointing).__enter__()
        self.pack = StepPack(device, precision.autocast_dtype(dtype, device))
        self.build_lock = threading.Lock()
        self.lock = threading.Lock()
        self.members: dict[str, _Member] = {}
        self.joined = 0
        self.work = scratch_dir("pack")
        self.idle_since = time.monotonic()
        threading.Thread(target=self._watch, daemon=True).start()

    def join(self, trial_id: str, cfg: dict, resume_dir: str | None, capacity: int | None = None) -> dict:
        """`trial_id` trains here from now on; with `capacity`, only while fewer trials than that are members
        (else {"full": members} and nothing changes: the trial tries its node's next lane)."""
        with self.lock:
            others = sum(1 for k in self.members if k.split("#")[0] != trial_id)
            if capacity is not None and others >= capacity:
                return {"full": others}
            self.joined += 1
            key = f"{trial_id}#{self.joined}"  # a restarted trial is a new member; its old one is dropped
            for old in [m for k, m in self.members.items() if k.split("#")[0] == trial_id]:
                self._drop(old)
            member = self.members[key] = _Member(key)
        self.pack.join(key)
        joined_at = time.time()  # its training starts now: its trainable counts the time to here as waiting
        threading.Thread(target=self._run, args=(member, config_from_dict(cfg), resume_dir), daemon=True).start()
        return {"member": key, "pid": os.getpid(), "joined_at": joined_at}

    def heartbeat(self, key: str) -> None:
        member = self.members.get(key)
        if member is not None:
            member.last_poll = time.monotonic()

    def next_event(self, key: str, timeout: float = POLL_S):
        member = self.members.get(key)
        if member is None:
            return ("error", f"this trial is no longer a member of the pack in process {os.getpid()}")
        member.last_poll = time.monotonic()
        try:
            return member.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def ack(self, key: str) -> None:
        member = self.members.get(key)
        if member is not None:
            _release(member)

    def leave(self, key: str) -> None:
        with self.lock:
            member = self.members.get(key)
            if member is not None:
                self._drop(member)

    def close(self) -> None:
        """The search ended: the host's scratch directory goes before Ray kills it (see
        embinject.tune.driver.pack_plan.stop_hosts)."""
        shutil.rmtree(self.work, ignore_errors=True)

    # ---- inside the host
    def _drop(self, member: _Member) -> None:
        member.gone = True
        _release(member)
        self.members.pop(member.key, None)
        self.pack.leave(member.key)
        if not self.members:
            self.idle_since = time.monotonic()

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            with self.lock:
                for member in [m for m in self.members.values() if now - m.last_poll > LOST_AFTER_S]:
                    self._drop(member)  # its trainable was stopped or killed
                if not self.members and now - self.idle_since > IDLE_EXIT_S:
                    shutil.rmtree(self.work, ignore_errors=True)
                    os._exit(0)

    def _run(self, member: _Member, cfg: Config, resume_dir: str | None) -> None:
        cfg.train.threads = None  # the host set them for all its members
        cfg.train.progress = False
        steps = PackedSteps(self.pack, member.key, self.build_lock)

        def report(metrics: dict, write_checkpoint) -> None:
            """The checkpoint written, the report handed to the relay, and back to training at once: the pack's
            steps do not wait for Ray to take it (Tune's answer, stop or go on, arrives through `leave`). At most
            one report is in flight: the next waits for the last one's acknowledgement."""
            out = Path(tempfile.mkdtemp(dir=self.work))
            try:
                write_checkpoint(out)
                while not member.acked.wait(0.5):
                    if member.gone:
                        raise Left(member.key)
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)
                raise
            member.acked.clear()
            member.in_flight = str(out)
            member.events.put(("report", metrics, str(out)))

        method = None
        try:
            _, method = train(cfg, report=report, resume_from=Path(resume_dir) if resume_dir else None, steps=steps)
            member.events.put(("end",))
        except Left:
            pass
        except Diverged as exc:
            member.events.put(("diverged", exc.step, exc.value, str(exc)))
        except BaseException as exc:  # the trial fails alone; Ray restarts it per tune.max_failures
            member.events.put(("error", f"{first_line(exc)}\n{traceback.format_exc()}"))
        finally:
            if method is not None:
                method.release()
            # Out of the pack at once, but still a member until its trainable has read the last event and left
            # (or is found lost): dropping it here would answer that read with "no longer a member".
            self.pack.leave(member.key)


class HostStarter:
    """Starts the pack hosts that members ask for on CPUs: a member's process (`embinject.tune.worker.member`) imports
    no torch, so cannot start one itself. One per search, started by the driver and owned by it (it ends with the
    driver, as its handle's owner), holding no LM."""

    def start_host(self, plan: PackPlan, cfg: dict, node_id: str, lane: int, threads: int):
        """The host of `node_id`'s `lane` on its CPUs, started where it does not exist yet."""
        return attach(plan, config_from_dict(cfg), threads, lane, node_id)

    def close(self) -> None:
        """As a host's (see embinject.tune.driver.pack_plan.stop_hosts): nothing to remove."""


def _release(member: _Member) -> None:
    """Its report in flight is acknowledged (Tune copied the checkpoint) or will never be: its directory goes."""
    directory, member.in_flight = member.in_flight, None
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
    member.acked.set()


def attach(plan: PackPlan, cfg: Config, threads: int | None = None, lane: int = 0, node_id: str | None = None):
    """The host of a node's device and `lane` (created if it does not exist yet; None: this process's node), whose
    members compute on `threads` CPU threads (None: the CPUs Ray gave this trial, times the pack's size)."""
    import ray  # already imported in a trial's process: Ray runs it
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    gpus = [] if node_id else [str(g) for g in ray.get_gpu_ids()]
    node_id = node_id or ray.get_runtime_context().get_node_id()
    device = "cuda" if gpus else "cpu"
    options = dict(
        name=host_name(plan, cfg, node_id, gpus[0] if gpus else "cpu", lane),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
        max_concurrency=4 * plan.size + 8,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    )
    if gpus:  # the host asks Ray for no GPU (its members hold the shares), so Ray would hide the device from it
        options["runtime_env"] = {
            "env_vars": {"CUDA_VISIBLE_DEVICES": gpus[0], "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}
        }
    if threads is None:
        threads = max(1, round(pack_cpus(plan)))
    return (
        ray.remote(PackHost)
        .options(**options)
        .remote(cfg.model, device, cfg.train.dtype, cfg.train.gradient_checkpointing, threads)
    )


def packed_trainable(config: dict, base: dict | None = None, plan: PackPlan | None = None) -> None:
    """One trial of a packed search that starts its own hosts (on GPUs: one per GPU Ray gives a trial), or whose
    trials do not all pack (LoRA, deep prompts: alone, as in a search that does not pack)."""
    cfg = trial_config(base, config)
    if unpackable_reason(cfg) is not None:
        return trainable(config, base)
    relay(cfg, plan, lambda plan, cfg, lane: attach(plan, cfg, lane=lane))
