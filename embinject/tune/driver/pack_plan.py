"""How a search packs its trials (`tune.pack` resolved into a `PackPlan`, once, at the start), and the driver's
part in the pack hosts' lives: started before the first trial on CPUs, ended with the search. The hosts themselves
run in Ray's workers (`embinject.tune.worker.pack_host`).
"""

from __future__ import annotations

import dataclasses

from ...space import SearchFile, trial_config
from ...train.packing import unpackable_reason
from ..worker.pack_host import HostStarter, attach
from ..worker.pack_names import NAMESPACE, PackPlan, host_prefix, lanes, node_cpus, starter_name

AUTO_CAP = 8  # the largest pack `tune.pack: auto` makes (benchmarks.packing measured K = 1, 2, 4, 8)
# `auto` packs only where the probe's packed step beats separate steps by this factor: a packed search also pays for
# what happens outside its steps (members' relays, rendezvous, trial processes), and on 2 CPU cores it turned about
# half of its step speedup into trials per hour (benchmarks.packed_search), so a packed step barely faster than
# separate ones made the search slower
MIN_PROBE_SPEEDUP = 1.5
_STARTERS: dict = {}  # the handle of each search's host starter (by PackPlan.key): it lives while its handle does


def packable_methods(search: SearchFile) -> list[str]:
    """The methods this search draws whose trials can train in a pack, sorted."""
    methods = search.choices("method", {search.config.method})
    return sorted(m for m in methods if unpackable_reason(trial_config(search.base, {"method": m})) is None)


def auto_cap(search: SearchFile) -> int:
    """The largest pack `tune.pack: auto` makes here: AUTO_CAP, or fewer where fewer trials run at once."""
    return min(AUTO_CAP, search.tune.max_concurrent_trials)


def needs_probe(search: SearchFile) -> bool:
    """Whether `tune.pack` resolves only once a probe at the search's start measured it (auto, where trials pack)."""
    return search.tune.pack == "auto" and plan_pack(search).size > 1


def plan_pack(search: SearchFile, probe: dict | None = None, key: str = "") -> PackPlan:
    """`tune.pack` resolved: off, a number, or auto: packs of up to 8 (as many as run at once, and as a GPU's memory
    holds) where the probe at the search's start (`embinject.tune.worker.probe`) found a packed step at least
    MIN_PROBE_SPEEDUP times as fast as separate steps on this device; None: not measured yet (a dry run). The probe's
    `at_once`: how many of the separate steps unpacked trials would take side by side (on CPUs, as many trials as the
    cores hold at once), and its `packs`: how many packs then run side by side (a pack computes on one trial's CPUs)."""
    t = search.tune
    setting = t.pack
    if setting == "off" or setting == 1:
        return PackPlan(1, f"tune.pack: {setting}; every trial trains alone", key)
    packable = packable_methods(search)
    if not packable:
        first = sorted(search.choices("method", {search.config.method}))[0]
        why = unpackable_reason(trial_config(search.base, {"method": first}))
        return PackPlan(1, f"tune.pack: {setting}, but no trial of this search can pack ({why})", key)
    if isinstance(setting, int):
        limit = (
            f"; tune.max_concurrent_trials ({t.max_concurrent_trials}) caps how many run at once"
            if t.max_concurrent_trials < setting
            else ""
        )
        return PackPlan(setting, f"tune.pack: {setting} trials share each frozen LM{limit}", key)
    cap = auto_cap(search)
    if cap < 2:
        return PackPlan(1, "tune.pack auto: tune.max_concurrent_trials is 1, so no two trials could share a step", key)
    if probe is None:
        return PackPlan(
            cap,
            f"tune.pack auto: at the start, a probe times a packed step of {cap} of this search's "
            f"largest trial against {cap} separate steps on the trials' device (and measures their "
            "memory on a GPU): they pack where the packed step is faster, else every trial trains "
            "alone",
            key,
        )
    k, at_once, packs = probe["k"], probe.get("at_once", 1), probe.get("packs", 1)
    # K steps as unpacked trials would take them, `at_once` side by side, against `packs` packed steps side by side
    separate_s = probe["solo_s"] * packs / at_once
    speedup = separate_s / max(probe["packed_s"], 1e-12)
    against = f" against {packs} packs side by side" if packs > 1 else ""
    side = f", {at_once} at a time as unpacked trials run here{against}," if at_once > 1 else ""
    speed = (
        f"a packed step of {k} ran x{speedup:.2f} the speed of {k} separate steps{side} on this "
        f"{probe['device'].split(':')[0].upper()} ({probe['packed_s'] * 1000:.0f} against "
        f"{separate_s * 1000:.0f} ms, the start's probe)"
    )
    if k < 2 or speedup < MIN_PROBE_SPEEDUP:
        room = (
            "; the GPU holds one trial beside the LM"
            if k < 2
            else f"; auto packs from x{MIN_PROBE_SPEEDUP:g} (what happens outside packed steps costs the rest)"
        )
        return PackPlan(1, f"tune.pack auto: {speed}{room}; every trial trains alone", key)
    memory = (
        ""
        if "per_trial" not in probe
        else (
            f"; the largest trial needs {probe['per_trial'] / 2**20:.0f} MiB "
            f"beside the {probe['lm'] / 2**20:.0f} MiB LM, "
            f"{probe['free'] / 2**30:.1f} GiB free"
        )
    )
    return PackPlan(k, f"tune.pack auto: {k} trials share each frozen LM: {speed}{memory}", key)


