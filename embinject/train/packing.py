"""Packed steps: several trials' adapters trained in one forward/backward of the shared frozen LM.

Each trial's rows sit behind its own prefix, every row attending to exactly the keys it would see alone
(`embinject.train.packed_forward`). The loss is the sum of the trials' own mean losses: rows are independent through the
frozen LM, so each adapter receives the gradient of its own loss, as if it had trained alone (within float rounding).

`StepPack` is the rendezvous: each trial's training loop runs in its own thread and calls `step()`; whichever
thread finds every present member waiting runs the packed step for all of them. A member that evaluates or
reports is `away()` and is not waited for, except by a member just back from being away itself: members that
evaluate at the same steps come back one by one, and the first back would otherwise step alone and drag the pack
out of step for good (each then evaluates while the others train). A member whose step has ended counts as between
steps, not as waiting, until it submits again. One that `leave()`s is dropped at once. The packed forward and backward
run on one thread of the pack's own, whichever member leads: on a CPU, glibc gives each thread its own heap and keeps
what a thread freed for that thread, so steps computed by each member's thread in turn left every member's heap
holding a whole packed step's activations.

Members score the same validation windows at the same steps, so `evaluate()` is a rendezvous too: the members
evaluating at once are scored in packed forward passes without gradient (on the same compute thread), each member's
windows exactly as it would score them alone.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from ..config import Config
from ..methods import AdapterMethod
from ..specs import method_spec
from .packed_forward import packed_nll


def unpackable_reason(cfg: Config) -> str | None:
    """Why a trial with this config trains alone rather than in a pack (its method's spec says; None: it packs)."""
    reason = method_spec(cfg.method).unpacked(cfg)
    if reason:
        return reason
    if cfg.train.distill:
        return "a packed step scores the NLL alone (train.distill adds the teacher's term per trial)"
    return None


class Left(Exception):
    """This member was taken out of its pack (its trial was stopped or lost) while it trained."""


class _Waiting:
    def __init__(self, method: AdapterMethod, batch: dict, returning: bool):
        self.method, self.batch = method, batch
        self.since = time.monotonic()  # when it submitted its batch
        self.began: float | None = None  # when its packed step began (since..began: waiting for the other members)
        self.returning = returning  # its first step after being away: it waits for the members still away
        self.loss: float | None = None
        self.error: BaseException | None = None


class _Evaluation:
    def __init__(self, method: AdapterMethod, inputs: dict[str, torch.Tensor], batch_size: int):
        self.method, self.inputs, self.batch_size = method, inputs, batch_size
        self.windows = next(iter(inputs.values())).shape[0]
        self.since = time.monotonic()
        self.began: float | None = None
        self.result: tuple[torch.Tensor, torch.Tensor] | None = None
        self.error: BaseException | None = None


def _taken(pending: dict) -> dict:
    """The requests waiting for a pass (a packed step's batches, or evaluations), taken for it and marked with when
    it began: their wait for the other members ends there."""
    group = dict(pending)
    pending.clear()
    began = time.monotonic()
    for request in group.values():
        request.began = began
    return group


class StepPack:
    """The rendezvous of the members of one pack (one frozen LM): see the module docstring."""

    def __init__(self, device: str, autocast_dtype: torch.dtype | None, patience_s: float = 1.0):
        self.device, self.amp = device, autocast_dtype
        self.patience_s = patience_s  # how long waiting members wait for a member that has not come back
        self.cond = threading.Condition()
        # member -> "present" (between steps), "back" (between steps, just back from away()), "waiting" or "away"
        self.state: dict[str, str] = {}
        self.waiting: dict[str, _Waiting] = {}
        self.stepping = False
        self.steps = 0
        self.rows_packed = 0  # members summed over steps: rows_packed / steps is the mean pack size
        self.step_ended = time.monotonic()  # waiting during a step is not waiting for the members in that step
        self.last_size = 0
        self.rendezvous: dict[str, float] = {}  # member -> seconds its batches waited for their packed step to begin
        self.evaluations: dict[str, _Evaluation] = {}  # member -> its evaluation waiting for the others'
        self.evaluating = False
        self.eval_passes = 0  # packed evaluations run ...
        self.evals_packed = 0  # ... and members summed over them: evals_packed / eval_passes is the mean
        self.eval_rendezvous: dict[str, float] = {}  # member -> seconds its evaluations waited for their pass to begin
        self.eval_sizes: dict[str, int] = {}  # member -> members in its last evaluation's packed passes
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="packed-step")  # see the module docstring

    def join(self, member: str) -> None:
        with self.cond:
            # preparing; waited for from its first step on, and that step (from "away") waits for those still preparing
            self.state[member] = "away"
            self.cond.notify_all()

    def leave(self, member: str) -> None:
        with self.cond:
            self.state.pop(member, None)
            self.rendezvous.pop(member, None)
            self.eval_rendezvous.pop(member, None)
            self.eval_sizes.pop(member, None)
            entry = self.waiting.pop(member, None)
            if entry is not None and entry.loss is None and entry.error is None:
                entry.error = Left(member)
            request = self.evaluations.pop(member, None)
            if request is not None and request.result is None and request.error is None:
                request.error = Left(member)
            self.cond.notify_all()

    def members(self) -> int:
        with self.cond:
            return len(self.state)

    @contextlib.contextmanager
    def away(self, member: str, evaluating: bool = False):
        """Around what a member does outside training (evaluating, reporting): the others' steps do not wait for it.
        `evaluating`: it evaluates first thing, so the members evaluating now wait for its request (see `evaluate`)."""
        with self.cond:
            if member not in self.state:
                raise Left(member)
            self.state[member] = "evaluating" if evaluating else "away"
            self.cond.notify_all()
        try:
            yield
        finally:
            with self.cond:
                if member in self.state:
                    self.state[member] = "back"

    def step(self, member: str, method: AdapterMethod, batch: dict) -> float:
        """Submit this member's batch; returns its loss once a packed step has set its gradients."""
        with self.cond:
            if member not in self.state:
                raise Left(member)
            entry = _Waiting(method, batch, returning=self.state[member] != "present")
            self.waiting[member] = entry
            self.state[member] = "waiting"
            self.cond.notify_all()
            while entry.loss is None and entry.error is None:
                if not self.stepping and self._ready():
                    self._lead()
                    continue
                self.cond.wait(timeout=0.05)
            if member in self.state:
                self.state[member] = "present"
            if entry.began is not None:  # the packed step's own compute is not waiting
                self.rendezvous[member] = self.rendezvous.get(member, 0.0) + entry.began - entry.since
        if entry.error is not None:
            raise entry.error
        return entry.loss

    def rendezvous_seconds(self, member: str) -> tuple[float, float]:
        """Seconds this member has waited so far between submitting and the start of the packed pass it is in: its
        batches for their packed steps, and its evaluations for their packed evaluations."""
        with self.cond:
            return self.rendezvous.get(member, 0.0), self.eval_rendezvous.get(member, 0.0)

    def evaluate(
        self, member: str, method: AdapterMethod, inputs: dict[str, torch.Tensor], batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each window's summed NLL and scored tokens (float64, int64 on the CPU), as `window_nll` gives them alone,
        from packed forward passes (no gradient) together with the members that evaluate at the same time: those
        that asked, those that said they will (`away(evaluating=True)`) and those between two steps, who may be
        about to; not the members stepping, reporting or preparing, whom nobody waits for."""
        with self.cond:
            if member not in self.state:
                raise Left(member)
            request = _Evaluation(method, inputs, batch_size)
            self.evaluations[member] = request
            self.state[member] = "evaluating"
            self.cond.notify_all()
            while request.result is None and request.error is None:
                if not self.evaluating and self._evaluation_ready():
                    self._lead_evaluation()
                    continue
                self.cond.wait(timeout=0.05)
            if request.began is not None:
                self.eval_rendezvous[member] = self.eval_rendezvous.get(member, 0.0) + request.began - request.since
        if request.error is not None:
            raise request.error
        return request.result

    def _evaluation_ready(self) -> bool:
        """Whether the evaluations asked for run now: no member is between two steps or about to ask, or the longest
        waiting has waited patience_s."""
        if not self.evaluations:
            return False
        if time.monotonic() - min(r.since for r in self.evaluations.values()) > self.patience_s:
            return True
        return not any(
            s == "present" or (s == "evaluating" and m not in self.evaluations) for m, s in self.state.items()
        )

    def _lead_evaluation(self) -> None:
        """Run the evaluations asked for in packed passes (called with the lock held; released while computing)."""
        group = _taken(self.evaluations)
        self.evaluating = True
        self.cond.release()
        results, error = None, None
        try:
            results = self._evaluate_group(list(group.values()))
        except BaseException as exc:  # an out-of-memory pass fails every member of it, each as its own trial
            error = exc
        finally:
            self.cond.acquire()
            for (member, r), result in zip(group.items(), results or [None] * len(group)):
                if r.error is None:  # not taken out of the pack meanwhile
                    r.result, r.error = result, error
                if self.state.get(member) == "evaluating":  # reporting next, unless it asks again
                    self.state[member] = "away"
                if member in self.state:
                    self.eval_sizes[member] = len(group)
            self.evaluating = False
            self.eval_passes += 1
            self.evals_packed += len(group)
            self.cond.notify_all()

    def _evaluate_group(self, requests: list[_Evaluation]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The requests' windows in chunks of each one's batch size, one packed forward per chunk; each chunk its own
        task on the compute thread, so that a step submitted meanwhile runs between two chunks, not after them all."""
        modes = [r.method.training for r in requests]
        for r in requests:  # their members wait in `evaluate`: nothing else uses these methods now
            r.method.eval()
        parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in requests]
        try:
            chunk = 0
            while True:
                now = [i for i, r in enumerate(requests) if chunk * r.batch_size < r.windows]
                if not now:
                    break
                members = []
                for i in now:
                    r = requests[i]
                    members.append(
                        (
                            r.method,
                            {k: v[chunk * r.batch_size : (chunk + 1) * r.batch_size] for k, v in r.inputs.items()},
                        )
                    )
                for i, out in zip(now, self.compute.submit(self._forward, members).result()):
                    parts[i].append(out)
                chunk += 1
        finally:
            for r, mode in zip(requests, modes):
                r.method.train(mode)
        return [(torch.cat([p[0] for p in ps]), torch.cat([p[1] for p in ps])) for ps in parts]

    def _forward(self, members: list[tuple[AdapterMethod, dict]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One packed forward's per-window NLL and counts, without gradient (on the pack's compute thread)."""
        kind = self.device.split(":")[0]
        with torch.no_grad(), torch.autocast(device_type=kind, dtype=self.amp, enabled=self.amp is not None):
            moved = [(m, {k: v.to(self.device) for k, v in batch.items()}) for m, batch in members]
            return [(nll.double().cpu(), n.cpu()) for nll, n in packed_nll(moved, per_window=True)]

    def _ready(self) -> bool:
        """Whether the waiting members step now: every member waits, or the longest waiting has waited patience_s,
        or only away members are missing and none of the waiting is just back from being away itself."""
        if not self.waiting:
            return False
        missing = [s for s in self.state.values() if s != "waiting"]
        waited = time.monotonic() - max(self.step_ended, min(e.since for e in self.waiting.values()))
        if not missing or waited > self.patience_s:
            return True
        if "present" in missing or "back" in missing:
            return False  # between two of its steps: about to submit
        return not any(e.returning for e in self.waiting.values())

    def _lead(self) -> None:
        """Run one packed step for every waiting member (called with the lock held; released while computing)."""
        group = _taken(self.waiting)
        self.stepping = True
        self.cond.release()
        try:
            try:
                items = list(group.values())
                values = self.compute.submit(self._forward_backward, items).result()
                for e, v in zip(items, values):
                    e.loss = v
            except BaseException as exc:  # an out-of-memory step fails every member of it, each as its own trial
                for e in group.values():
                    e.error = exc
        finally:
            self.cond.acquire()
            for member in group:  # between steps from now, not still waiting: its thread may take a while to wake
                if self.state.get(member) == "waiting":
                    self.state[member] = "present"
            self.stepping = False
            self.step_ended = time.monotonic()
            self.steps += 1
            self.rows_packed += len(group)
            self.last_size = len(group)
            self.cond.notify_all()

    def _forward_backward(self, items: list[_Waiting]) -> list[float]:
        """One packed step's losses, its gradients set (on the pack's compute thread: autocast is per thread)."""
        with torch.autocast(device_type=self.device.split(":")[0], dtype=self.amp, enabled=self.amp is not None):
            results = packed_nll([(e.method, e.batch) for e in items])
        losses = [nll / max(n, 1) for nll, n in results]
        torch.stack(losses).sum().backward()
        return [float(v) for v in torch.stack(losses).detach().cpu()]


class PackedSteps:
    """A training loop's steps as one member of a `StepPack` (see `embinject.train.steps.SoloSteps`)."""

    def __init__(self, pack: StepPack, member: str, build_lock: threading.Lock):
        self.pack, self.member, self.build_lock = pack, member, build_lock
        self.turn_seconds = 0.0  # waiting for the other members' preparation to end (see `building`)

    @contextlib.contextmanager
    def building(self):
        """Model and data preparation, method construction: one member at a time (they seed global RNGs)."""
        asked = time.perf_counter()
        with self.build_lock:
            self.turn_seconds += time.perf_counter() - asked
            yield

    def waited(self) -> tuple[float, float, float]:
        return (self.turn_seconds, *self.pack.rendezvous_seconds(self.member))

    def training(self, model, checkpointing: bool):
        return contextlib.nullcontext()  # the pack's host set the LM's mode once for all its members

    def away(self, evaluating: bool = False):
        return self.pack.away(self.member, evaluating)

    def evaluate(
        self, method: AdapterMethod, inputs: dict, batch_size: int, device: str, amp
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pack.evaluate(self.member, method, inputs, batch_size)  # on the pack's device, in its autocast

    def step(self, method: AdapterMethod, opt: torch.optim.Optimizer, batch: dict, amp, device: str) -> float:
        opt.zero_grad(set_to_none=True)
        return self.pack.step(self.member, method, batch)

    def pack_size(self) -> int:
        return self.pack.last_size

    def eval_pack_size(self) -> int:
        with self.pack.cond:
            return self.pack.eval_sizes.get(self.member, 1)
