"""The benchmark bookkeeping that needs no timing: resuming search_efficiency and rendering partial results; the real
packed search's arms run and write their fields."""

import argparse
import json
import os

from benchmarks import packed_search, real_search, report, report_packing, search_efficiency, warm_start
from embinject.fsutil import atomic_write_text
from embinject.tracking import TIME_SPLIT


def args_for(tmp_path, seeds=(0, 1)):
    return argparse.Namespace(
        seeds=list(seeds),
        trials=24,
        steps=20,
        startup_trials=3,
        kinds=["random_asha", "tpe_asha", "tpe_mv_asha"],
        runs=tmp_path / "runs",
        out=tmp_path / "search_efficiency.json",
    )


def record(kind, seed, curve, args):
    return {
        "kind": kind,
        "seed": seed,
        "settings": search_efficiency.settings(kind, args),
        "wall_s": 1.0,
        "total_steps": curve[-1][0],
        "final_best": curve[-1][1],
        "curve": curve,
    }


def test_search_efficiency_compares_only_finished_seeds_and_lists_the_rest(tmp_path):
    args = args_for(tmp_path)
    runs = [
        record("random", 0, [(20, 30.0), (40, 25.0), (480, 20.0)], args),
        record("tpe_asha", 0, [(20, 24.0), (60, 20.1), (200, 19.0)], args),  # within 1% of 20.0 after 60 steps
        record("tpe_mv_asha", 0, [(20, 30.0), (300, 21.0)], args),  # never within 1%
        record("random", 1, [(20, 22.0), (480, 21.0)], args),
    ]
    summary = search_efficiency.summarise(runs, args)
    by_kind = {s["kind"]: s for s in summary["per_seed"]}
    assert (
        by_kind["tpe_asha"]["steps_to_within_1pct"] == 60
        and by_kind["tpe_asha"]["fraction_of_random_steps"] == 60 / 480
    )
    assert by_kind["tpe_mv_asha"]["steps_to_within_1pct"] is None
    assert summary["median_fraction"] == {"tpe_asha": 60 / 480, "tpe_mv_asha": float("inf")}
    assert summary["missing"] == ["random_asha seed 0", "random_asha seed 1", "tpe_asha seed 1", "tpe_mv_asha seed 1"]
    text = "\n".join(report.efficiency_section(summary))
    assert "median 12% of random search's steps" in text and "over 1 seed " in text
    assert "Not run yet" in text and "tpe_mv_asha seed 1" in text
    assert "| 0 | multivariate TPE + ASHA (reduction factor 2) | 20.000 | 480 (480) |" in text


def test_a_finished_search_is_reused_only_under_the_same_settings(tmp_path):
    args = args_for(tmp_path)
    args.runs.mkdir()
    atomic_write_text(args.runs / "tpe_asha-seed0.json", json.dumps(record("tpe_asha", 0, [(20, 24.0)], args)))
    assert search_efficiency.finished("tpe_asha", 0, args)["final_best"] == 24.0
    assert search_efficiency.finished("tpe_asha", 1, args) is None
    args.steps = 40  # another budget: the kept search no longer answers the question
    assert search_efficiency.finished("tpe_asha", 0, args) is None


def test_precision_target_is_judged_on_each_methods_interval_over_seeds():
    """A method meets "within 1% of float32" only when its whole interval over seeds lies within 1%; a mean inside
    1% with seeds far apart is not settled, and one seed cannot be more than its own change."""

    def row(method, seed, change):
        f32 = {"val_perplexity": 20.0, "baseline_perplexity": 30.0, "train_seconds": 10.0}
        auto = {"val_perplexity": 20.0 * (1 + change), "baseline_perplexity": 30.0, "train_seconds": 7.0}
        return {"method": method, "seed": seed, "float32": f32, "auto": auto, "ppl_change": change, "step_speedup": 1.4}

    data = {
        "time": "t",
        "steps": 40,
        "threads": 1,
        "auto_means": "bfloat16",
        "machine": "m",
        "seeds": [0, 1, 2],
        "rows": [row("tight", s, c) for s, c in enumerate((0.001, 0.002, 0.0))]
        + [row("noisy", s, c) for s, c in enumerate((0.05, -0.05, 0.0))]
        + [row("worse", s, c) for s, c in enumerate((0.030, 0.031, 0.032))],
    }
    text = "\n".join(report.precision_section(data))
    assert "met for tight; missed for worse; not settled for noisy" in text
    assert "more seeds are needed" in text