def lanes_used(search: SearchFile, size: int, cpus: float) -> int:
    """How many packs of `size` run side by side on `cpus` CPU cores: one per trial's worth of them (see
    `embinject.tune.worker.pack_names.lanes`), no more than the trials running at once fill."""
    return min(lanes(cpus, search.tune.resources.cpus), -(-search.tune.max_concurrent_trials // size))


def prestart_hosts(plan: PackPlan, search: SearchFile, base: dict) -> PackPlan:
    """A packed search on CPUs starts its hosts on the driver's node before its first trial (one per lane it will
    fill there): their processes start and load the LM while Ray starts the trials' processes, rather than after the
    first of them asks for it. It also starts the search's `HostStarter`, which starts any other host a member asks
    for (a member's process imports no torch, see `embinject.tune.worker.member`): the plan comes back naming it.
    Nothing is started (the plan comes back as it was) where the host depends on a searched value (the model, its
    dtype or checkpointing), on GPUs (one host per GPU, known only once Ray gives a trial its GPU), or through Ray
    Client (the driver is not on a node)."""
    import ray  # lazy, as in the driver
    import ray.util.client

    searched = {p.key for p in search.params if p.kind != "fixed"}
    if (
        plan.size <= 1
        or search.tune.resources.gpus > 0
        or ray.util.client.ray.is_connected()
        or searched & {"model", "train.dtype", "train.gradient_checkpointing"}
    ):
        return plan
    here, cpus = ray.get_runtime_context().get_node_id(), node_cpus()
    cfg = trial_config(base, {"train.device": "cpu"})
    if cpus >= search.tune.resources.cpus:  # not on a head node that holds no trial
        for lane in range(lanes_used(search, plan.size, cpus)):
            attach(plan, cfg, max(1, round(search.tune.resources.cpus)), lane, here)
    _STARTERS[plan.key] = (
        ray.remote(HostStarter).options(name=starter_name(plan), namespace=NAMESPACE, num_cpus=0).remote()
    )
    return dataclasses.replace(plan, starter=starter_name(plan))


def stop_hosts(plan: PackPlan) -> None:
    """End this search's hosts (they would exit by themselves once idle) and its host starter."""
    import ray  # lazy, as everywhere in the search

    if plan.size <= 1 or not ray.is_initialized():
        return
    hosts = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") == NAMESPACE and entry["name"].startswith(host_prefix(plan)):
            try:
                hosts.append(ray.get_actor(entry["name"], namespace=NAMESPACE))
            except ValueError:
                pass  # already gone
    try:  # their scratch directories, on whichever node they run (a host that does not answer is swept later)
        ray.get([host.close.remote() for host in hosts], timeout=30)
    except (ray.exceptions.RayError, TimeoutError):
        pass
    for host in hosts:
        ray.kill(host)
    _STARTERS.pop(plan.key, None)
