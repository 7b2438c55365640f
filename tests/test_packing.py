"""Packed trials: a packed step gives every member the gradient it would get alone, whatever the mix of methods and
prefix lengths; members trained in a pack follow their solo curves; and in a real Ray search a packed trial is still a
Ray Tune trial (same curves as the unpacked search, ASHA stops one member while the others go on)."""

import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from embinject.config import config_from_dict
from embinject.config_files import load_config
from embinject.methods import build_method
from embinject.models import load_frozen_lm
from embinject.space import load_search_file, trial_config
from embinject.train import train
from embinject.train import packing, shared
from embinject.train.evaluation import window_nll
from embinject.train.packing import PackedSteps, StepPack, packed_nll, unpackable_reason
from embinject.tune.driver.pack_plan import auto_cap, plan_pack
from embinject.tune.worker.probe import largest_trial, probe_pack

from .conftest import ROOT
from .test_tune import _results, _without_redelivery, check_time_split, run_tune, write_search

real_packed_nll = packed_nll

MIXED = [
    ["method=prompt", "adapter.prefix_len=3"],
    ["method=prefix", "adapter.prefix_len=5"],
    ["method=injection", "adapter.prefix_len=2", "adapter.inject_tokens=2", "adapter.mlp_width=16"],
    ["method=prefix", "adapter.prefix_len=2", "adapter.mlp_width=8"],
    ["method=prompt", "adapter.prefix_len=7"],
    [
        "method=injection",
        "adapter.prefix_len=1",
        "adapter.inject_tokens=3",
        "adapter.mlp_width=16",
        "adapter.inject_into=kv",
    ],
    [
        "method=injection",
        "adapter.prefix_len=0",
        "adapter.inject_tokens=2",
        "adapter.mlp_width=16",
        "adapter.embedding_model=lm-hidden:1",
        "adapter.pooling=chunks",
        "adapter.encoder_rank=2",
    ],
]


def mixed_members(tiny_model: str, lm, rows=lambda i: 3, seq_len=lambda i: 16) -> list[tuple]:
    """The MIXED adapters on `lm`, each with a batch of its own (rows(i) windows of seq_len(i) tokens)."""
    members = []
    for i, spec in enumerate(MIXED):
        cfg = load_config(None, [f"model={tiny_model}", f"train.seed={i}"] + spec)
        trained_encoder = cfg.adapter.encoder_rank > 0  # reads the text's ids through the LM itself, with LoRA
        method = build_method(cfg, lm.model, lm.model.config.hidden_size if trained_encoder else 12, lm.tokenizer)
        ids = torch.randint(0, 500, (rows(i), seq_len(i)), generator=torch.Generator().manual_seed(i))
        labels = ids.clone()
        labels[:, :4] = -100
        batch = {"input_ids": ids, "labels": labels, "sentence_embedding": torch.randn(rows(i), 12)}
        if trained_encoder:
            with torch.no_grad():  # B away from zero, so that A has a gradient too
                for up in method.text_encoder.up.values():
                    up.normal_(0, 0.1)
            batch = {"input_ids": ids, "labels": labels, "encoder_ids": torch.randint(0, 500, (rows(i), 10))}
        members.append((method, batch))
    return members


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_step_gives_every_member_its_solo_gradient(tiny_model, attention):
    lm = load_frozen_lm(tiny_model)  # its own copy: the attention is switched on it
    lm.model.config._attn_implementation = attention
    members = mixed_members(tiny_model, lm)
    packed = packed_nll(members)
    sum(nll / n for nll, n in packed).backward()
    for (method, batch), (nll, n) in zip(members, packed):
        grads = [p.grad.clone() for p in method.trainable_parameters()]
        method.zero_grad(set_to_none=True)
        solo_nll, solo_n = method.nll(batch)
        (solo_nll / solo_n).backward()
        assert n == solo_n and abs(nll.item() - solo_nll.item()) < 1e-4 * solo_nll.item()
        for p, g in zip(method.trainable_parameters(), grads):
            assert float((p.grad - g).abs().max()) <= 1e-5 * float(p.grad.abs().max()), method.name


