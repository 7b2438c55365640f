"""Search files: the base training config + `search:` space + `tune:` and `mlflow:` settings.

A `search:` entry maps a dotted training-config key to a fixed value or one distribution:

    train.lr:                {loguniform: [1.0e-4, 1.0e-2]}
    adapter.prefix_len:      {randint: [1, 8]}          # inclusive bounds
    adapter.mlp_width:       {choice: [64, 128, 256], when: {method: injection}}

`when` makes a parameter conditional on values sampled before it (or fixed in the base config);
the space runs through Optuna's define-by-run interface, so only valid combinations are sampled.
Everything is validated here, before Ray starts.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import Config, check_value, config_from_dict, is_section
from .fields import settings_from_dict
from .search_settings import OBJECTIVE_METRICS, MlflowSettings, TuneSettings
from .config_files import PATH_KEYS, parse_override, read_yaml, resolve_location, resolve_paths, set_dotted
from .errors import ConfigError
from .fsutil import resolve_tracking_uri

DISTRIBUTIONS = {"choice": None, "uniform": 2, "loguniform": 2, "randint": 2, "qrandint": 3}
TOP_LEVEL = {"search", "tune", "mlflow"}


@dataclass
class Param:
    key: str
    kind: str  # fixed | choice | uniform | loguniform | randint | qrandint
    args: list
    when: dict[str, list] = field(default_factory=dict)

    def describe(self) -> str:
        """As a person writes it: `loguniform [0.0001, 0.01] when method in [injection]`."""
        text = f"{self.kind} {json.dumps(self.args if self.kind != 'fixed' else self.args[0], default=str)}"
        return text + "".join(f" when {k} in {json.dumps(v, default=str)}" for k, v in self.when.items())

    def active(self, chosen: dict, base: dict) -> bool:
        return all(_lookup(chosen, base, k) in allowed for k, allowed in self.when.items())

    def suggest(self, trial) -> Any:
        if self.kind == "choice":
            encoded = [optuna_value(v) for v in self.args]
            picked = trial.suggest_categorical(self.key, encoded)
            return self.args[encoded.index(picked)]
        if self.kind in ("uniform", "loguniform"):
            return trial.suggest_float(self.key, self.args[0], self.args[1], log=self.kind == "loguniform")
        if self.kind == "randint":
            return trial.suggest_int(self.key, self.args[0], self.args[1])
        return trial.suggest_int(self.key, self.args[0], self.args[1], step=self.args[2])

    def optuna_distribution(self):
        import optuna.distributions as d  # lazy: a dry run and train never need Optuna

        if self.kind == "choice":
            return d.CategoricalDistribution([optuna_value(v) for v in self.args])
        if self.kind in ("uniform", "loguniform"):
            return d.FloatDistribution(self.args[0], self.args[1], log=self.kind == "loguniform")
        step = self.args[2] if self.kind == "qrandint" else 1
        return d.IntDistribution(self.args[0], self.args[1], step=step)


def optuna_value(value: Any) -> Any:
    """Optuna's categories must be scalars: list values (e.g. target_modules) go in as JSON."""
    return json.dumps(value) if isinstance(value, list) else value


def _lookup(chosen: dict, base: dict, key: str) -> Any:
    if key in chosen:
        return chosen[key]
    node: Any = base
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _number(value: Any) -> Any:
    try:  # YAML reads "1e-3" (no dot) as a string
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _parse_param(key: str, spec: Any) -> Param:
    """check_value validates the key's existence and each candidate value's type and range."""
    where = f"search.{key}"
    try:
        if not isinstance(spec, dict):
            return Param(key, "fixed", [check_value(key, spec)])
        spec = dict(spec)
        when_raw = spec.pop("when", {})
        kinds = [k for k in spec if k in DISTRIBUTIONS]
        unknown = [k for k in spec if k not in DISTRIBUTIONS]
        if unknown or len(kinds) != 1:
            raise ConfigError(
                f"{where}: expected one of {', '.join(DISTRIBUTIONS)} (plus optional 'when'), "
                f"got {', '.join(map(str, spec)) or 'nothing'}"
            )
        kind = kinds[0]
        args = spec[kind]
        if not isinstance(args, list) or (DISTRIBUTIONS[kind] and len(args) != DISTRIBUTIONS[kind]) or not args:
            n = DISTRIBUTIONS[kind]
            raise ConfigError(f"{where}.{kind}: expected a list of {n or 'one or more'} values, got {args!r}")
        if kind == "choice":
            args = [check_value(key, v) for v in args]
        else:
            args = [_number(a) for a in args]
            if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
                raise ConfigError(f"{where}.{kind}: expected numbers, got {args!r}")
            if not all(math.isfinite(a) for a in args):
                raise ConfigError(f"{where}.{kind}: expected finite numbers, got {args!r}")
            integer = kind in ("randint", "qrandint")
            if integer:
                if not all(float(a).is_integer() for a in args):
                    raise ConfigError(f"{where}.{kind}: expected integer bounds, got {args!r}")
                args = [int(a) for a in args]
            low, high = args[0], args[1]
            if integer:
                if low > high:
                    raise ConfigError(f"{where}.{kind}: low ({low}) must not exceed high ({high})")
                if kind == "qrandint" and (args[2] <= 0 or (high - low) % args[2]):
                    raise ConfigError(
                        f"{where}.qrandint: step {args[2]} must be > 0 and divide high - low ({high - low})"
                    )
            elif low >= high:
                raise ConfigError(f"{where}.{kind}: low ({low}) must be smaller than high ({high})")
            if kind == "loguniform" and low <= 0:
                raise ConfigError(f"{where}.loguniform: low must be > 0, got {low}")
            check_value(key, low)
            check_value(key, high)
        if not isinstance(when_raw, dict):
            raise ConfigError(f"{where}.when: expected a mapping of key: value(s), got {when_raw!r}")
        when = {}
        for wkey, allowed in when_raw.items():
            allowed = allowed if isinstance(allowed, list) else [allowed]
            try:
                when[wkey] = [check_value(wkey, v) for v in allowed]
            except ConfigError as exc:
                raise ConfigError(f"{where}.when.{exc}") from None
            if wkey == key:
                raise ConfigError(f"{where}.when: a parameter cannot depend on itself")
        return Param(key, kind, args, when)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith("search.") else f"search.{msg}") from None


