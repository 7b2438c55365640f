"""Each experiment's command in a tiny configuration, so they keep working."""

import pytest

from embinject.tune.driver.cluster import LOCAL_RAY_SYSTEM_CONFIG
from experiments.adapter_injection import run as adapter_injection
from experiments.embedding_injection import run as embedding_injection
from experiments.fourier_embeddings import run as fourier_embeddings
from experiments.injection_context import analysis, arms, describe, intervals, rates, records, run, scaling, tables
from experiments.injection_context.analysis import headline
from experiments.prompt_priors import run as prompt_priors
from experiments.prompt_priors.run import normalise, token_f1
from experiments.sentiment_prefix import run as sentiment_prefix
from experiments.stats import PerWindow, bootstrap, claim, excludes_zero, holm, seed_interval


def test_embedding_injection_experiment_tiny(tmp_path, tiny_model, shared_data):
    out = tmp_path / "exp"
    code = embedding_injection.main(
        [
            "--data",
            str(shared_data / "wikitext2_valid_detok"),
            "--out",
            str(out),
            "--sources",
            "context",
            "previous",
            "--set",
            f"model={tiny_model}",
            "--set",
            "data.seq_len=32",
            "--set",
            "data.train_samples=32",
            "--set",
            "data.val_samples=16",
            "--set",
            "train.max_steps=2",
            "--set",
            "train.eval_every=1",
            "--set",
            "adapter.context_tokens=8",
            "--set",
            "adapter.mlp_width=16",
        ]
    )
    assert code == 0
    text = (out / "RESULTS.md").read_text()
    assert "## embed_source: context" in text and "## embed_source: previous" in text
    assert text.count("| Control: injection, shuffled embeddings |") == 2
    assert "How much of the gain survives without the leak" in text


def test_adapter_injection_experiment_tiny(tmp_path, tiny_model, shared_data):
    import json

    out = tmp_path / "lora"
    code = adapter_injection.main(
        [
            "--data",
            str(shared_data / "wikitext2_valid_detok"),
            "--out",
            str(out),
            "--rank",
            "4",
            "--set",
            f"model={tiny_model}",
            "--set",
            "data.seq_len=32",
            "--set",
            "data.train_samples=32",
            "--set",
            "data.val_samples=16",
            "--set",
            "train.max_steps=2",
            "--set",
            "train.eval_every=1",
        ]
    )
    assert code == 0
    facts = json.loads((out / "results.json").read_text())["facts"]
    assert facts["max_abs_diff_at_injection"] == 0 and facts["max_abs_diff_disabled"] == 0
    assert facts["all_layers_match_formula"] and facts["two_active_sum_max_abs_error"] < 1e-5
    assert facts["a_and_b_differ_max_abs"] > 0 and facts["both_active_differs_from_each"] > 0
    assert "parameters per layer = r x (d_in + d_out) | holds for all" in (out / "RESULTS.md").read_text()


def test_fourier_embeddings_experiment_tiny(tmp_path, tiny_model, shared_data):
    out = tmp_path / "fourier"
    code = fourier_embeddings.main(
        [
            "--data",
            str(shared_data / "wikitext2_valid_detok"),
            "--out",
            str(out),
            "--speed-texts",
            "32",
            "--set",
            f"model={tiny_model}",
            "--set",
            "data.seq_len=32",
            "--set",
            "data.train_samples=32",
            "--set",
            "data.val_samples=16",
            "--set",
            "train.max_steps=2",
            "--set",
            "train.eval_every=1",
            "--set",
            "adapter.mlp_width=16",
        ]
    )
    assert code == 0
    text = (out / "RESULTS.md").read_text()
    assert text.count("| Injection (") == 3 and "| Static prefix (3 tokens) |" in text


