"""Packed trials, the side that runs in Ray's workers: one host actor per (node, device, model) owns the frozen LM
and trains every trial attached to it in packed steps (`embinject.train.packing`). Each trial stays a Ray Tune trial:
a thin trainable process that Optuna sampled and ASHA can stop, which joins the host, relays its reports and
checkpoints to Tune, and resumes from its own checkpoint when Ray restarts it. A host drops a member whose trainable
stopped asking for news (stopped, killed) and leaves when it has had no member for a while. How a search packs
(`PackPlan`) is decided by the driver (`embinject.tune.driver.pack_plan`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
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
from .trainable import trainable

POLL_S = 2.0  # a trainable's heartbeat reaches its host this often (also while Tune holds it in tune.report) ...
LOST_AFTER_S = 20.0  # ... and a member whose trainable has sent none for this long is dropped (stopped or killed)
IDLE_EXIT_S = 60.0  # a host with no member for this long exits (its name and memory are freed)
NAMESPACE = "embinject"


@dataclasses.dataclass(frozen=True)
class PackPlan:
    size: int  # trials per pack; 1: every trial trains alone, in its own process
    why: str  # one line: how `size` was chosen
    key: str = ""  # names this search's hosts

    def cpus_each(self, cpus: float) -> float:
        return cpus / self.size

    def gpus_each(self, gpus: float) -> float:
        return 0.0 if gpus <= 0 else 1.0 / self.size  # a pack holds a whole GPU: one LM, `size` members

    def resources(self, cpus: float, gpus: float) -> dict:
        """What one member asks Ray for: a pack of `size` takes the CPUs one trial alone asks for, and a whole GPU."""
        return {"cpu": self.cpus_each(cpus), "gpu": self.gpus_each(gpus)}


def host_name(plan: PackPlan, cfg: Config, node_id: str, gpu: str) -> str:
    what = f"{cfg.model}|{cfg.train.dtype}|{cfg.train.gradient_checkpointing}"
    return f"embinject-pack-{plan.key}-{node_id[:12]}-{gpu}-{hashlib.sha256(what.encode()).hexdigest()[:8]}"


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

    def join(self, trial_id: str, cfg: dict, resume_dir: str | None) -> dict:
        with self.lock:
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


def _release(member: _Member) -> None:
    """Its report in flight is acknowledged (Tune copied the checkpoint) or will never be: its directory goes."""
    directory, member.in_flight = member.in_flight, None
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
    member.acked.set()


def attach(plan: PackPlan, cfg: Config, threads: int | None = None):
    """This trial's host (created on this node and device if it does not exist yet), whose members compute on
    `threads` CPU threads (None: the CPUs Ray gave this trial, times the pack's size)."""
    import ray  # already imported in a trial's process: Ray runs it
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node_id = ray.get_runtime_context().get_node_id()
    gpus = [str(g) for g in ray.get_gpu_ids()]
    device = "cuda" if gpus else "cpu"
    options = dict(name=host_name(plan, cfg, node_id, gpus[0] if gpus else "cpu"), namespace=NAMESPACE,
                   get_if_exists=True, lifetime="detached", num_cpus=0, max_concurrency=4 * plan.size + 8,
                   scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
    if gpus:  # the host asks Ray for no GPU (its members hold the shares), so Ray would hide the device from it
        options["runtime_env"] = {"env_vars": {"CUDA_VISIBLE_DEVICES": gpus[0],
                                               "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}
    if threads is None:
        threads = max(1, round(ray.get_runtime_context().get_assigned_resources().get("CPU", 1) * plan.size))
    return ray.remote(PackHost).options(**options).remote(cfg.model, device, cfg.train.dtype,
                                                           cfg.train.gradient_checkpointing, threads)


def packed_trainable(config: dict, base: dict | None = None, plan: PackPlan | None = None) -> None:
    """One trial of a packed search: joins its host and relays what the host's member reports to Ray Tune."""
    import ray  # already imported in a trial's process: Ray runs it
    from ray import tune

    cfg = trial_config(base, config)
    if unpackable_reason(cfg) is not None:
        return trainable(config, base)  # LoRA, deep prompts: alone, as in a search that does not pack
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
        host = attach(plan, cfg)
        joined = ray.get(host.join.remote(tune.get_context().get_trial_id(), cfg.to_dict(), resume_dir))
        key = joined["member"]
        threading.Thread(target=_beat, args=(host, key, alive), daemon=True).start()
        extra = {"node_id": ray.get_runtime_context().get_node_id(), "trainable_started_at": started_at,
                 "pid": os.getpid(), "pack_pid": joined["pid"]}
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


def _beat(host, key: str, alive: threading.Event) -> None:
    """Tells the host this trial lives, also while `tune.report` waits on a driver that is slow to take results
    (a tracking server that does not answer, say); a process that dies stops beating and its member is dropped."""
    while alive.is_set():
        host.heartbeat.remote(key)
        time.sleep(POLL_S)