def test_a_packed_evaluation_scores_every_window_as_alone(tiny_model):
    """Members evaluating at once are scored in packed forward passes (chunks of each one's batch size, however many
    windows and tokens each has), every window's NLL and count what `window_nll` gives alone."""
    lm = load_frozen_lm(tiny_model)
    members = mixed_members(tiny_model, lm, rows=lambda i: 5 + 2 * i, seq_len=lambda i: 16 - 2 * (i % 3))
    sizes = [3, 4, 32, 5, 2, 7, 6]  # eval batch sizes: from one packed pass to seven per member
    pack = StepPack("cpu", None, patience_s=300.0)
    alone, packed = [window_nll(m, batch, bs) for (m, batch), bs in zip(members, sizes)], {}
    with contextlib.ExitStack() as stack:
        for i in range(len(members)):
            pack.join(str(i))
            stack.enter_context(pack.away(str(i), evaluating=True))  # all will ask: the first asking waits for the rest

        def member(i: int) -> None:
            packed[i] = pack.evaluate(str(i), members[i][0], members[i][1], sizes[i])

        threads = [threading.Thread(target=member, args=(i,)) for i in range(len(members))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert (pack.eval_passes, pack.evals_packed) == (1, len(members))
    for i, ((nll, count), (solo_nll, solo_count)) in enumerate(zip([packed[i] for i in range(len(members))], alone)):
        assert torch.equal(count, solo_count) and nll.shape == solo_nll.shape == (5 + 2 * i,)
        assert float(((nll - solo_nll).abs() / solo_nll).max()) < 1e-6, (MIXED[i], nll, solo_nll)
    for method, _ in members:
        assert method.training  # its mode restored


def test_a_pack_computes_the_frozen_baseline_once(tiny_model, tmp_path, monkeypatch):
    """Members preparing at once ask for the same baseline: one computes it, the others wait for it; nor is it computed
    again where its disk cache entry went missing."""
    monkeypatch.setenv("EMBINJECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shared, "_BASELINES", {})  # none from this process's other tests
    computed, again, release = [], threading.Event(), threading.Event()

    def slow_perplexity(*args, **kwargs):
        computed.append(1)
        if len(computed) > 1:
            again.set()
        release.wait(timeout=60)  # the other members ask meanwhile
        return real_perplexity(*args, **kwargs)

    real_perplexity = shared.perplexity
    monkeypatch.setattr(shared, "perplexity", slow_perplexity)
    cfg = load_config(
        None,
        [
            f"model={tiny_model}",
            "data.seq_len=32",
            "data.train_samples=16",
            "data.val_samples=8",
            "method=prompt",
            "train.dtype=float32",
        ],
    )
    prep = shared.prepare(cfg)
    found = []
    asking = threading.Barrier(5)

    def member() -> None:
        asking.wait(timeout=60)
        found.append(shared.baseline_perplexity(prep, cfg))

    threads = [threading.Thread(target=member) for _ in range(4)]
    for t in threads:
        t.start()
    asking.wait(timeout=60)
    # where each member computed its own, a second computation starts at once (bounded: the test never waits on it)
    again.wait(timeout=1.0)
    release.set()
    for t in threads:
        t.join(timeout=120)
    for entry in (tmp_path / "cache" / "baseline").iterdir():
        entry.unlink()
    assert shared.baseline_perplexity(prep, cfg) == found[0]
    assert len(computed) == 1 and len(found) == 4 and len(set(found)) == 1
    assert len(list((tmp_path / "cache" / "baseline").iterdir())) == 1  # written again


def test_members_of_a_pack_train_exactly_as_they_would_alone(tiny_model, monkeypatch):
    base = [
        f"model={tiny_model}",
        "data.seq_len=32",
        "data.train_samples=96",
        "data.val_samples=24",
        "train.batch_size=8",
        "train.max_steps=9",
        "train.eval_every=3",
        "train.patience=0",
        "train.progress=false",
        "train.dtype=float32",
        "adapter.embedding_model=fourier",
        "adapter.fourier_features=16",
        "adapter.context_tokens=8",
        "adapter.mlp_width=16",
    ]
    specs = [
        ["method=prompt", "adapter.prefix_len=1", "train.lr=0.003"],
        ["method=prefix", "adapter.prefix_len=3", "train.lr=0.01"],
        ["method=injection", "adapter.prefix_len=2", "train.lr=0.005"],
        ["method=prompt", "adapter.prefix_len=4", "train.lr=0.02", "train.max_steps=3"],
    ]  # leaves the pack early
    curve = lambda result: [h["val_perplexity"] for h in result["history"]]  # noqa: E731
    alone = [curve(train(load_config(None, base + s))[0]) for s in specs]
    # patience long enough that no member steps without the others: they evaluate at the same steps and come back
    # one by one, and each first back waits for the rest, so the pack stays in step
    pack, lock, packed = StepPack("cpu", None, patience_s=300.0), threading.Lock(), {}
    # every packed step runs on the pack's one compute thread, whichever member leads it: on a CPU each thread's heap
    # would otherwise keep a whole packed step's activations (measured: 6.5 GB against 4.5 GB, K = 4)
    stepped_on, member_threads = set(), set()
    monkeypatch.setattr(
        packing,
        "packed_nll",
        lambda members, **kw: stepped_on.add(threading.get_ident()) or real_packed_nll(members, **kw),
    )

    def member(i: int) -> None:
        member_threads.add(threading.get_ident())
        try:
            packed[i] = curve(train(load_config(None, base + specs[i]), steps=PackedSteps(pack, str(i), lock))[0])
        finally:
            pack.leave(str(i))

    for i in range(len(specs)):
        pack.join(str(i))
    threads = [threading.Thread(target=member, args=(i,)) for i in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert (pack.steps, pack.rows_packed) == (9, 3 * 9 + 3)  # every step packed every member still training
    # and every evaluation: the four members' at step 3, the three left's at steps 6 and 9 (evaluations too run on the
    # pack's compute thread)
    assert (pack.eval_passes, pack.evals_packed) == (3, 4 + 3 + 3)
    assert len(stepped_on) == 1 and not stepped_on & member_threads
    for i in range(len(specs)):
        assert len(packed[i]) == len(alone[i])
        assert max(abs(a - b) / b for a, b in zip(alone[i], packed[i])) < 1e-5, (specs[i], alone[i], packed[i])


def test_a_packed_search_keeps_the_unpacked_curves_and_asha_stops_one_member(tmp_path, tiny_model, monkeypatch):
    """Each packed trial's curve is the one its configuration has trained alone (embinject.train in this process, as
    an unpacked trial runs it), its evaluations scored in packed passes, while ASHA stops one member, the others go on
    in the pack, and a fifth trial takes the stopped one's place mid-pack. One CPU a trial on two cores: two packs
    of two side by side, one per core."""
    points = [
        {"method": "prompt", "train.lr": 0.003, "adapter.prefix_len": 1},
        {"method": "prefix", "train.lr": 0.01, "adapter.prefix_len": 3},
        {"method": "injection", "train.lr": 0.005, "adapter.prefix_len": 2, "adapter.mlp_width": 16},
        {"method": "prompt", "train.lr": 1.0e-6, "adapter.prefix_len": 2},
    ]  # learns nothing
    space = {
        "method": {"choice": ["prompt", "prefix", "injection"]},
        "train.lr": {"loguniform": [1.0e-6, 5.0e-2]},
        "adapter.prefix_len": {"randint": [1, 4]},
        "adapter.mlp_width": {"choice": [16, 32], "when": {"method": "injection"}},
    }
    storage = tmp_path / "runs"
    path = write_search(
        tmp_path / "packed.yaml",
        tiny_model,
        "builtin:python-docs",
        storage,
        **{
            "search": space,
            "train.max_steps": 24,
            "train.eval_every": 1,
            "train.dtype": "float32",
            "tune.num_samples": 5,
            "tune.max_concurrent_trials": 4,
            "tune.points_to_evaluate": points,
            "tune.pack": 2,
            # ASHA's decision at a rung depends on the order its members' results arrive, and members that step together
            # arrive in any order (the first at a rung is never stopped): rungs at 1, 4 and 16 steps keeping the best
            # quarter stop someone unless every rung's results arrive in order of improving perplexity
            "tune.scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 4},
            "tune.resources": {"cpus": 1, "gpus": 0},
            "mlflow.register_as": None,
        },
    )  # two packs of two members
    # the search's own temporary directory (short: Ray puts its sockets there too), to see what it leaves
    scratch = Path(tempfile.mkdtemp(prefix="ei", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(scratch))
    try:
        proc = run_tune(str(path))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        # stopped trials and the pack's host (killed by Ray, their own clean-up not run) leave no scratch directory
        assert sorted(p.name for p in scratch.glob("embinject-*")) == []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert "packing: tune.pack: 2 trials share each frozen LM" in proc.stdout
    packed = {}
    for trial in storage.glob("t-*/trial_*"):
        r = _without_redelivery(_results(trial))
        packed[(r[0]["config"]["method"], r[0]["config"]["train.lr"])] = r
    assert len(packed) == 5
    search = load_search_file(str(path))
    threads = torch.get_num_threads()
    for rows in packed.values():
        point = {k: v for k, v in rows[0]["config"].items() if k in space}
        cfg = trial_config(search.base, point)
        cfg.train.threads, cfg.train.progress = 1, False  # as an unpacked trial of one CPU
        try:
            result, method = train(cfg)
        finally:
            torch.set_num_threads(threads)  # this process's other tests keep theirs
        method.release()
        solo = {h["step"]: h["val_perplexity"] for h in result["history"]}
        for r in rows:
            assert abs(r["val_perplexity"] - solo[r["step"]]) < 1e-4 * solo[r["step"]], (point, r["step"])
    # the fifth trial took the place of one that ASHA had stopped, in a host that held the LM for earlier trials
    # (whether its first step found its partner stepping or evaluating is the machine's timing: a member away is not
    # waited for)
    late = max(packed.values(), key=lambda rows: rows[0]["trainable_started_at"])
    earlier = {r["pack_pid"] for rows in packed.values() if rows is not late for r in rows}
    assert late[0]["pack_pid"] in earlier
    # two hosts, one per core, each held the LM for two members at a time
    assert len({r["pack_pid"] for rows in packed.values() for r in rows}) == 2
    assert max(r["pack_size"] for rows in packed.values() for r in rows) == 2
    # members evaluating at the same step (here every step) were scored in one packed pass, at their solo perplexities
    assert max(r["eval_pack_size"] for rows in packed.values() for r in rows) > 1
    stopped = {k: rows[-1]["step"] for k, rows in packed.items() if rows[-1]["step"] < 24}
    finished = {k for k, rows in packed.items() if rows[-1]["step"] == 24}
    assert stopped and finished, {k: rows[-1]["step"] for k, rows in packed.items()}  # which one: the order of arrival
    # the others went on training in the pack after ASHA took a member out of it: checkable where at least two
    # trials ran two evaluations past the first stop (ASHA may stop all but one at one rung: the order of arrival)
    first_stop = min(stopped.values())
    went_on = [k for k, rows in packed.items() if rows[-1]["step"] >= first_stop + 6]
    sizes = {k: [(r["step"], r["pack_size"]) for r in rows] for k, rows in packed.items()}
    if len(went_on) > 1:
        assert any(r["step"] > first_stop and r["pack_size"] > 1 for k in went_on for r in packed[k]), sizes
    # where the members' time went, their waits at the rendezvous apart from their packed steps' compute
    exp_dir = next(storage.glob("t-*"))
    report = subprocess.run(
        [sys.executable, "-m", "embinject", "report", str(exp_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    check_time_split(exp_dir, report.stdout, packed=True)


def test_auto_packs_where_the_probe_found_a_packed_step_faster(tmp_path, tiny_model):
    """`tune.pack: auto` resolves from the start's probe: a packed step of this search's largest trial against as many
    separate steps, timed on the trials' device; packs where the packed step was faster, every trial alone where not."""
    path = write_search(
        tmp_path / "s.yaml",
        tiny_model,
        "builtin:python-docs",
        tmp_path / "runs",
        **{"tune.pack": "auto", "tune.max_concurrent_trials": 3},
    )
    search = load_search_file(str(path))
    threads = torch.get_num_threads()
    try:
        worst = {**largest_trial(search), "method": "injection"}
        probe = probe_pack(dict(search.base), worst, "cpu", auto_cap(search), 1)
    finally:
        torch.set_num_threads(threads)  # this process's other tests keep theirs
    assert (probe["k"], probe["device"]) == (3, "cpu") and probe["solo_s"] > 0 and probe["packed_s"] > 0
    assert probe["speedup"] == pytest.approx(probe["solo_s"] / probe["packed_s"])
    slower = plan_pack(search, {**probe, "solo_s": 0.08, "packed_s": 0.1, "speedup": 0.8})
    assert slower.size == 1 and slower.why == (
        "tune.pack auto: a packed step of 3 ran x0.80 the speed of 3 separate "
        "steps on this CPU (100 against 80 ms, the start's probe); auto packs "
        "from x1.5 (what happens outside packed steps costs the rest); every "
        "trial trains alone"
    )
    barely = plan_pack(search, {**probe, "solo_s": 0.12, "packed_s": 0.1, "speedup": 1.2})
    assert barely.size == 1  # faster steps, but not by enough to pay for what a packed search does besides them
    faster = plan_pack(search, {**probe, "solo_s": 0.3, "packed_s": 0.1, "speedup": 3.0})
    assert faster.size == 3
    assert faster.why.startswith(
        "tune.pack auto: 3 trials share each frozen LM: a packed step of 3 ran x3.00 the speed"
    )
    # unpacked, 3 trials would run side by side on 3 cores: the same steps are then no faster packed
    side_by_side = plan_pack(search, {**probe, "solo_s": 0.3, "packed_s": 0.1, "speedup": 3.0, "at_once": 3})
    assert (
        side_by_side.size == 1
        and "ran x1.00 the speed of 3 separate steps, 3 at a time as unpacked trials run "
        "here, on this CPU (100 against 100 ms"
        in side_by_side.why
    )
    # ... unless as many packs run side by side (one per trial's worth of cores, each on its own): x3 again
    lanes = plan_pack(search, {**probe, "solo_s": 0.3, "packed_s": 0.1, "speedup": 3.0, "at_once": 3, "packs": 3})
    assert (
        lanes.size == 3
        and "3 at a time as unpacked trials run here against 3 packs side by side, on this CPU (100 against 300 ms"
        in lanes.why
    )


@pytest.mark.parametrize(
    "raw, reason",
    [
        ({"method": "lora"}, "LoRA changes the frozen LM's own layers"),
        ({"adapter": {"inject_into": "kv"}}, None),
        (
            {"method": "prompt", "adapter": {"embed_source": "previous"}, "train": {"distill": 1.0}},
            "a packed step scores the NLL alone",
        ),
        ({"method": "injection"}, None),
    ],
)
def test_trials_that_cannot_share_a_step_train_alone_and_say_why(raw, reason):
    found = unpackable_reason(config_from_dict(raw))
    assert found == reason if reason is None else found.startswith(reason)
