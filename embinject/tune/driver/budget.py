"""What a search's step budget lets ASHA do, read from the search file before anything runs (`--dry-run`): its
rungs, the steps at which trials report, and the mistakes that leave a rung with nothing to judge (a smoke run's
`--set train.max_steps=4` under a scheduler made for 40 steps: ASHA then stops nothing, and nothing says so)."""

from __future__ import annotations

import math

from ...space import SearchFile


def asha_rungs(max_t: int, grace_period: int, reduction_factor: float) -> list[float]:
    """ASHA's rungs, smallest first, as Ray Tune's one-bracket ASHA places them (ray 2.60, `_Bracket`):
    grace_period * reduction_factor**k for k below int(log(max_t / grace_period) / log(reduction_factor) + 1)."""
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in range(count)]


def _steps(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _rungs(values: list) -> str:
    return f"rung{'s' * (len(values) > 1)} at step{'s' * (len(values) > 1)} {_steps(values)}"


def budget_warnings(search: SearchFile) -> list[str]:
    """The rungs ASHA cannot stop a trial at, each reason in one line. ASHA judges a trial at a rung on a report the
    trial sends (after each evaluation, every `train.eval_every` steps, and at its last step), at the highest rung
    that report reached; a report at or past `max_t`, or a trial's last one, stops nothing (the trial ends there)."""
    s = search.tune.scheduler
    max_steps = search.config.train.max_steps  # the load set it to at most max_t
    if s.type != "asha" or not max_steps:
        return []
    rungs = asha_rungs(s.max_t, s.grace_period, s.reduction_factor)
    cutting = [r for r in rungs if r < s.max_t]  # at max_t ASHA stops a trial without asking the rung
    if not cutting:
        return []
    if max_steps <= s.grace_period:
        said = "is below" if max_steps < s.grace_period else "equals"
        return [
            f"train.max_steps ({max_steps}) {said} ASHA's grace period (tune.scheduler.grace_period: "
            f"{s.grace_period}): every trial ends before ASHA judges it, so ASHA stops none and each runs all "
            f"{max_steps} steps; raise train.max_steps, lower tune.scheduler.grace_period and max_t to fit it, "
            "or set tune.scheduler.type: none"
        ]
    lines = []
    beyond = [r for r in cutting if r >= max_steps]
    if beyond:
        lines.append(
            f"ASHA's {_rungs(beyond)} {'are' if len(beyond) > 1 else 'is'} never reached: trials end at "
            f"train.max_steps ({max_steps}), below tune.scheduler.max_t ({s.max_t}); raise train.max_steps "
            f"to {s.max_t}, or lower tune.scheduler.max_t to {max_steps}"
        )
    every = search.config.train.eval_every
    if every is None:
        return lines  # once per epoch: how many steps that is depends on the windows the data gives
    reports = range(every, max_steps, every)  # before the last step; the last one stops nothing
    ends = [*rungs[1:], s.max_t]
    unjudged = [
        r
        for r, end in zip(rungs, ends)
        if r < max_steps and r in cutting and not any(r <= step < min(end, s.max_t) for step in reports)
    ]
    if unjudged:
        gap = max(1, math.floor(s.grace_period * (s.reduction_factor - 1)))
        lines.append(
            f"ASHA's {_rungs(unjudged)} never judge{'s' * (len(unjudged) == 1)} a trial: trials report "
            f"every {every} steps (train.eval_every) and ASHA judges a trial at the highest rung its report "
            f"reached, so no report lands on {'them' if len(unjudged) > 1 else 'it'} before a trial's last "
            f"step; set train.eval_every to {min(gap, s.grace_period)} or less"
        )
    return lines


def objectives_line(search: SearchFile) -> str:
    """What the search optimises: one metric, or several (a Pareto front), ASHA and the champion following the first."""
    t = search.tune
    if not t.objectives:
        return f"objective: {t.metric} ({t.mode})"
    goals = ", ".join(f"{o['metric']} ({o['mode']})" for o in t.objectives)
    return (
        f"objectives: multi-objective over {goals}: Optuna keeps a Pareto front (pareto_front.csv); ASHA and the "
        f"champion follow the first, {t.objectives[0]['metric']}"
    )
