"""A search's folder: a name no other search can take (claimed by an atomic mkdir, so two searches started
in the same second get two folders), a lock held while a search runs in it (a second search or --resume in
the same folder is refused, not mixed in), and the space it started with (--resume of a changed search
file is refused instead of continuing the old space under the new name)."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import time
from pathlib import Path

from ...errors import ConfigError
from ...fsutil import atomic_write_text, damaged, read_json_object
from ...space import SearchFile
from ...tracking import LEGACY_STATE_FILE, STATE_FILE, flatten
from .internals import snapshot_trial_checkpoints

LOCK_FILE = ".embinject.lock"
SPACE_FILE = "search_space.txt"  # JSON inside, but not *.json: Ray's restore copies those back over newer ones
PACK_FILE = "search_pack.txt"  # JSON inside, not *.json, as SPACE_FILE
IDENTITY_TUNE_KEYS = ("metric", "mode", "objectives", "search_alg", "multivariate", "seed", "num_samples", "scheduler")


def new_search_dir(root: Path, name: str) -> Path:
    """`<name>-<timestamp>`, or `<name>-<timestamp>-<n>` when that is taken: mkdir either creates it or fails."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        candidate = root / (f"{name}-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise ConfigError(f"tune.storage_path: cannot claim a new folder for '{name}' under {root}")


def _order(path: Path, name: str) -> tuple:
    match = re.fullmatch(re.escape(name) + r"-(\d{8}-\d{6})(?:-(\d+))?", path.name)
    return (match.group(1), int(match.group(2) or 1)) if match else ("", 0)


def newest_search_dir(root: Path, name: str) -> Path:
    """The folder --resume continues: the newest search of that name that got as far as starting."""
    found = [
        p
        for p in root.glob(f"{name}-*")
        if _order(p, name)[0] and ((p / STATE_FILE).is_file() or (p / LEGACY_STATE_FILE).is_file())
    ]
    if not found:
        raise ConfigError(f"--resume: no earlier search named '{name}' under {root}")
    return max(found, key=lambda p: _order(p, name))


