"""The injection study's run records, loaded per corpus, and each trained arm's learning rate with the budget it
was searched at."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from experiments.injection_context.arms import ARMS, HERE, design_of
from experiments.injection_context.arms import NO_SEARCH, budget_of, extra_corpus, lr_group, lr_status, searched_arm


AT_BUDGET = "lr_at_budget_"  # <runs>/lr_at_budget_<arm>.json: an arm's search under the rule (`run.py --lr-at-budget`)


def search_settings(search: dict) -> tuple[dict, dict]:
    """The config and tune sections a recorded search ran with: its kept YAML, or (a search copied by --lr-from, or
    from before the YAML was kept) what config.yaml and lr_search.yaml define."""
    raw = search.get("settings")
    if raw is None:
        raw = yaml.safe_load((HERE / "config.yaml").read_text())
        for section, values in yaml.safe_load((HERE / "lr_search.yaml").read_text()).items():
            raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) and section in raw else values
    return raw, raw.get("tune", {})


def lr_rows(corpus: dict) -> dict[str, dict]:
    """Every trained arm's learning rate, the budget it was trained and reported at, the budget its rate was searched
    at (and for which arm), and whether that is its own budget (`arms.lr_status`), from the records."""
    out = {}
    for arm, recs in corpus["arms"].items():
        if arm not in ARMS:
            continue
        rates = sorted({r["lr"] for r in recs})
        budget = budget_of(recs[0]["config"], extra_corpus(arm))
        at = corpus.get("lr_at_budget", {}).get(arm)
        group = lr_group(arm)
        search, source = (at, f"{AT_BUDGET}{arm}") if at and at["lr"] in rates else (corpus["lr"].get(group), group)
        if search is not None and search["lr"] not in rates:
            search = None  # the records trained at another rate than this search chose
        if search is None:  # no search of its own: which recorded search chose the rate it trained at, if one did
            source = next(
                (
                    g
                    for g, s in sorted(corpus["lr"].items(), key=lambda gs: gs[0] != design_of(arm))
                    if s["lr"] in rates
                ),
                None,
            )
            out[arm] = {
                "lr": rates[0] if len(rates) == 1 else rates,
                "budget": budget,
                "lr_status": NO_SEARCH,
                "lr_budget": None
                if source is None
                else {"search": source, "arm": searched_arm(source), **search_budget(corpus["lr"][source])},
            }
            continue
        lr_budget = search["budget"] if search is at else search_budget(search)
        search_arm = arm if search is at else searched_arm(group)
        out[arm] = {
            "lr": search["lr"],
            "budget": budget,
            "lr_status": lr_status(arm, budget, search_arm, lr_budget),
            "lr_budget": {"search": source, "arm": search_arm, **lr_budget},
            # a pruned search's choice over a trial stopped early was not made on the same windows or steps
            "lr_settled": search is at or not stopped_beaten(search),
        }
    return out


def search_budget(search: dict) -> dict:
    raw, tune = search_settings(search)
    return budget_of(raw, None, tune)


def load(out: Path) -> dict[str, dict]:
    """corpus -> {"arms": {arm: [records]}, "lr": {method: search record}}"""
    corpora = {}
    for folder in sorted((out / "runs").glob("*/")):
        arms: dict[str, list[dict]] = {}
        for f in sorted(folder.glob("*.json")):
            if f.name.startswith(("lr_search_", AT_BUDGET)):
                continue
            r = json.loads(f.read_text())
            arms.setdefault(r["arm"], []).append(r)
        lrs = {json.loads(f.read_text())["method"]: json.loads(f.read_text()) for f in folder.glob("lr_search_*.json")}
        for group, search in lrs.items():  # the settings the search ran with, where its YAML was kept beside it
            if (folder / f"lr_search_{group}.yaml").is_file():
                search["settings"] = yaml.safe_load((folder / f"lr_search_{group}.yaml").read_text())
        at_budget = {
            r["arm"]: r for r in (json.loads(f.read_text()) for f in sorted(folder.glob(f"{AT_BUDGET}*.json")))
        }
        checks = [json.loads(f.read_text()) for f in sorted((out / "lr_check" / folder.name).glob("*.json"))]
        diverged = [json.loads(f.read_text()) for f in sorted((folder / "diverged").glob("*.json"))]
        if "baseline" in arms:
            corpora[folder.name] = {
                "arms": arms,
                "lr": lrs,
                "lr_check": checks,
                "diverged": diverged,
                "lr_at_budget": at_budget,
            }
    return corpora


def pruned_steps(search: dict) -> set[int]:
    """The step counts at which a search's scheduler stopped trials (ASHA's rungs below its max_t)."""
    _, tune = search_settings(search)
    sched = tune.get("scheduler") or {}
    if sched.get("type", "none") in (None, "none"):
        return set()
    rungs, step = set(), sched.get("grace_period", 1)
    while step < sched.get("max_t", 0):
        rungs.add(step)
        step *= sched.get("reduction_factor", 2)
    return rungs


def stopped_beaten(search: dict) -> list[dict]:
    """The chosen rate's neighbours (the nearest rates tried below and above it) that the scheduler had stopped: the
    chosen rate beat them on the evaluation subset at an earlier step, not on the same windows and steps as its own
    score, so the choice between neighbouring rates was not made like for like."""
    stopped = pruned_steps(search)
    rates = sorted({t["lr"] for t in search["trials"]})
    if search["lr"] not in rates:
        return []
    at = rates.index(search["lr"])
    near = set(rates[max(0, at - 1) : at] + rates[at + 1 : at + 2])
    return [t for t in search["trials"] if t["lr"] in near and t["steps"] in stopped]