def test_sentiment_prefix_experiment_tiny(tmp_path, tiny_model, shared_data):
    import json

    out = tmp_path / "sentiment"
    code = sentiment_prefix.main(
        [
            "--data",
            str(shared_data / "sst2"),
            "--out",
            str(out),
            "--samples",
            "4",
            "--max-new-tokens",
            "6",
            "--references",
            "20",
            "--classifier-rows",
            "300",
            "--set",
            f"model={tiny_model}",
            "--set",
            "data.train_samples=16",
            "--set",
            "data.val_samples=8",
            "--set",
            "train.max_steps=2",
            "--set",
            "train.eval_every=1",
            "--set",
            "adapter.mlp_width=16",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert 0.6 < results["judge"]["val_accuracy"] <= 1.0  # a real classifier, even on 300 reviews
    # 2 x (2 prefixes, frozen, 2 domain)
    assert len(results["rows"]) == 10 and all(0 <= r["accuracy"] <= 1 for r in results["rows"])
    assert {r["kind"] for r in results["rows"]} == {
        "baseline",
        "simplified",
        "full",
        "simplified-domain",
        "full-domain",
    }
    assert [len(v) for v in results["mixing"].values()] == [5, 5]
    assert all(len(p["p_positive"]) == 4 for v in results["mixing"].values() for p in v)
    text = (out / "RESULTS.md").read_text()
    assert "## Prefix mixing" in text and (out / "mixing.png").is_file()
    assert "### Sentiment beyond the domain" in text and "Reading: " in text
    assert "monotonic (" not in text  # never claimed from point estimates alone
    assert sentiment_prefix.main(["--data", str(tmp_path), "--out", str(out)]) == 2


def test_prompt_priors_experiment_tiny(tmp_path, tiny_model, shared_data):
    import json

    out = tmp_path / "priors"
    code = prompt_priors.main(
        [
            "--data",
            str(shared_data),
            "--out",
            str(out),
            "--seeds",
            "2",
            "--priors",
            "vocab",
            "exclusion",
            "interpolate",
            "--plot-texts",
            "20",
            "--plot-vocab",
            "100",
            "--max-new-tokens",
            "3",
            "--set",
            f"model={tiny_model}",
            "--set",
            "data.train_samples=16",
            "--set",
            "data.val_samples=8",
            "--set",
            "train.max_steps=2",
            "--set",
            "train.eval_every=1",
            "--set",
            "adapter.init_radius=0.01",
        ]
    )
    assert code == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert len(runs) == 2 * 3 * 2 and all(0 <= r["f1"] <= 1 and r["moved"] > 0 for r in runs)
    text = (out / "RESULTS.md").read_text()
    assert "## The seed's claim, tested" in text and "| ANOVA p | Kruskal-Wallis p | ANOVA p, Holm |" in text
    assert (out / "pca.png").is_file() and (out / "tsne.png").is_file()
    deep = tmp_path / "deep"
    assert (
        prompt_priors.main(
            [
                "--data",
                str(shared_data),
                "--out",
                str(deep),
                "--seeds",
                "2",
                "--priors",
                "vocab",
                "normal",
                "--tasks",
                "sciq_qa",
                "--deep-layers",
                "1",
                "--plot-texts",
                "20",
                "--plot-vocab",
                "100",
                "--max-new-tokens",
                "3",
                "--set",
                f"model={tiny_model}",
                "--set",
                "data.train_samples=16",
                "--set",
                "data.val_samples=8",
                "--set",
                "train.max_steps=2",
                "--set",
                "train.eval_every=1",
            ]
        )
        == 0
    )
    assert "# Embedding priors for deep prompt tuning" in (deep / "RESULTS.md").read_text()


def test_answer_normalisation_keeps_signs():
    assert normalise(" -42.\nCalculate") == "-42" and normalise("The Down syndrome") == "down syndrome"
    assert token_f1("down syndrome", "Down Syndrome.") == 1.0 and token_f1("42", "-42") == 0.0
    assert abs(token_f1("inductive reasoning works", "inductive reasoning") - 0.8) < 1e-9


def test_injection_context_study_tiny(tmp_path, tiny_model, shared_data, capsys, monkeypatch):
    """The main study end to end on the tiny model: learning rates from embinject.tune, every arm scored on the same
    test tokens, RESULTS.md with its three questions, and a second call that finds nothing left to run."""
    import json

    out = tmp_path / "study"
    argv = [
        "--data",
        str(shared_data / "fineweb_edu_sample"),
        "--out",
        str(out),
        "--seeds",
        "0",
        "--arms",
        "static-4",
        "inject-4",
        "shuffled-4",
        "window-4",
        "kv-8",
        "kv-4",
        "context-4",
        "--set",
        f"model={tiny_model}",
        "--set",
        "data.train_samples=16",
        "--set",
        "data.val_samples=8",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.eval_every=1",
        "--set",
        "adapter.mlp_width=16",
        "--set",
        "tune.num_samples=2",
        "--set",
        "tune.scheduler.max_t=2",
        "--set",
        "tune.scheduler.grace_period=1",
        "--set",
        "tune.storage_path=" + str(tmp_path / "tune"),
    ]
    runs = out / "runs" / "fineweb_edu_sample"
    runs.mkdir(parents=True)
    for method, lr in (("prompt", 0.01), ("injection", 0.005)):  # recorded searches are not run again: kv's runs
        trials = [{"lr": lr, "val_perplexity": 900.0, "steps": 2}, {"lr": 3 * lr, "val_perplexity": 950.0, "steps": 1}]
        (runs / f"lr_search_{method}.json").write_text(
            json.dumps(
                {
                    "method": method,
                    "lr": lr,
                    "trials": trials,
                    "bracket": [{"lr": lr / 2, "val_perplexity": 920.0, "steps": 2}],
                }
            )
        )
    assert run.main(argv) == 0
    records = [json.loads(f.read_text()) for f in runs.glob("*.json") if not f.name.startswith("lr_search_")]
    assert len(records) == 7 + 9  # 7 arms x 1 seed, baseline + 7 text lengths + the `context` arms' baseline
    context = {"context-4", "baseline-context"}  # scored on the tokens after the window's first 8
    main_tokens = {tuple(r["test_tokens"]) for r in records if r["arm"] not in context}
    context_tokens = {tuple(r["test_tokens"]) for r in records if r["arm"] in context}
    assert len(main_tokens) == 1 and len(context_tokens) == 1  # every arm scored on exactly its table's test tokens
    assert sum(context_tokens.pop()) < sum(main_tokens.pop())
    searches = [json.loads(f.read_text()) for f in runs.glob("lr_search_*.json")]
    assert {s["method"] for s in searches} == {"prompt", "injection", "kv"}  # a design has its own search
    kv_search = next(s for s in searches if s["method"] == "kv")  # the one this call ran, through embinject.tune
    tried = [t["lr"] for t in kv_search["trials"]]  # two trials, so the chosen rate is at an edge and one more
    beyond = 2 * kv_search["lr"] if kv_search["lr"] == max(tried) else kv_search["lr"] / 2  # trial checks beyond it
    assert len(tried) == 2 and [round(t["lr"] / beyond, 9) for t in kv_search["bracket"]] == [1.0]
    text = (out / "RESULTS.md").read_text()
    for heading in (
        "### (a) The compression curve",
        "### (b) What is specific to the embedding's content",
        "### (c) The seed report's `window` mode",
        "### (d) Secondary: `context` mode",
        "| bracket check |",
        "### (f) Designs: what makes the vectors carry the text",
    ):
        assert heading in text
    assert "NaN" not in (out / "results.json").read_text()  # one seed: its bounds are null, strict JSON
    head = json.loads((out / "results.json").read_text())["fineweb_edu_sample"]["headline"]
    assert head["k"] <= 8 and len(head["share_of_text_gain"]) == 3 and head["content_share"] is None  # no control ran
    kv, kv4 = (next(r for r in records if r["arm"] == arm) for arm in ("kv-8", "kv-4"))
    assert (
        kv["config"]["adapter"]["inject_into"] == "kv"
        and kv["lr"] == json.loads((runs / "lr_search_kv.json").read_text())["lr"]
    )
    assert (
        kv4["lr"] == kv["lr"] and kv4["config"]["adapter"]["inject_tokens"] == 4
    )  # a design's curve: its rate at k = 8
    assert "| kv (`kv-4`) | 4 |" in text and "| static prefix (`static-4`) | 4 |" in text
    assert (out / "compression.png").is_file()
    capsys.readouterr()
    assert run.main(argv) == 0 and "0 runs to do" in capsys.readouterr().out  # a finished study runs nothing again
    # records of another budget are never mixed into the same tables: one line naming the record and the setting
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert run.main(argv + ["--set", "train.max_steps=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: ")
        and "train.max_steps=2" in err
        and "another --out folder" in err
        and len(err.splitlines()) == 1
    )
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing written or rewritten
    # an arm's seeds at another precision: the same one line, before any search, nothing written
    other = "float32" if kv["dtype"] == "bfloat16" else "bfloat16"
    assert run.main(argv + ["--set", f"train.dtype={other}"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: ")
        and f"trained in {kv['dtype']}, but this call trains in {other}" in err
        and len(err.splitlines()) == 1
    )
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # a longer series in <out>/converged: the study's learning rates, a check of them at its budget, and a comparison
    # table in the study's own RESULTS.md
    longer = [
        "--out",
        str(out / "converged"),
        "--lr-from",
        str(out),
        "--lr-check",
        "--arms",
        "inject-4",
        *[a.replace("train.max_steps=2", "train.max_steps=3") for a in argv[argv.index("--set") :]],
    ]
    assert run.main(["--data", str(shared_data / "fineweb_edu_sample"), "--seeds", "0", *longer]) == 0
    series = out / "converged"
    copied = json.loads((series / "runs" / "fineweb_edu_sample" / "lr_search_injection.json").read_text())
    assert copied["from"] == "../runs/fineweb_edu_sample/lr_search_injection.json"
    checks = sorted(
        json.loads(f.read_text())["lr"] for f in (series / "lr_check" / "fineweb_edu_sample").glob("*.json")
    )
    assert [round(c / copied["lr"], 1) for c in checks] == [0.5, 2.0]
    series_text = (series / "RESULTS.md").read_text()
    assert (
        "Learning-rate check at this series' budget" in series_text
        and "--lr-check --set" in series_text
        and "--set train.max_steps=3`" in series_text
    )
    assert run.main(["--render-only", "--out", str(out)]) == 0
    assert "### (e) Trained longer: the series in `converged`" in (out / "RESULTS.md").read_text()
    # a run that diverges is recorded as such and not retried (the same seed at the same rate diverges again)
    bad = tmp_path / "diverges"
    (bad / "runs" / "fineweb_edu_sample").mkdir(parents=True)
    (bad / "runs" / "fineweb_edu_sample" / "lr_search_prompt.json").write_text(
        (runs / "lr_search_prompt.json").read_text()
    )
    unstable = [
        *argv[: argv.index("--out")],
        "--out",
        str(bad),
        "--seeds",
        "0",
        "--arms",
        "static-4",
        *argv[argv.index("--set") :],
        "--set",
        "train.divergence_factor=0.001",
    ]
    assert run.main(unstable) == 0
    capsys.readouterr()
    assert (
        json.loads((bad / "runs" / "fineweb_edu_sample" / "diverged" / "static-4__seed0.json").read_text())["step"] >= 1
    )
    assert "Diverged on fineweb_edu_sample" in (bad / "RESULTS.md").read_text()
    assert run.main(unstable) == 0 and "0 runs to do" in capsys.readouterr().out
    # the learning-rate rule (issue 53): kv-8's rate searched at its own budget, every trial to the end over the
    # rule's grid (the --set tune.* values of the pruned searches do not apply), recorded and shown in RESULTS.md
    sets = argv[argv.index("--set") :]
    monkeypatch.setattr(rates, "MOST_BEYOND", 1)  # at most one step beyond the grid: each is a search of its own
    assert (
        run.main(
            ["--data", str(shared_data / "fineweb_edu_sample"), "--out", str(out), "--lr-at-budget", "kv-8", *sets]
        )
        == 0
    )
    rule = json.loads((runs / "lr_at_budget_kv-8.json").read_text())
    assert {t["lr"] for t in rule["trials"]} >= set(arms.LR_RULE_GRID) and all(t["steps"] == 2 for t in rule["trials"])
    assert (
        rule["budget"]["windows"] == 16 and rule["budget"]["pruning"] is None and not rates.next_rates(rule["trials"])
    )
    assert len(rule["trials"]) <= len(arms.LR_RULE_GRID) + 1
    assert "Searches under the learning-rate rule" in (out / "RESULTS.md").read_text()
    capsys.readouterr()
    assert run.main(argv) == 2  # kv-8's runs now train at that rate: its records at the old one are another series
    assert f"kv-8__seed0.json: run with train.lr={kv['lr']!r}" in capsys.readouterr().err
    # three searches ran in this process (kv's, its bracket check, the rule's): Ray wrote its session's spilling
    # directory into the system config it was given, which must have been a copy of embinject's own
    assert LOCAL_RAY_SYSTEM_CONFIG == {"worker_niceness": 0}


def test_the_headline_is_the_best_design_with_an_interval_where_one_has_it():
    def row(arm, design, k, seeds, share):
        return {
            "arm": arm,
            "design": design,
            "k": k,
            "seeds": seeds,
            "share_of_text_gain": (share, share - 0.05, share + 0.05),
        }

    rows = {
        "a": row("kv-8", "kv", 8, 3, 0.49),
        "b": row("inject-8-w4096", "more windows", 8, 1, 0.55),
        "c": row("kv-16", "kv", 16, 3, 0.60),
        "d": row("static-8", "static prefix", 8, 3, 0.52),
    }
    assert headline(rows)["arm"] == "kv-8"  # not the one-seed row, nor k = 16, nor the static prefix
    assert headline({"b": rows["b"]})["arm"] == "inject-8-w4096"  # one seed when no row has more


def test_more_training_text_is_measured_per_doubling_and_extrapolated_only_from_an_interval_above_zero():
    import numpy as np

    tokens = np.full((5, 40), 63)
    base = np.full((1, 40), 4.0 * 63)  # the frozen LM: 4 nats per token; reading the text: 3 (a gain of 1 nat)
    seed_noise = np.array([0.0, 0.01, -0.01, 0.02, -0.02])[:, None] * 63
    arm = lambda share, noise=0: PerWindow(np.repeat(base, 5, 0) - share * 63 + noise, tokens)  # noqa: E731
    design, control = arms.BEST_PAIR
    per = {
        "baseline": PerWindow(base, tokens[:1], trained=False),
        "text-64": PerWindow(base - 63, tokens[:1], trained=False),
        design: arm(0.50),
        control: arm(0.45),
        f"{design}-w4096": arm(0.60, seed_noise),
        f"{control}-w4096": arm(0.50),
    }
    designs = {f"{design}-w4096": {"share_of_text_gain": (0.60,), "content_share": (0.10,)}}
    gain = lambda m: m["baseline"] - m["text-64"]  # noqa: E731
    (step,) = scaling.analyse_text_scaling(per, gain, designs, {design: 1024, f"{design}-w4096": 4096})
    share, content = step["share_per_doubling"], step["content_per_doubling"]
    assert step["doublings"] == 2 and share.seeds == 5 and abs(share[0] - 0.05) < 1e-9 and share[1] > 0
    assert abs(content[0] - 0.025) < 1e-9  # (0.60 - 0.50) - (0.50 - 0.45), over 2 doublings
    assert abs(step["share_needs"]["doublings"][0] - 2) < 1e-9 and abs(step["share_needs"]["windows"][0] - 16384) < 1e-6
    low, high = step["share_needs"]["doublings"][1:]
    assert low < 2 < high  # fewest doublings at the interval's high rate, most at its low one
    assert scaling.doublings_to(0.25, 0.30, share, 4096)["doublings"] == [0.0, 0.0, 0.0]  # reached
    assert scaling.doublings_to(0.70, 0.60, (0.01, -0.01, 0.03), 4096) is None  # an interval that includes 0
    far = scaling.doublings_to(0.70, 0.60, (0.01, 1e-300, 0.03), 4096)  # an interval ending just above 0: no overflow
    assert far["windows"][2] is None
    # a two-point extrapolation: its point only, labelled so, never with brackets that read as a confidence interval
    cell = describe.needs_cell(step["share_needs"], share)
    assert "two-point extrapolation, no interval" in cell and "[" not in cell
    assert "one seed" in describe.needs_cell(None, (0.05, float("nan"), float("nan")))


def test_a_design_and_its_control_each_search_their_own_learning_rate(tmp_path):
    """The study's protocol: every design and its constant-input control search their own rate through embinject.tune,
    the control's search with the control's input (adapter.ablation), the control the design's architecture (a
    trained encoder aside: a constant input leaves it nothing to learn). Records from before a key existed match with
    its default; from before adapter.ablation, when their own `control` field names the same treatment."""
    import argparse
    import json

    assert arms.lr_group("kv-8") == "kv" and arms.lr_group("kv-constant-8") == "kv-constant"
    assert arms.lr_group("constant-4") == "injection" and arms.lr_group("static-8") == "prompt"
    # the shuffled control searches its own rate too; the curve's arms at other k train with their k = 8 search's
    assert (
        arms.lr_group("kv-shuffled-8") == "kv-shuffled"
        and arms.lr_shape("kv-shuffled")[1]["adapter.ablation"] == "shuffled"
    )
    assert (
        arms.lr_group("lmchunks-kv-16") == "lmchunks-kv"
        and arms.lr_group("lmchunks-kv-constant-2") == "lmchunks-kv-constant"
    )
    assert (
        arms.ARMS["lmchunks-kv-16"][1]["adapter.inject_tokens"] == 16
        and arms.design_of("lmchunks-kv-constant-2") == "lmchunks-kv"
    )
    assert "static-16" in arms.ARM_SETS["kv-curve"]
    # a design that differs from another only by its encoder's LoRA shares that design's controls: the same settings
    assert (
        arms.control_arm("lmchunks-lora-kv", 8, "shuffled")
        == "lmchunks-kv-shuffled-8"
        == arms.control_arm("lmchunks-kv", 8, "shuffled")
    )
    assert "lmchunks-lora-kv-constant-8" not in arms.ARMS and "lmchunks-kv-constant-8" in arms.ARM_SETS["designs"]
    method, shape = arms.lr_shape("lmchunks-kv-constant")
    assert method == "injection" and shape["adapter.ablation"] == "constant" and "adapter.encoder_rank" not in shape
    assert (
        arms.lr_shape("lmchunks-lora-kv")[1]["adapter.encoder_rank"] == 8
        and "adapter.ablation" not in arms.lr_shape("kv")[1]
    )
    args = argparse.Namespace(config=str(run.HERE / "config.yaml"), overrides=[], seeds=[0])
    cfg = run.arm_config(args, "kv-constant-8", tmp_path, 0.002)
    assert cfg.adapter.ablation == "constant" and cfg.adapter.inject_into == "kv"
    # more training windows: the pooled pair and lmchunks-kv's at 8 vectors, each at its own rate on 1,024, the same
    # validation windows
    more = {a: run.arm_config(args, a, tmp_path, 0.002) for a in arms.ARM_SETS["more-windows"]}
    assert [arms.lr_group(a) for a in more] == ["injection", "injection", "lmchunks-kv", "lmchunks-kv-constant"]
    assert [c.adapter.ablation for c in more.values()] == ["none", "constant"] * 2
    assert more["lmchunks-kv-8-w4096"].adapter.inject_into == "kv" and arms.design_of("lmchunks-kv-8-w4096") is None
    # each row is compared with the pooled vector on its own windows; the pooled vector on more with itself on 1,024
    assert [
        analysis.pooled_beside(a, 8) for a in ("kv-8", "inject-8-w4096", "lmchunks-kv-8-w4096", "lmchunks-kv-8-e4")
    ] == ["inject-8", "inject-8", "inject-8-w4096", "inject-8-e4"]
    assert all(
        c.data.train_samples == 4096
        and c.data.val_samples == cfg.data.val_samples
        and c.train.patience >= 5
        and c.adapter.inject_tokens == 8
        for c in more.values()
    )
    # the same windows four times: as many steps as 4,096 once, at the rates of the arms they repeat
    epochs = {a: run.arm_config(args, a, tmp_path, 0.002) for a in arms.ARM_SETS["more-epochs"]}
    assert [arms.lr_group(a) for a in epochs] == ["lmchunks-kv", "lmchunks-kv-constant"]
    assert all(c.train.max_epochs * c.data.train_samples == 4096 and c.train.patience >= 5 for c in epochs.values())
    overlapping = [run.arm_config(args, a, tmp_path, 0.002) for a in arms.ARM_SETS["overlapping-windows"]]
    assert [(c.data.train_stride, c.data.train_samples, c.adapter.ablation) for c in overlapping] == [
        (32, 8192, "none"),
        (32, 8192, "constant"),
    ]
    # the whole validation split
    assert all(c.train.eval_windows is None and c.train.patience >= 5 for c in overlapping)
    runs = tmp_path / "runs"
    runs.mkdir()
    legacy = cfg.to_dict()
    for key in ("ablation", "encoder_rank"):  # written before these keys existed
        legacy["adapter"].pop(key)
    (runs / "kv-constant-8__seed0.json").write_text(json.dumps({"config": legacy, "control": "constant"}))
    run.check_records_match(args, runs, ["kv-constant-8"], tmp_path, {"kv-constant": 0.002})
    with pytest.raises(Exception, match="kv-constant-8__seed0.json: run with train.lr=0.002"):
        run.check_records_match(args, runs, ["kv-constant-8"], tmp_path, {"kv-constant": 0.001})
    # one precision per arm: `auto` resolves per machine, so a seed trained elsewhere in bf16 is named, with the way on
    (runs / "kv-constant-8__seed1.json").write_text(
        json.dumps({"config": legacy, "control": "constant", "dtype": "bfloat16"})
    )
    fp32 = argparse.Namespace(**{**vars(args), "overrides": ["train.dtype=float32"]})
    with pytest.raises(
        Exception,
        match=r"kv-constant-8__seed1.json: trained in bfloat16, but this call trains in float32.*"
        r"--set train.dtype=bfloat16",
    ):
        run.check_precision(fp32, runs, ["kv-constant-8"], tmp_path)
    # other arms may differ: the report marks them
    assert run.check_precision(fp32, runs, ["kv-8"], tmp_path) == "float32"
    bf16 = argparse.Namespace(**{**vars(args), "overrides": ["train.dtype=bfloat16"]})
    assert run.check_precision(bf16, runs, ["kv-constant-8"], tmp_path) == "bfloat16"
    bf16.seeds = [0, 1]  # the setting's own string is not compared, the precision it resolved to is
    run.check_records_match(bf16, runs, ["kv-constant-8"], tmp_path, {"kv-constant": 0.002})
    # a control trained at its design's rate before it had a search keeps that rate for its other seeds, not a new one
    for seed, lr in ((0, 0.002), (1, 0.002)):
        (runs / f"kv-constant-8__seed{seed}.json").write_text(json.dumps({"lr": lr}))
    assert (
        rates.learning_rate(
            argparse.Namespace(lr_from=None), "kv-constant", tmp_path, runs, "float32", ["kv-constant-8"]
        )
        == 0.002
    )
    (runs / "kv-constant-8__seed1.json").write_text(json.dumps({"lr": 0.004}))
    with pytest.raises(Exception, match=r"kv-constant: its arms' records trained at 2 learning rates \(0.002, 0.004"):
        rates.recorded_rate(runs, "kv-constant", ["kv-8", "kv-constant-8"])
    assert rates.recorded_rate(runs, "kv", ["kv-8", "kv-constant-8"]) is None  # nothing recorded: the search runs
    # a chunk design's runs from before each chunk had its position's own MLP rows are another design: never continued
    shared = run.arm_config(args, "chunks-8", tmp_path, 0.002).to_dict()
    (runs / "chunks-8__seed0.json").write_text(json.dumps({"config": shared}))
    with pytest.raises(Exception, match=r"chunks-8__seed0.json: trained with one MLP shared by its chunks"):
        run.check_chunk_layout(runs, ["chunks-8"])  # whichever seeds are asked for
    (runs / "chunks-8__seed0.json").write_text(json.dumps({"config": shared, "chunk_rows": "per-position"}))
    run.check_chunk_layout(runs, ["chunks-8"])
    run.check_records_match(args, runs, ["chunks-8"], tmp_path, {"chunks": 0.002})


def test_injection_context_bad_input_is_one_line_and_writes_nothing(tmp_path, shared_data, capsys):
    import json

    import shutil

    from embinject.models import cache_root

    # a corpus with no shared corpora beside it
    out, alone = (tmp_path / "study", tmp_path / "alone" / "fineweb_edu_sample")
    shutil.copytree(shared_data / "fineweb_edu_sample", alone)
    for argv, expected in (
        (["--data", str(tmp_path / "nowhere"), "--out", str(out)], "--data: "),
        (
            ["--data", str(alone), "--out", str(out), "--arms", "more-text"],
            f"--arms: {alone.parent / arms.MORE_TEXT_CORPUS / 'train.jsonl'} not found: the arms trained on more text",
        ),
        (
            [
                "--data",
                str(shared_data / "fineweb_edu_sample"),
                "--out",
                str(out),
                "--lr-from",
                str(tmp_path / "no-series"),
            ],
            f"--lr-from: {tmp_path / 'no-series'}",
        ),
        (["--render-only", "--out", str(out)], "--out: no run records under "),
    ):
        assert run.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: " + expected) and len(err.splitlines()) == 1 and "Traceback" not in err
        assert not out.exists() or not any(out.iterdir())
    leaky = alone.parent / arms.MORE_TEXT_CORPUS  # extra text that repeats a test article is refused, nothing prepared
    leaky.mkdir()
    test_doc = (alone / "validation.jsonl").read_text().splitlines()[0]
    for split in ("train", "validation"):
        (leaky / f"{split}.jsonl").write_text(test_doc + "\n")
    assert run.main(["--data", str(alone), "--out", str(out), "--arms", "more-text"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {leaky}: a document (") and "repeats 100% of its 8-word sequences" in err
    assert len(err.splitlines()) == 1 and (not out.exists() or not any(out.iterdir()))
    assert not list((cache_root() / "experiments").glob(f"{alone.name}+{leaky.name}-*"))
    # records the driver must not add a seed to: a chunk arm of the shared-MLP layout, a control's seeds at two rates
    runs = out / "runs" / "fineweb_edu_sample"
    runs.mkdir(parents=True)
    chunks = {"adapter": {"pooling": "chunks"}}
    (runs / "chunks-8__seed0.json").write_text(json.dumps({"config": chunks}))
    for seed, lr in ((0, 0.002), (1, 0.004)):
        (runs / f"chunks-constant-8__seed{seed}.json").write_text(
            json.dumps({"config": chunks, "chunk_rows": "per-position", "lr": lr})
        )
    before = {f: f.stat().st_mtime_ns for f in out.rglob("*")}
    data = ["--data", str(shared_data / "fineweb_edu_sample"), "--out", str(out), "--seeds", "2", "--arms"]
    for arm, expected in (
        ("chunks-8", f"{runs / 'chunks-8__seed0.json'}: trained with one MLP shared by its chunks"),
        ("chunks-constant-8", "chunks-constant: its arms' records trained at 2 learning rates"),
    ):
        assert run.main(data + [arm]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: " + expected) and len(err.splitlines()) == 1 and "Traceback" not in err
        assert {f: f.stat().st_mtime_ns for f in out.rglob("*")} == before  # nothing written, no search started


def test_paired_bootstrap_and_holm():
    import numpy as np

    rng = np.random.default_rng(0)
    nll, tokens = rng.normal(3.0, 0.5, (3, 200)) * 60, np.full((3, 200), 60)
    same, better = PerWindow(nll, tokens), PerWindow(nll - 6.0, tokens)  # 0.1 nats/token better on every window
    p, lo, hi = bootstrap(lambda m: m["b"] - m["a"], {"a": same, "b": better})
    assert abs(p + 0.1) < 1e-9 and excludes_zero(lo, hi) and hi < 0  # paired: the window noise cancels
    p, lo, hi = bootstrap(lambda m: m["b"] - m["a"], {"a": same, "b": PerWindow(nll[::-1], tokens)})
    assert not excludes_zero(lo, hi)  # the same windows from other seeds: no difference
    assert holm({"x": 0.01, "y": 0.04, "z": None, "w": 0.03}) == {"x": 0.03, "y": 0.06, "z": None, "w": 0.06}


def test_seed_interval_is_student_t_over_seed_means_and_claims_need_five_seeds():
    import math

    import numpy as np
    from scipy.stats import t

    rng = np.random.default_rng(0)
    base = rng.normal(3.0, 0.5, (1, 50)) * 60
    shift = np.array([-0.10, -0.12, -0.08, -0.11, -0.09])  # nats/token, one per seed, on every window
    tokens = np.full((5, 50), 60)
    a = PerWindow(np.repeat(base, 5, axis=0), tokens)
    b = PerWindow(np.repeat(base, 5, axis=0) + shift[:, None] * 60, tokens)
    x = seed_interval(lambda m: m["b"] - m["a"], {"a": a, "b": b})
    half = t.ppf(0.975, 4) * shift.std(ddof=1) / math.sqrt(5)
    assert x.seeds == 5 and abs(x[0] - shift.mean()) < 1e-12
    assert abs(x[1] - (shift.mean() - half)) < 1e-9 and abs(x[2] - (shift.mean() + half)) < 1e-9
    assert claim(x, "b better", "a better") == "b better"
    three = seed_interval(
        lambda m: m["b"] - m["a"], {"a": PerWindow(a.nll[:3], tokens[:3]), "b": PerWindow(b.nll[:3], tokens[:3])}
    )
    assert three.seeds == 3 and claim(three, "b better", "a better").startswith("suggestive: b better (3 seeds")
    one = seed_interval(
        lambda m: m["b"] - m["a"], {"a": PerWindow(a.nll[:1], tokens[:1]), "b": PerWindow(b.nll[:1], tokens[:1])}
    )
    assert math.isnan(one[1]) and claim(one, "b better", "a better").startswith("no verdict")
    # a trained arm of one seed beside one of five: seed 0 of each, no interval (not five seeds of the other arm's)
    mixed = seed_interval(lambda m: m["b"] - m["a"], {"a": a, "b": PerWindow(b.nll[:1], tokens[:1])})
    assert mixed.seeds == 1 and math.isnan(mixed[1]) and abs(mixed[0] - shift[0]) < 1e-12
    # seeds with gaps pair by number: b has seeds 0, 2, 4 (rows 0-2), a has 0-4; row 1 of b is seed 2, not seed 1
    drift = np.array([0.0, 0.01, 0.02, 0.03, 0.04])  # a's seeds differ too, so a wrong pairing shows
    a_drift = PerWindow(a.nll + drift[:, None] * 60, tokens)
    gaps = seed_interval(
        lambda m: m["b"] - m["a"], {"a": a_drift, "b": PerWindow(b.nll[[0, 2, 4]], tokens[:3], seed_ids=[0, 2, 4])}
    )
    assert gaps.seeds == 3 and abs(gaps[0] - (shift - drift)[[0, 2, 4]].mean()) < 1e-12
    frozen = seed_interval(lambda m: m["a"], {"a": PerWindow(base, tokens[:1], trained=False)})
    assert frozen.seeds == 0 and frozen[1] < frozen[0] < frozen[2]  # no training seed: an interval over test windows


def test_runs_logged_from_several_threads_each_land_in_their_store(tmp_path, monkeypatch):
    """An experiment driver logs a run per finished job from a thread per worker: MLflow's global URIs are swapped for
    each block, so two threads at once must not restore each other's (a run would go to another store, or fail)."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.tracking import MlflowClient

    from experiments.common import log_result

    other, mine = (f"sqlite:///{tmp_path / name}.db" for name in ("other", "mine"))
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # the process's own store (another search's)
        monkeypatch.setenv(key, other)
    MlflowClient(other).create_experiment("elsewhere", artifact_location=str(tmp_path / "artifacts"))
    with ThreadPoolExecutor(8) as pool:  # unguarded, about one call in a hundred failed here (measured)
        list(pool.map(lambda i: log_result(mine, "threads", f"run {i}", {"i": i}, metrics={"m": i}), range(48)))
    assert MlflowClient(other).search_experiments(filter_string="name = 'threads'") == []
    client = MlflowClient(mine)
    runs = client.search_runs([client.get_experiment_by_name("threads").experiment_id], max_results=100)
    assert sorted(int(r.data.params["i"]) for r in runs) == list(range(48))
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_extra_training_text_joins_the_training_split_and_never_repeats_held_out_articles(tmp_path):
    """`--arms more-text`: another corpus's articles are appended to the study's training articles; validation and test
    stay the same documents, and extra text that repeats one of them is refused with a line naming the folder."""
    import json

    from embinject.errors import ConfigError
    from experiments.injection_context.train_arm import extra_dir, read_docs, study_data

    def corpus(name: str, train: list[str], validation: list[str]):
        folder = tmp_path / name
        folder.mkdir()
        for split, docs in (("train", train), ("validation", validation)):
            (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        return folder

    article = lambda i: " ".join(f"word{i}x{j}" for j in range(40))  # noqa: E731
    src = corpus("wiki", [article(i) for i in range(20)], [article(100)])
    other = corpus("other", [article(200), article(201)], [article(202)])
    plain, test_docs = study_data(src)
    joined, same_test = study_data(src, other)
    assert test_docs == same_test == [article(100)]
    assert read_docs(joined / "validation.jsonl") == read_docs(plain / "validation.jsonl") == [article(9), article(19)]
    assert read_docs(joined / "train.jsonl") == read_docs(plain / "train.jsonl") + [
        article(200),
        article(201),
        article(202),
    ]
    assert (
        extra_dir(src, "lmchunks-kv-8-w8192t") == src.parent / arms.MORE_TEXT_CORPUS
        and extra_dir(src, "lmchunks-kv-8") is None
    )
    leaky = corpus("leaky", [article(300), article(19) + " and more"], [])
    with pytest.raises(ConfigError, match=f"^{leaky}: a document .* repeats 9[0-9]% of its 8-word sequences"):
        study_data(src, leaky)
    assert not any(p.name.startswith("wiki+leaky") for p in plain.parent.iterdir())  # nothing written


def test_a_content_share_whose_control_rate_was_not_searched_at_its_budget_gets_no_verdict():
    """Issue 53's rule: a rate counts as searched only for the same arm at the budget it is reported at; a content
    share that rests on a control with a borrowed rate, or one searched at another budget, has no verdict."""
    from experiments.stats import Interval

    small = arms.budget_of(
        {"data": {"train_samples": 1024}, "train": {"max_epochs": 1, "eval_every": 32, "patience": 3}},
        tune={"scheduler": {"type": "asha", "max_t": 128, "grace_period": 32, "reduction_factor": 2}},
    )
    same = arms.budget_of(
        {
            "data": {"train_samples": 1024},
            "train": {"max_epochs": 1, "eval_every": 32, "patience": 3, "eval_windows": 64},
        }
    )
    larger = arms.budget_of(
        {
            "data": {"train_samples": 8192, "train_stride": 32},
            "train": {"max_epochs": 1, "eval_every": 64, "patience": 5, "eval_windows": None},
        }
    )
    assert small["steps"] == same["steps"] == 128 and larger["validation"] == "all validation windows"
    control = "lmchunks-kv-constant-8"
    assert arms.lr_status(control, same, control, small) == arms.SEARCHED_PRUNED
    assert arms.lr_status(control, same, control, {**small, "pruning": None}) == arms.SEARCHED
    # its rate, another budget
    assert arms.lr_status(f"{control}-w8192s32", larger, control, small) == arms.NOT_AT_BUDGET
    assert arms.lr_status("constant-8", same, arms.searched_arm(arms.lr_group("constant-8")), small) == arms.BORROWED
    assert arms.lr_status("kv-constant-8", same, None, None) == arms.NO_SEARCH
    helps = Interval(-0.03, -0.05, -0.01, 5)  # content nats: an interval below zero over 5 seeds
    for status in (arms.BORROWED, arms.NOT_AT_BUDGET, arms.NO_SEARCH):
        assert intervals.content_claim(helps, status) == "no verdict (control's rate not searched at this budget)"
        assert intervals.content_claim(helps, [arms.SEARCHED, status]).startswith("no verdict (control's rate")
    assert intervals.content_claim(helps, arms.SEARCHED_PRUNED) == "content helps"
    worse = Interval(0.03, 0.01, 0.05, 5)
    assert (
        intervals.content_claim(worse, arms.SEARCHED, arms.BORROWED)
        == "no verdict (design's rate not searched at this budget)"
    )
    # resampling the test windows too can take the verdict away: "barely"
    assert intervals.content_claim(helps, arms.SEARCHED, wide=[0.03, -0.001, 0.061]).startswith(
        "content helps at the seed level only (barely"
    )
    assert intervals.two_level(Interval(0.1, 0.08, 0.12, 5), 0.0) == pytest.approx([0.1, 0.08, 0.12])
    lo, hi = intervals.two_level(Interval(0.1, 0.08, 0.12, 5), 0.01)[1:]
    assert abs((hi - lo) / 2 - (0.02**2 + (1.959964 * 0.01) ** 2) ** 0.5) < 1e-9


def test_every_trained_row_carries_its_rate_its_budget_and_the_budget_its_rate_was_searched_at():
    """lr_rows: from the records and arms.py's definitions (the search's kept YAML, else config.yaml and
    lr_search.yaml), never typed numbers."""
    config = {
        "data": {"train_samples": 1024, "seq_len": 64},
        "train": {"max_epochs": 1, "eval_every": 32, "patience": 3, "eval_windows": 64, "batch_size": 8},
    }
    longer = {"data": {"train_samples": 4096, "seq_len": 64}, "train": {**config["train"], "patience": 5}}
    rec = lambda arm, lr, cfg: [{"arm": arm, "seed": 0, "lr": lr, "config": cfg}]  # noqa: E731
    corpus = {
        "arms": {
            "lmchunks-kv-constant-8": rec("lmchunks-kv-constant-8", 0.00376, config),
            "lmchunks-kv-constant-8-w4096": rec("lmchunks-kv-constant-8-w4096", 0.00376, longer),
            "constant-8": rec("constant-8", 0.002, config),
            "kv-constant-8": rec("kv-constant-8", 0.002, config),
            "baseline": [{"arm": "baseline"}],
        },
        "lr": {
            "lmchunks-kv-constant": {
                "method": "lmchunks-kv-constant",
                "lr": 0.00376,
                "trials": [
                    {"lr": 0.002, "val_perplexity": 38.3, "steps": 64},
                    {"lr": 0.00376, "val_perplexity": 35.3, "steps": 128},
                ],
            },
            "injection": {
                "method": "injection",
                "lr": 0.002,
                "trials": [{"lr": 0.002, "val_perplexity": 35.6, "steps": 128}],
            },
            "kv": {"method": "kv", "lr": 0.002, "trials": [{"lr": 0.002, "val_perplexity": 33.7, "steps": 128}]},
        },
    }
    rows = records.lr_rows(corpus)
    assert set(rows) == {"lmchunks-kv-constant-8", "lmchunks-kv-constant-8-w4096", "constant-8", "kv-constant-8"}
    own = rows["lmchunks-kv-constant-8"]
    assert own["lr_status"] == arms.SEARCHED_PRUNED and own["lr_budget"]["pruning"].startswith("asha")
    assert own["lr_settled"] is False  # chosen over a trial the scheduler had stopped at step 64 (scored on the subset)
    assert rows["lmchunks-kv-constant-8-w4096"]["lr_status"] == arms.NOT_AT_BUDGET
    assert (
        rows["lmchunks-kv-constant-8-w4096"]["budget"]["windows"]
        == 4096
        != rows["lmchunks-kv-constant-8-w4096"]["lr_budget"]["windows"]
    )
    assert rows["constant-8"]["lr_status"] == arms.BORROWED and rows["constant-8"]["lr_budget"]["arm"] == "inject-4"
    assert rows["kv-constant-8"]["lr_status"] == arms.NO_SEARCH and rows["kv-constant-8"]["lr_budget"]["search"] == "kv"
    assert "rate borrowed/not searched at this budget" in describe.rate_cell(rows["constant-8"])
    table = "\n".join(describe.lr_rule_table(rows))
    assert "| `constant-8` | 0.002 (rate borrowed/not searched at this budget" in table


def test_the_g_table_names_the_seeds_each_interval_uses_and_the_headline_its_selection():
    """The Seeds of a change are those of its own interval (a content change over 5 seeds beside a share change over 6),
    extrapolations carry no brackets, and a content change resting on a mistuned control has no verdict."""
    from experiments.stats import Interval

    share, content = Interval(0.042, 0.030, 0.054, 6), Interval(0.049, 0.012, 0.085, 5)
    step = {
        "from": "lmchunks-kv-8",
        "to": "lmchunks-kv-8-w4096",
        "windows": [1024, 4096],
        "share_per_doubling": share,
        "share_needs": scaling.doublings_to(0.70, 0.575, share, 4096),
        "content_per_doubling": content,
        "content_needs": None,
        "content_verdict": intervals.content_claim(
            content, [arms.SEARCHED_PRUNED, arms.NOT_AT_BUDGET], said=("less content", "more content")
        ),
        "lr_status": [arms.SEARCHED_PRUNED, arms.NOT_AT_BUDGET],
        "overlap": 1,
    }
    overlapping = {**step, "to": "lmchunks-kv-8-w8192s32", "overlap": 2}
    row = tables.text_scaling_table([step, overlapping])[-3]
    assert "+4.2 [+3.0, +5.4] pts (6 seeds)" in row and "+4.9 [+1.2, +8.5] pts (5 seeds)" in row
    assert "no verdict (control's rate not searched at this budget)" in row and "more content" not in row
    assert "two-point extrapolation, no interval" in row and "rates not searched at these budgets" in row
    assert "not the distinct text" in tables.text_scaling_table([step, overlapping])[-2]
    rows = {
        f"r{i}": {"arm": f"a{i}", "design": "d", "k": 8, "seeds": 5, "share_of_text_gain": (0.4 + i / 100, 0.3, 0.5)}
        for i in range(4)
    }
    head = analysis.headline(rows)
    assert head["arm"] == "a3" and head["selection"].startswith("best of 4") and head["runner_up"]["arm"] == "a2"


def test_rule_search_tries_the_grid_then_one_step_beyond_the_best_on_each_side(tmp_path):
    """`run.py --lr-at-budget ARM`: the arm's own budget, no pruning, the rule's grid and a step beyond its best."""
    import argparse

    import yaml
    from embinject.space import load_search_file

    assert rates.next_rates([]) == list(arms.LR_RULE_GRID)
    grid = [{"lr": lr, "val_perplexity": v} for lr, v in zip(arms.LR_RULE_GRID, (36.0, 35.0, 35.5))]
    assert rates.next_rates(grid) == []  # the best has a neighbour on each side
    assert rates.next_rates([{**grid[0], "val_perplexity": 34.0}, *grid[1:]]) == [0.0005]  # best is the smallest
    assert rates.next_rates([grid[0], grid[1], {**grid[2], "val_perplexity": 30.0}]) == [0.00752]  # best is the largest
    edge = grid + [{"lr": 0.00376 * 2**i, "val_perplexity": 30.0 - i} for i in range(1, rates.MOST_BEYOND + 1)]
    assert rates.next_rates(edge) == []  # at most MOST_BEYOND steps beyond the grid
    args = argparse.Namespace(config=str(run.HERE / "config.yaml"), overrides=[], workers=2, threads=1, out=tmp_path)
    raw = rates.rule_search_settings(args, "lmchunks-kv-constant-8-w8192s32", tmp_path, list(arms.LR_RULE_GRID))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    search = load_search_file(tmp_path / "s.yaml", [f"data.path={tmp_path}"])
    cfg = search.config
    assert (cfg.data.train_samples, cfg.data.train_stride, cfg.train.eval_windows, cfg.adapter.ablation) == (
        8192,
        32,
        None,
        "constant",
    )
    assert search.tune.scheduler.type == "none" and [p["train.lr"] for p in search.tune.points_to_evaluate] == list(
        arms.LR_RULE_GRID
    )


def test_a_regimes_example_arm_is_the_same_whatever_the_hash_seed():
    """Arms of equal length were picked in set order, which changes with Python's hash seed between runs."""
    config = {"data": {"train_samples": 64}, "train": {"max_epochs": 1, "batch_size": 8}}
    names = ["static-4", "inject-8", "inject-1", "kv-8"]
    for order in (names, names[::-1]):
        lines = describe.regimes([{"arm": a, "config": config} for a in order])
        assert len(lines) == 1 and "e.g. `kv-8`" in lines[0], lines
    lines = describe.regimes([{"arm": a, "config": config} for a in names if a != "kv-8"])
    assert "e.g. `inject-1`" in lines[0], lines
