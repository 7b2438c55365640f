"""Which registered version holds the alias `champion`: a new champion takes it from the version holding it only where
their results can be compared (the same frozen model, validation data, scored tokens and metric) and it beats it, or
by --promote; the one line that says what happened. No MLflow here: the versions' tags are plain dicts."""

from __future__ import annotations

import math

# What makes two champions' results comparable (records.champion_identity), as tags of each registered version, and
# how the line that keeps the alias names a difference.
COMPARED = {
    "model": "frozen model",
    "data_digest": "validation data",
    "scored_tokens": "choice of scored tokens",
    "metric": "metric",
    "mode": "direction (min or max)",
}


def _value(text: str | None) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def champion_move(name: str, holder, version: str, tags: dict, promote: bool) -> tuple[bool, str]:
    """Whether `version` of `name` (its tags: `tags`) takes the alias `champion` from `holder`, the version holding it,
    and the one line that says what happened. It does where its result beats the holder's on the same frozen model,
    validation data, scored tokens and metric (`COMPARED`), or with `promote`; otherwise the alias stays, and the line
    says why: the holder's result is as good or better (both numbers), or the two cannot be compared (the first
    difference, or what the holder does not record)."""
    old, new, was = holder.tags, tags, holder.version
    metric = new.get("metric", "val_perplexity")
    theirs, ours = _value(old.get("val_perplexity")), _value(new.get("val_perplexity"))
    said = lambda v: "none" if v is None else f"{v:.6g}"  # noqa: E731
    numbers = f"{metric} {said(ours)}, version {was}'s {said(theirs)}"
    lacking = [COMPARED.get(k, k) for k in [*COMPARED, "val_perplexity"] if k not in old]
    differ = [k for k in COMPARED if k in old and old[k] != new.get(k)]
    if lacking:
        why = f"version {was} does not record its {', '.join(lacking)}: registered by hand or by an older embinject"
    elif differ:
        key = differ[0]
        then, now = ((f"{t.get('data')} ({t.get(key)})" if key == "data_digest" else t.get(key)) for t in (old, new))
        why = f"the {COMPARED[key]} differs: {then} for version {was}, {now} for this search"
    elif ours is None or theirs is None:
        why = f"{metric} is not a number for {'this search' if ours is None else f'version {was}'}"
    else:
        why = None
    if promote:
        return True, f"the alias champion of {name} moved to version {version} by --promote ({numbers}" + (
            f"; not comparable: {why})" if why else ")"
        )
    kept = f"version {version} of {name} is registered without the alias champion, which stays on version {was}: "
    if why:
        return False, kept + f"the two cannot be compared ({why}); --promote moves it"
    if (ours < theirs) if new.get("mode", "min") == "min" else (ours > theirs):
        return True, f"the alias champion of {name} moved to version {version}, which beats version {was} ({numbers})"
    return False, kept + (
        f"this search's {metric} {ours:.6g} does not beat its {theirs:.6g} (the same frozen model, "
        "validation data and metric); --promote moves it anyway"
    )
