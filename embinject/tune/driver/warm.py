"""Warm starts (`tune.warm_start`): a search that starts from earlier ones instead of from nothing.

Each earlier search (a search folder, `runs:/PARENT_RUN_ID`, or an experiment's finished searches) is read
back as its setup and its finished trials. Where the setup is the same (the training config outside the
searched keys, the metric and the step budget), its trials go to Optuna as completed trials: TPE starts
from them and none is trained again. Where it differs (another corpus, model or budget), its best
configurations are evaluated first, and its trials inform TPE as a prior once this search's frozen-LM
baseline is known: each value is rescaled by the ratio of the two baselines, which keeps the earlier
ranking and puts it on this search's scale. Values outside this search's space are dropped, and one line
says how many. A trial trained with another value of a key this search fixes is of another setup and is left
out; a search named twice counts once; a source with no usable trial is said to inform nothing.

A search folder is read through one reader per file (its state, its recorded space, summary.csv; see .warm_folder),
each of which refuses a damaged file in one line naming it: a source is read whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ...config import config_from_dict
from ...config_files import set_dotted
from ...errors import ConfigError
from ...space import Param, SearchFile, optuna_value
from ...tracking import default_tracking_uri, earlier_searches, flatten, readable
from .warm_folder import count_trials, from_folder

FIRST_BEST = 3  # an earlier search of another setup: its best configurations this search evaluates first
# Keys of the training config that change where or how fast a trial runs, not what it learns.
RUNTIME_KEYS = ("train.device", "train.threads", "train.progress", "train.gradient_checkpointing", "train.eval_audit")
SETUP_TUNE_KEYS = ("tune.metric", "tune.mode", "tune.scheduler.max_t")


@dataclass
class WarmTrial:
    params: dict  # Optuna's encoding, only the values inside this search's space
    value: float | None  # what Optuna was told (the last reported metric); None for a failed trial
    intermediate: dict  # step -> validation value
    baseline: float | None  # the earlier search's frozen-LM perplexity
    ok: bool  # finished or stopped by ASHA, not failed
    finished: bool = False  # trained to its end: its value is its kept adapter's, on every validation window


@dataclass
class WarmSource:
    label: str
    parent_run_id: str | None
    differs: list[str]  # setup keys that differ from this search ([] = the same setup)
    trials: list[WarmTrial]
    best: list[dict]  # the earlier best configurations, as points_to_evaluate
    dropped: int  # values outside this search's space
    read: int = 0  # trials its search ran, all of them (cut and left-out ones too)
    diverged: int = 0
    failed: int = 0
    cut: int = 0  # ended mid-training by its search's end: no value
    no_value: int = 0  # finished without reporting a value
    left_out: int = 0  # trained with another value of a key this search fixes: another setup
    left_out_why: str = ""  # e.g. "adapter.embedding_model=lm-mean, where this search fixes fourier"

    @property
    def same(self) -> bool:
        return not self.differs

    @property
    def informing(self) -> list[WarmTrial]:
        """The trials TPE learns from: a failed or diverged trial has no value; another setup's needs its baseline."""
        return [t for t in self.trials if t.ok and (self.same or (t.baseline and t.value is not None))]

    def uninformative(self) -> str:
        """Why the trials outside `informing` inform nothing, e.g. "1 diverged, 2 left out"."""
        parts = [
            (self.diverged, "diverged"),
            (self.failed, "failed"),
            (self.cut, "cut by its search's end"),
            (self.no_value, "without a value"),
            (self.left_out, "left out"),
            (sum(t.ok for t in self.trials) - len(self.informing), "without a frozen-LM baseline"),
        ]
        return ", ".join(f"{n} {what}" for n, what in parts if n)