@contextlib.contextmanager
def search_lock(exp_dir: Path):
    """Held while a search runs in `exp_dir`; the operating system releases it when the process ends, however."""
    with open(exp_dir / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise ConfigError(
                f"{exp_dir}: another embinject search (pid {holder}) is running in this folder; wait for it "
                "to end (or stop it) before --resume"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield


@contextlib.contextmanager
def removed_unless_started(exp_dir: Path):
    """A folder this search claimed is removed again if the search fails before it starts (the MLflow store or
    the disk failing at its first record): nothing is left behind that --resume would pick up."""
    try:
        yield
    except BaseException:
        if not (exp_dir / STATE_FILE).is_file():
            shutil.rmtree(exp_dir, ignore_errors=True)
        raise


def space_identity(search: SearchFile) -> dict:
    """What decides which trials a search runs and how they are judged."""
    tune = dataclasses.asdict(search.tune)
    identity = {
        "search": {p.key: p.describe() for p in search.params},
        "base": search.base,
        "tune": {k: tune[k] for k in IDENTITY_TUNE_KEYS},
    }
    if tune["warm_start"]:  # recorded only when set, so searches recorded before warm starts existed still resume
        identity["tune"]["warm_start"] = tune["warm_start"]
    return identity


def read_space_file(file: Path, key: str, hint: str) -> dict:
    """A search's recorded space (what `record_space` wrote), or a ConfigError naming `key` and the file."""
    identity = read_json_object(file, key, hint)
    for section in ("search", "base", "tune"):
        if not isinstance(identity.get(section), dict):
            raise damaged(key, file, f"no {section} section", hint)
    if not all(isinstance(v, str) for v in identity["search"].values()):
        raise damaged(key, file, "its search section is not the parameter descriptions embinject writes", hint)
    return identity


def record_space(exp_dir: Path, search: SearchFile) -> None:
    atomic_write_text(exp_dir / SPACE_FILE, json.dumps(space_identity(search), indent=1, sort_keys=True, default=str))


def check_same_space(exp_dir: Path, search: SearchFile) -> None:
    """--resume continues the space the search started with, or refuses, naming the first key that differs."""
    file = exp_dir / SPACE_FILE
    if not file.is_file():
        return  # started before the space was recorded
    before = flatten(
        read_space_file(
            file,
            "--resume",
            "restore it (it records the space the search started with, "
            "which --resume compares with this search file), or start a new "
            "search without --resume",
        )
    )
    now = flatten(json.loads(json.dumps(space_identity(search), default=str)))
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        key = changed[0]
        raise ConfigError(
            f"--resume: {search.source} is not the search {exp_dir.name} started with ({key}: "
            f"{before.get(key, 'absent')!r} then, {now.get(key, 'absent')!r} now; {len(changed)} keys differ); "
            f"resume with the file it started with ({exp_dir / 'search.yaml'}) and the same --set values, "
            "or start a new search without --resume"
        )


def record_pack(exp_dir: Path, search: SearchFile, size: int) -> None:
    """How `tune.pack` resolved when Ray's trials were created: --resume must give them the same trainable."""
    atomic_write_text(exp_dir / PACK_FILE, json.dumps({"setting": search.tune.pack, "size": size}))


def recorded_pack_size(exp_dir: Path) -> int | None:
    """The pack size recorded when the search's trials were created (None: not recorded; `check_same_pack` names a
    damaged record)."""
    try:
        size = json.loads((exp_dir / PACK_FILE).read_text()).get("size")
    except (OSError, ValueError, AttributeError):
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 1 else None


def _pack_said(setting, size: int) -> str:
    return f"{setting!r}, " + ("every trial alone" if size == 1 else f"packs of {size}")


def check_same_pack(exp_dir: Path, search: SearchFile, size: int) -> None:
    """--resume of a search whose Ray state holds trials: Ray restores them only with the trainable they were created
    with (packed or alone, in packs of that size), so a `tune.pack` that now resolves to another pack size is refused
    in one line, then and now, before anything runs (Ray would stop with a traceback after the search had started)."""
    file = exp_dir / PACK_FILE
    if not file.is_file():
        return  # started before the pack was recorded
    hint = (
        "restore it (it says how tune.pack resolved when the search started, which --resume needs), or start a "
        "new search without --resume"
    )
    before = read_json_object(file, "--resume", hint)
    setting, then = before.get("setting"), before.get("size")
    if setting is None or not isinstance(then, int) or isinstance(then, bool) or then < 1:
        raise damaged("--resume", file, "no tune.pack setting and pack size", hint)
    if then != size:
        raise ConfigError(
            f"--resume: tune.pack resolves otherwise than when search {exp_dir.name} started "
            f"({_pack_said(setting, then)} then, {_pack_said(search.tune.pack, size)} now) and Ray "
            f"restores its trials only as they started: resume with --set tune.pack="
            f"{'off' if then == 1 else then}, or start a new search without --resume"
        )


def _checkpoint_index(path: Path) -> int:
    match = re.fullmatch(r"checkpoint_(\d+)", path.name)
    return int(match.group(1)) if match else -1


def snapshot_checkpoints(exp_dir: Path) -> dict[str, str]:
    """The checkpoint that Ray's newest experiment snapshot names for each trial that has one: trial folder name ->
    checkpoint folder name. Empty where there is no snapshot or Ray cannot read it."""
    snapshots = sorted(exp_dir.glob("experiment_state-*.json"))  # the newest by name, as Ray picks it
    return snapshot_trial_checkpoints(snapshots[-1]) if snapshots else {}


def restore_superseded_checkpoints(exp_dir: Path) -> list[str]:
    """Before --resume hands the folder to Ray: a trial whose snapshot names a checkpoint that is gone, while a newer
    one is on disk, gets that newer one under the old name. Ray (keeping one checkpoint per trial) deletes the
    previous checkpoint as soon as the next one registers but names the new one in its experiment snapshot only at a
    later step; a kill in between leaves a snapshot that Ray refuses to restore the trial from. Returns one line per
    trial repaired."""
    lines = []
    for trial_dir_name, checkpoint_name in snapshot_checkpoints(exp_dir).items():
        trial_dir = exp_dir / trial_dir_name
        named = trial_dir / checkpoint_name
        newer = [p for p in trial_dir.glob("checkpoint_*") if _checkpoint_index(p) > _checkpoint_index(named)]
        if named.exists() or not newer:
            continue
        newest = max(newer, key=_checkpoint_index)
        partial = trial_dir / f".{named.name}.partial"  # a copy cut short (a kill, a full disk) is never taken for one
        shutil.rmtree(partial, ignore_errors=True)
        try:
            shutil.copytree(newest, partial)
            os.replace(partial, named)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        trial_id = trial_dir_name.removeprefix("trial_")
        lines.append(
            f"resume: trial {trial_id} continues from {newest.name} (Ray's snapshot still named "
            f"{named.name}, which it had deleted when {newest.name} was saved)"
        )
    return lines