def test_warm_start_compares_each_search_with_random_search_of_its_corpus_and_seed(tmp_path):
    args = argparse.Namespace(seeds=[0, 1], trials=24, steps=20, startup_trials=3)

    def rec(corpus, kind, seed, curve):
        return {
            "corpus": corpus,
            "kind": kind,
            "seed": seed,
            "total_steps": curve[-1][0],
            "final_best": curve[-1][1],
            "curve": curve,
        }

    runs = [
        rec("wikipedia", "random", 0, [(20, 30.0), (480, 20.0)]),
        rec("wikipedia", "cold", 0, [(40, 21.0), (120, 20.1)]),
        rec("wikipedia", "warm", 0, [(20, 20.15), (100, 19.0)]),
        rec("fineweb", "random", 0, [(480, 25.0)]),
        rec("fineweb", "cold", 0, [(300, 26.0)]),
    ]
    summary = warm_start.summarise(runs, args)
    by = {(s["corpus"], s["kind"]): s for s in summary["per_search"]}
    assert (
        by[("wikipedia", "warm")]["steps_to_within_1pct"] == 20
        and by[("wikipedia", "cold")]["steps_to_within_1pct"] == 120
    )
    assert by[("fineweb", "cold")]["fraction_of_random_steps"] is None  # never within 1% of 25.0
    # the medians compare paired searches only: fineweb's cold search has no warm one yet
    assert summary["median_fraction_warm"] == 20 / 480 and summary["median_fraction_cold"] == 120 / 480
    assert summary["paired"] == ["wikipedia seed 0"] and "fineweb-warm-seed0" in summary["missing"]
    summary["time"] = "now"
    text = "\n".join(report.warm_start_section(summary))
    assert "warm 4% over 1 searches, cold 25% over 1" in text and "met" in text and "Not run yet" in text


def test_the_real_packed_search_runs_both_arms_and_writes_its_ratios_split_and_ceiling(tmp_path):
    """`benchmarks.packed_search --search` at the smallest sizes: two real searches (Ray, Optuna, MLflow) on a tiny
    model made for the run, the step ceiling, and the run's fields; RESULTS.md's section renders them. No timing is
    judged."""
    out = tmp_path / "real.json"
    argv = [
        "--search",
        "--model",
        "tiny:16x1",
        "--data",
        "builtin:python-docs",
        "--trials",
        "2",
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--batch",
        "4",
        "--seq-len",
        "32",
        "--train-samples",
        "16",
        "--val-samples",
        "8",
        "--pack",
        "2",
        "--ceiling-reps",
        "1",
        "--note",
        "a test",
        "--out",
        str(out),
    ]
    assert packed_search.main(argv) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["model"] == "tiny:16x1" and run["same_trials"] and run["note"] == "a test"
    assert {r["arm"] for r in run["rows"]} == {"0.5", "packed"} and run["reference_arm"] == "0.5"
    for row in run["rows"]:
        assert row["trials"] == row["trials_ok"] == 2 and row["total_steps"] == 4 and row["search_s"] > 0
        assert set(row["time_split"]["seconds"]) == {*TIME_SPLIT, "other"}
        assert row["time_split"]["seconds"]["seconds_steps"] > 0
    packed = next(r for r in run["rows"] if r["arm"] == "packed")
    assert packed["trials_at_once"] == 2 and packed["pack"] == 2
    assert run["step_ceiling"]["k"] == 2 and run["step_ceiling"]["speedup"] > 0
    assert run["packing_efficiency"] == run["search_speedup"] / run["step_ceiling"]["speedup"]
    assert abs(run["best_ppl_rel_diff"]) < 1e-3  # the same trials, packed or not: rounding apart
    # a second run of the same settings replaces this one; another setting is kept beside it
    real_search.write_run(out, {**run, "note": "again"})
    real_search.write_run(out, {**run, "steps": 3})
    assert [(r["steps"], r["note"]) for r in json.loads(out.read_text())["runs"]] == [(2, "again"), (3, "a test")]
    (tmp_path / "packed_search_real.json").write_text(out.read_text())
    text = "\n".join(report_packing.real_search_section(tmp_path))
    assert "## the real search, packed against unpacked" in text and "packing_efficiency" in text
    assert "| packed, 2 at once over one LM | " in text and f"| 2 at a time, {os.cpu_count() / 2:g} CPU each | " in text
    assert "(target >= 0.6:" in text
    # docs/packing.md's generated table of where the time went, written between its markers, the rest untouched
    page = tmp_path / "packing.md"
    page.write_text("before\n<!-- t: generated -->\nold\n<!-- /t -->\nafter\n")
    report.replace_block(page, "t", report_packing.time_split_block(tmp_path, steps=2))
    written = page.read_text()
    assert (
        written.startswith("before\n<!-- t: generated -->\n`python -m benchmarks.packed_search")
        and "old" not in written
    )
    assert "| waiting for a place | " in written and written.endswith("<!-- /t -->\nafter\n")