def parse_space(raw: Any) -> list[Param]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise ConfigError(f"search: expected a mapping of dotted config keys to distributions, got {raw!r}")
    params: dict[str, Param] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, spec in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(spec, dict) and is_section(dotted):
                walk(spec, f"{dotted}.")  # nested form: `adapter: {mlp_width: {choice: ...}}`
            else:
                # The same key in dotted and nested form (a `--set search.a.b=...` over a file's `a.b:`): the later
                # one, the override, wins, in the first one's place; two would ask Optuna for one name twice.
                params[dotted] = _parse_param(dotted, spec)

    walk(raw, "")
    return list(params.values())


class DefineByRun:
    """The Optuna define-by-run function: conditional parameters are only suggested when active.
    A class (not a closure) so Ray can pickle it with the searcher's state for --resume."""

    def __init__(self, params: list[Param], base: dict):
        self.params, self.base = params, base

    def __call__(self, trial) -> dict:
        chosen: dict = {}
        fixed: dict = {}
        for p in self.params:
            if not p.active(chosen, self.base):
                continue
            if p.kind == "fixed":
                fixed[p.key] = chosen[p.key] = p.args[0]
            else:
                chosen[p.key] = p.suggest(trial)
                if isinstance(chosen[p.key], list):
                    fixed[p.key] = chosen[p.key]  # the returned dict overrides Optuna's JSON string
        return fixed


def apply_params(base: dict, params: dict) -> dict:
    raw = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(raw, key, value)
    return raw


def trial_config(base: dict, params: dict) -> Config:
    return config_from_dict(apply_params(base, params))


@dataclass
class SearchFile:
    path: Path | None  # None for a search given as a dict (`embinject.search({...})`)
    base: dict  # raw training config (validated as `config`)
    config: Config
    params: list[Param]
    tune: TuneSettings
    mlflow: MlflowSettings
    text: str

    @property
    def source(self) -> str:
        """What the search was read from, for messages and the parent run's tag."""
        return str(self.path) if self.path is not None else "a search spec given as a dict"

    def choices(self, key: str, default: set) -> set:
        """The values a fixed or choice parameter can take, or `default` when `key` is not one."""
        found = [set(p.args) for p in self.params if p.key == key and p.kind in ("choice", "fixed")]
        return found[-1] if found else default

    @property
    def searched(self) -> list[str]:
        """Keys that take sampled values (not fixed ones)."""
        return [p.key for p in self.params if p.kind != "fixed"]

    def describe(self) -> list[str]:
        lines = []
        for p in self.params:
            cond = "" if not p.when else "  when " + ", ".join(f"{k} in {v}" for k, v in p.when.items())
            lines.append(f"  {p.key}: {p.kind} {p.args if p.kind != 'fixed' else p.args[0]}{cond}")
        return lines


def _check_objectives(tune) -> None:
    """`tune.objectives`: at least two {metric, mode} entries, distinct known metrics; the first one becomes
    `tune.metric`/`tune.mode` (what ASHA stops on and what picks the champion)."""
    if not tune.objectives:
        return
    seen = []
    for i, item in enumerate(tune.objectives):
        key = f"tune.objectives[{i}]"
        if set(item) - {"metric", "mode"} or "metric" not in item:
            raise ConfigError(f"{key}: expected {{metric: NAME, mode: min|max}}, got {item!r}")
        if item["metric"] not in OBJECTIVE_METRICS:
            raise ConfigError(f"{key}.metric: expected one of {', '.join(OBJECTIVE_METRICS)}, got {item['metric']!r}")
        if item.setdefault("mode", "min") not in ("min", "max"):
            raise ConfigError(f"{key}.mode: expected min or max, got {item['mode']!r}")
        if item["metric"] in seen:
            raise ConfigError(f"{key}.metric: {item['metric']} is already an objective")
        seen.append(item["metric"])
    if len(seen) < 2:
        raise ConfigError(
            "tune.objectives: a multi-objective search needs at least two objectives (for one, use tune.metric)"
        )
    tune.metric, tune.mode = tune.objectives[0]["metric"], tune.objectives[0]["mode"]