@dataclass
class WarmStart:
    sources: list[WarmSource] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)  # entries that name a search already read

    @property
    def completed(self) -> list[WarmTrial]:
        return [t for s in self.sources if s.same for t in s.trials]

    @property
    def prior(self) -> list[WarmTrial]:
        return [t for s in self.sources if not s.same for t in s.informing]

    def better_earlier(self, best: float | None, mode: str) -> str | None:
        """A line when a finished trial of a same-setup earlier search beats this search's best (it was not trained
        again, so it is not this search's champion)."""
        sign = 1 if mode == "min" else -1
        earlier = [(sign * t.value, s.label) for s in self.sources if s.same for t in s.trials if t.finished]
        if not earlier or best is None or min(earlier)[0] >= sign * best:
            return None
        value, label = min(earlier)
        return (
            f"warm start: {label} keeps a better adapter (val_perplexity {sign * value:.3f}) than this search's best "
            f"({best:.3f}); it stays with that search, and this search's champion is its own best"
        )

    def first_points(self, given: list[dict]) -> list[dict]:
        """The search's own points_to_evaluate, then each other-setup source's best configurations not already there."""
        points = [dict(p) for p in given]
        for s in self.sources:
            for p in s.best if not s.same else []:
                if p not in points:
                    points.append(p)
        return points

    def lines(self) -> list[str]:
        out = list(self.repeated)
        for s in self.sources:
            n, used = s.read, len(s.informing)
            more = f" and {len(s.differs) - 1} more" if len(s.differs) > 1 else ""
            setup = "the same setup" if s.same else f"another setup ({s.differs[0]}{more} differ)"
            trials = f"its {count_trials(n)}" if used == n else f"{used} of its {count_trials(n)}"
            other = n - used
            rest = f"; the other {other} inform{'s' * (other == 1)} nothing ({s.uninformative()})" if other else ""
            start = f"warm start from {s.label}: {setup}; "
            if not used:
                out.append(
                    start + "it informs nothing: no trial of it has a value TPE can use "
                    f"({s.uninformative() or 'it ran none'})"
                )
            elif s.same:
                out.append(start + f"{trials} go to Optuna as completed trials (not trained again){rest}")
            else:
                out.append(
                    start + f"its best {len(s.best)} configurations go first, {trials} inform TPE once this "
                    f"search's baseline is known{rest}"
                )
            if s.left_out:
                are = "is" if s.left_out == 1 else "are"
                out.append(
                    f"warm start: {count_trials(s.left_out)} of {s.label} {are} left out: trained with "
                    f"{s.left_out_why} (another setup)"
                )
        dropped = sum(s.dropped for s in self.sources)
        if dropped:
            out.append(
                f"warm start: {dropped} earlier values are outside this search's space "
                "(a parameter no longer searched, or a value outside its new bounds) and were dropped"
            )
        return out

    def tags(self, given: list) -> dict:
        """For the parent MLflow run: what the search started from."""
        if not self.sources:
            return {}
        runs = [s.parent_run_id for s in self.sources if s.parent_run_id]
        return {
            "embinject.warm_start": json.dumps(given, default=str)[:5000],
            "embinject.warm_start_runs": ",".join(runs)[:5000],
        }


def _typed(text: str):
    """A value as MLflow and summary.csv keep it (a string) back as the config value it was."""
    if text == "None":
        return None
    try:
        return json.loads(text)
    except ValueError:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text


def _setup(base: dict, tune: dict, ignored: set) -> dict:
    """What decides whether two searches' trials can be compared, as readable strings."""
    flat = {
        f"base.{k}": readable(v)
        for k, v in flatten(dataclasses.asdict(config_from_dict(base))).items()
        if k not in ignored and k not in RUNTIME_KEYS
    }
    flat.update({k: readable(tune.get(k)) for k in SETUP_TUNE_KEYS})
    return flat


def _unflatten(flat: dict, prefix: str) -> dict:
    out: dict = {}
    for key, text in flat.items():
        if key.startswith(prefix):
            set_dotted(out, key[len(prefix) :], _typed(text) if isinstance(text, str) else text)
    return out


def _differences(earlier: dict, search: SearchFile) -> list[str]:
    ignored = set(search.searched) | set(earlier["searched"])
    now = _setup(search.base, flatten({"tune": dataclasses.asdict(search.tune)}), ignored)
    try:
        before = _setup(
            _unflatten(earlier["setup"], "base."), {k: earlier["setup"].get(k) for k in SETUP_TUNE_KEYS}, ignored
        )
    except ConfigError as exc:  # a search of an older embinject whose config no longer loads
        return [f"its training config ({str(exc)[:120]})"]
    return sorted(k.removeprefix("base.") for k in now.keys() | before.keys() if now.get(k) != before.get(k))


def _inside(param: Param, text: str):
    """(config value, Optuna value) of an earlier trial's value for `param`, or None where it lies outside the space."""
    if param.kind == "choice":
        return next(((arg, optuna_value(arg)) for arg in param.args if text in (str(arg), readable(arg))), None)
    try:
        number = float(text)
    except ValueError:
        return None
    if not param.args[0] <= number <= param.args[1]:
        return None
    if param.kind in ("uniform", "loguniform"):
        return number, number
    if not number.is_integer() or (param.kind == "qrandint" and (int(number) - param.args[0]) % param.args[2]):
        return None
    return int(number), int(number)


def _read(key: str, item, tracking_uri: str) -> list[dict]:
    if isinstance(item, dict):
        uri = item.get("tracking_uri") or tracking_uri
        run = item.get("run")
        return earlier_searches(
            key, run.removeprefix("runs:/").split("/")[0] if run else None, item.get("experiment"), uri
        )
    if item.startswith("runs:/"):
        return earlier_searches(key, item.removeprefix("runs:/").split("/")[0], None, tracking_uri)
    if item.startswith("experiment:"):
        return earlier_searches(key, None, item.removeprefix("experiment:"), tracking_uri)
    return [from_folder(key, Path(item))]


