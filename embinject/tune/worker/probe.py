"""`tune.pack: auto` measured rather than assumed: at a search's start, one process with the resources one trial gets
trains this search's largest trial (the searched values that need the most memory) on its device: on a GPU it
measures the frozen LM's memory and the trial's own, and on any device it times one packed step of K such trials
against K separate steps. The search packs where the packed step was faster than the separate steps as unpacked
trials would take them (`embinject.tune.driver.pack_plan.plan_pack`)."""

from __future__ import annotations

import statistics
import time

import torch

from ...methods import build_method
from ...space import SearchFile, trial_config
from ...train import autocast_dtype, prepare
from ...train.steps import SoloSteps
from ...train.packing import packed_nll

MEMORY_KEYS = ("adapter.prefix_len", "adapter.inject_tokens", "adapter.mlp_width", "train.batch_size", "data.seq_len")
PROBE_REPS = 3  # timed rounds (each: K separate steps, then one packed step), after one untimed round


def largest_trial(search: SearchFile) -> dict:
    """The searched values that need the most activation memory (what the probe trains)."""
    worst = {}
    for p in search.params:
        if p.key not in MEMORY_KEYS:
            continue
        if p.kind in ("fixed", "choice") and all(isinstance(v, (int, float)) for v in p.args):
            worst[p.key] = max(p.args)
        elif p.kind in ("uniform", "loguniform", "randint", "qrandint"):
            worst[p.key] = p.args[1]
    return worst


def probe_pack(base: dict, worst: dict, device: str, cap: int, threads: int) -> dict:
    """The largest trial on `device` (with `threads` CPU threads): on a GPU, the LM's and one trial's memory
    (`free`, `lm`, `per_trial` bytes); then K (`cap`, fewer where a GPU holds fewer) such trials' step times alone
    and packed (`k`, `solo_s`, `packed_s`: medians of PROBE_REPS rounds, seconds for all K) and `speedup`."""
    torch.set_num_threads(max(1, threads))
    cuda = device.startswith("cuda")
    free = torch.cuda.mem_get_info()[0] if cuda else 0
    cfg = trial_config(base, {**worst, "train.device": device})
    prep = prepare(cfg)
    amp = autocast_dtype(cfg, device)
    lm_bytes = torch.cuda.memory_allocated() if cuda else 0
    rows = cfg.train.batch_size
    members = []

    def add_member(i: int) -> None:
        torch.manual_seed(cfg.train.seed + i)
        method = build_method(cfg, prep.lm.model, prep.encoder_dim, prep.lm.tokenizer)
        method.train()
        take = torch.arange(i * rows, (i + 1) * rows) % len(prep.train["input_ids"])  # a small data set wraps around
        batch = {k: v[take].to(device) for k, v in prep.train.items()}
        members.append((method, torch.optim.AdamW(method.trainable_parameters(), lr=cfg.train.lr), batch))

    add_member(0)
    out = {"device": device}
    steps = SoloSteps()
    with steps.training(prep.lm.model, cfg.train.gradient_checkpointing):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            method, opt, batch = members[0]
            steps.step(method, opt, batch, amp, device)
            opt.step()  # its moments are the trial's memory too
            per_trial = torch.cuda.max_memory_allocated() - lm_bytes
            out.update(free=free, lm=lm_bytes, per_trial=per_trial)
            cap = min(cap, max(1, int(0.8 * (free - lm_bytes) // max(per_trial, 1))))
        for i in range(1, max(cap, 1)):
            add_member(i)
        out.update(k=len(members), **_timed(members, steps, amp, device))
    for method, _, _ in members:
        method.release()
    return out


def _timed(members: list, steps: SoloSteps, amp, device: str) -> dict:
    """Medians of the members' separate steps and of their packed step (gradients set, no optimizer step: the same
    for both), interleaved round by round so that a machine's changing load falls on both alike."""
    kind = device.split(":")[0]

    def sync() -> None:
        if kind == "cuda":
            torch.cuda.synchronize()

    def solo() -> None:
        for method, opt, batch in members:
            steps.step(method, opt, batch, amp, device)

    def packed() -> None:
        for _, opt, _ in members:
            opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=kind, dtype=amp, enabled=amp is not None):
            results = packed_nll([(method, batch) for method, _, batch in members])
        torch.stack([nll / max(n, 1) for nll, n in results]).sum().backward()

    times: dict[str, list[float]] = {"solo_s": [], "packed_s": []}
    for round_ in range(PROBE_REPS + 1):
        for name, run in (("solo_s", solo), ("packed_s", packed)):
            sync()
            t0 = time.perf_counter()
            run()
            sync()
            if round_:  # the first round warms both up
                times[name].append(time.perf_counter() - t0)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {**medians, "speedup": medians["solo_s"] / max(medians["packed_s"], 1e-12)}