def _plain(value: Any, where: str) -> Any:
    """A search spec given as a dict, as the plain data a search file holds (paths as text, tuples as lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ConfigError(
        f"{where}: {type(value).__name__} is not a value a search file holds (text, a number, a boolean, "
        "a list or a mapping)"
    )


def load_search_spec(spec: str | os.PathLike | dict, overrides: list[str] | dict | None = None) -> SearchFile:
    """A search from its file's path or from the same content as a dict (which is left unchanged). `overrides`:
    `--set` strings (`dotted.key=value`, the value read as YAML) or a dict of dotted keys to values."""
    if isinstance(spec, dict):
        raw = _plain(spec, "")
        path, text = None, yaml.safe_dump(raw, sort_keys=False)
    else:
        raw, path = read_yaml(spec), Path(os.path.abspath(spec))
        text = path.read_text(encoding="utf-8")
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or ())
    for key, value in items:
        set_dotted(raw, key, _plain(value, key))
    return _search(raw, path, text)


def load_search_file(path: str | Path, overrides: list[str] = ()) -> SearchFile:
    return load_search_spec(path, list(overrides))


def _search(raw: dict, path: Path | None, text: str) -> SearchFile:
    base = resolve_paths({k: v for k, v in raw.items() if k not in TOP_LEVEL})
    config = config_from_dict(base)
    params = parse_space(raw.get("search"))
    for p in params:  # searched local paths (e.g. encoder directories) resolve like the base config's
        if p.key in PATH_KEYS and p.kind in ("fixed", "choice"):
            p.args = [resolve_location(v) for v in p.args]
    tune = settings_from_dict(TuneSettings, raw.get("tune"), "tune")
    mlflow = settings_from_dict(MlflowSettings, raw.get("mlflow"), "mlflow")
    if "://" not in tune.storage_path:
        tune.storage_path = os.path.abspath(os.path.expanduser(tune.storage_path))
    mlflow.tracking_uri = resolve_tracking_uri(mlflow.tracking_uri)
    # earlier searches' folders and stores, resolved once against the directory the command runs in
    tune.warm_start = [
        os.path.abspath(os.path.expanduser(w))
        if isinstance(w, str) and not w.startswith(("runs:/", "experiment:"))
        else {**w, "tracking_uri": resolve_tracking_uri(w["tracking_uri"])}
        if isinstance(w, dict) and "tracking_uri" in w
        else w
        for w in tune.warm_start
    ]
    sched = tune.scheduler
    if sched.type == "asha":
        if sched.max_t is None and config.train.max_steps is None:
            raise ConfigError("tune.scheduler.max_t: ASHA needs a step budget; set it or train.max_steps")
        sched.max_t = sched.max_t or config.train.max_steps
        base.setdefault("train", {})["max_steps"] = config.train.max_steps = min(
            config.train.max_steps or sched.max_t, sched.max_t
        )
        if sched.grace_period > sched.max_t:
            raise ConfigError(f"tune.scheduler.grace_period: {sched.grace_period} exceeds max_t ({sched.max_t})")
    _check_objectives(tune)
    keys = {p.key for p in params}
    for i, point in enumerate(tune.points_to_evaluate):
        for key, value in point.items():
            if key not in keys:
                raise ConfigError(f"tune.points_to_evaluate[{i}].{key}: not a key of the search space")
            try:
                check_value(key, value)
            except ConfigError as exc:
                raise ConfigError(f"tune.points_to_evaluate[{i}].{exc}") from None
            if key in PATH_KEYS:
                point[key] = resolve_location(value)
    # Every fixed choice must make a valid training config on its own (catches e.g. context_tokens >= seq_len).
    for p in params:
        candidates = p.args if p.kind in ("fixed", "choice") else p.args[:2]
        for value in candidates:
            try:
                trial_config(base, {p.key: value})
            except ConfigError as exc:
                raise ConfigError(f"search.{p.key}: value {value!r} makes an invalid config ({exc})") from None
    if tune.resources.gpus > 1 and not float(tune.resources.gpus).is_integer():
        raise ConfigError(
            f"tune.resources.gpus: fractions are for sharing one GPU; above 1 use whole GPUs, got {tune.resources.gpus}"
        )
    return SearchFile(path, base, config, params, tune, mlflow, text)
