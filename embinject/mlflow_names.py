"""Names MLflow refuses, checked when the config is read, before anything runs (MLflow would refuse them only when the
search is sending its records, the registered model's only at its very end).

The rules are MLflow 3's, replicated here because the config layer does not import MLflow; tests/test_config.py compares
each with MLflow's own validator on a list of names, so an MLflow whose rule changes fails that test.
"""

from __future__ import annotations

import posixpath

MAX_EXPERIMENT_NAME_LENGTH = 500  # mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH


def experiment_name_problem(name: str) -> str | None:
    """Why MLflow refuses `name` as an experiment name, or None. Mirrors
    mlflow.utils.validation._validate_experiment_name."""
    if name.strip() == "":  # MLflow 3.18 refuses blank names too (3.17 took " ")
        return "MLflow refuses an empty experiment name"
    if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        return f"MLflow refuses experiment names longer than {MAX_EXPERIMENT_NAME_LENGTH} characters, got {len(name)}"
    return None


def registered_model_name_problem(name: str) -> str | None:
    """Why MLflow's registry refuses `name`, or None. Mirrors mlflow.utils.validation._validate_model_name (and the
    path_not_unique it calls)."""
    if name.strip() == "":
        return "MLflow refuses an empty registered model name"
    if "/" in name or ":" in name:
        fixed = name.replace("/", "-").replace(":", "-")
        return f"MLflow refuses '/' and ':' in a registered model name, got {name!r} (try {fixed!r})"
    norm = posixpath.normpath(name)
    if norm != name or norm == "." or norm.startswith("..") or norm.startswith("/"):
        return (
            "MLflow refuses a registered model name that reads as a path leading elsewhere "
            f"('.' or a leading '..'), got {name!r}"
        )
    return None


MLFLOW_NAME_RULES = {"experiment": experiment_name_problem, "registered model": registered_model_name_problem}