def _fixed_now(search: SearchFile, earlier: dict) -> dict:
    """This search's value of each key the earlier search searched and this one fixes (a fixed parameter, or the
    training config's value): an earlier trial with another value there was trained in another setup."""
    values = flatten(dataclasses.asdict(search.config))
    values.update({p.key: p.args[0] for p in search.params if p.kind == "fixed"})
    return {k: values[k] for k in earlier["searched"] if k in values and k not in search.searched}


def _same_value(text: str, value) -> bool:
    return text in (str(value), readable(value)) or _typed(text) == value


def _left_out_why(then: dict, fixed: dict) -> str:
    key = sorted(then)[0]
    more = f" (and {len(then) - 1} more keys)" if len(then) > 1 else ""
    return f"{key}={'/'.join(sorted(then[key]))}, where this search fixes {key}={readable(fixed[key])}{more}"


def _source(key: str, earlier: dict, search: SearchFile) -> WarmSource:
    for k in ("tune.metric", "tune.mode"):
        then, now = earlier["setup"].get(k), readable(getattr(search.tune, k.split(".")[1]))
        if then is not None and then != now:
            raise ConfigError(
                f"{key}: {earlier['label']} searched with {k}={then}, this search with {now}; warm-start "
                "only from searches of the same objective"
            )
    params = {p.key: p for p in search.params if p.kind != "fixed"}
    fixed = _fixed_now(search, earlier)
    dropped, kept, considered, trials, ranked = 0, 0, 0, [], []
    cut, diverged, failed, no_value, left_out, then = 0, 0, 0, 0, 0, {}
    for t in earlier["trials"]:
        if t["status"] in ("cut", "not_started", "lost_at_kill"):
            cut += 1
            continue  # ended by its search's end (or a kill), mid-training or before it ran: no value Optuna was told
        other = {k: t["params"][k] for k in fixed if k in t["params"] and not _same_value(t["params"][k], fixed[k])}
        if other:  # trained in another setup than this search's, whatever its other values
            left_out += 1
            for k, text in other.items():
                then.setdefault(k, set()).add(text)
            continue
        considered += 1
        encoded, values = {}, {}
        for k, text in t["params"].items():
            inside = _inside(params[k], text) if k in params else None
            if inside is None:
                dropped += k in earlier["searched"] and k not in fixed
                continue
            values[k], encoded[k] = inside
        kept += bool(encoded)
        diverged += t["status"] == "diverged"
        failed += t["status"] == "error"
        ok = t["status"] in ("ok", "stopped")
        value = (t["best"] if t["status"] == "ok" else t["history"][-1][1] if t["history"] else None) if ok else None
        if ok and value is None:
            no_value += 1
            continue
        trials.append(WarmTrial(encoded, value, dict(t["history"]), t["baseline"], ok, t["status"] == "ok"))
        if t["status"] == "ok" and values:
            ranked.append((value, values))
    if considered and not kept:
        raise ConfigError(
            f"{key}: no trial of {earlier['label']} has a value inside this search's space (searched then: "
            f"{', '.join(earlier['searched']) or 'nothing'}); nothing to start from"
        )
    ranked.sort(key=lambda r: r[0], reverse=search.tune.mode == "max")
    return WarmSource(
        earlier["label"],
        earlier.get("parent_run_id"),
        _differences(earlier, search),
        trials,
        [v for _, v in ranked[:FIRST_BEST]],
        dropped,
        read=len(earlier["trials"]),
        diverged=diverged,
        failed=failed,
        cut=cut,
        no_value=no_value,
        left_out=left_out,
        left_out_why=_left_out_why(then, fixed) if then else "",
    )


def read_warm_start(search: SearchFile) -> WarmStart:
    """The earlier searches `tune.warm_start` names, read before any work; one ConfigError naming the entry otherwise.
    A search named twice (the same folder by another path, or its folder and its parent run) is read once."""
    if not search.tune.warm_start:
        return WarmStart()
    if search.tune.objectives or search.tune.metric != "val_perplexity":
        raise ConfigError(
            "tune.warm_start: warm starts are for searches on val_perplexity alone (no tune.objectives), "
            f"not tune.metric={search.tune.metric}" + (" with objectives" if search.tune.objectives else "")
        )
    uri = search.mlflow.tracking_uri or default_tracking_uri(Path(search.tune.storage_path))
    warm, read_by = WarmStart(), {}
    for i, item in enumerate(search.tune.warm_start):
        key = f"tune.warm_start[{i}]"
        for earlier in _read(key, item, uri):
            names = {n for n in (earlier.get("folder"), earlier.get("parent_run_id")) if n}
            first = next((read_by[n] for n in sorted(names) if n in read_by), None)
            if first:
                warm.repeated.append(
                    f"warm start: {key} names {earlier['label']}, the same search as {first}; its trials count once"
                )
                continue
            read_by.update(dict.fromkeys(names, key))
            warm.sources.append(_source(key, earlier, search))
    return warm