def compile_row(case, compile_s, loss_diff=1e-7):
    first = {
        "first_train_s": 0,
        "first_eval_s": 0,
        "graphs": 2,
        "loss_rel_diff": loss_diff,
        "grad_rel_diff": 1e-7,
        "eval_nll_rel_diff": 1e-7,
    }
    return {
        "case": case,
        "model": "m",
        "k": 8,
        "batch": 8,
        "seq": 32,
        "dynamic": "auto",
        "eager_train_s": 0.1,
        "compiled_train_s": 0.05,
        "eager_eval_s": 0.2,
        "compiled_eval_s": 0.1,
        "cold": first,
        "warm": first,
        "compile_train_s_cold": 10 * compile_s,
        "compile_eval_s_cold": 5 * compile_s,
        "break_even_steps_cold": None,
        "compile_train_s_warm": compile_s,
        "compile_eval_s_warm": compile_s / 2,
        "break_even_steps_warm": compile_s / 0.05,
    }


def test_compile_pays_only_where_a_trial_recovers_its_compiles_and_stays_exact():
    data = {
        "time": "t",
        "device": "cpu",
        "device_name": "2 CPUs",
        "threads": 1,
        "torch": "2",
        "mode": "default",
        "reps": 3,
        "eval_batch": 32,
        "machine": "m",
        "recompile_limit": 8,
        "rows": [compile_row("slow", 10.0)],
    }
    text = "\n".join(report.compile_section(data))
    # a trial of 96 steps and 16 evaluation passes: (10 + 5 + 96 x 0.05 + 16 x 0.1) / (96 x 0.1 + 16 x 0.2) = x1.67
    assert "Does not pay within a search's trial of 96 steps" in text and "takes x1.67 the eager time" in text
    assert "no `train.compile` key" in text
    data["rows"] = [compile_row("cheap", 0.1), compile_row("inexact", 0.1, loss_diff=1e-3)]
    text = "\n".join(report.compile_section(data))
    assert "Exact: 1 of 2 settings" in text and "Pays for itself within a trial of 96 steps" in text
    assert "cheap (dynamic auto)" in text and "inexact (dynamic" not in text
    # with the cache filled (1 + 0.5 s of compiles) x0.62; where the shape is new (10 + 5 s) x1.67: not adopted
    data["rows"] = [compile_row("shape", 1.0)]
    text = "\n".join(report.compile_section(data))
    assert "shape (dynamic auto) pays only where inductor's cache already holds its shape" in text
    assert "x0.62 the eager time then, but x1.67 with the cache empty" in text and "no `train.compile` key" in text


def test_lanes_other_than_a_divisor_of_the_cpus_on_a_cpu_search_are_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """`--lanes` splits the CPUs among packs side by side: anything else ends with exit 2 before any work starts."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the run's work folder would go
    for argv, why in [
        (["--search", "--cpus", "2", "--lanes", "3"], "--lanes 3"),
        (["--cpus", "2", "--lanes", "2"], "--lanes 2"),  # the engine arms run no lanes
        (["--search", "--device", "cuda", "--lanes", "2"], "--lanes 2"),
    ]:
        try:
            packed_search.main(argv)
        except SystemExit as exc:
            assert exc.code == 2, argv
        else:
            raise AssertionError(f"{argv} was accepted")
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.endswith(
            f"error: {why}: expected 1, or with --search on CPUs a divisor of --cpus ("
            f"{2 if '--cpus' in argv else os.cpu_count()})"
        ), err
    assert list(tmp_path.iterdir()) == []  # nothing written
