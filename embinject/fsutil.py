"""Files that are never half-written, paths resolved once, and write checks before any work.

Every file embinject writes for later use (cache entries, checkpoints, results, summaries) goes
through a temporary file in the same directory and `os.replace`, so a kill mid-write leaves either
the old file or the new one, never a truncated one that a later run would trust.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable

from .errors import ConfigError, first_line, warn


WRITE_CHECK_BYTES = 1 << 20  # a place that cannot take 1 MiB now cannot take a search's files either


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path` whole (or is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def staged_dir(target: str | Path):
    """A new directory beside `target` to fill; on success it replaces `target` whole, otherwise it is removed,
    so `target` is never half-written."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        yield staged
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


# Scratch directories of processes that can be killed without running their cleanup (trials stopped by Ray, pack
# hosts, a command killed mid-download): named after their host and process, and removed by any later embinject
# process on that host once that process is gone, so a long search on a shared machine does not fill its /tmp.
SCRATCH_PREFIX = "embinject-"


def _scratch_pattern() -> re.Pattern:
    return re.compile(rf"{SCRATCH_PREFIX}[a-z]+-{re.escape(socket.gethostname())}-(\d+)-")


def scratch_dir(kind: str) -> Path:
    """A new private directory in the system's temporary directory, for this process only; those that killed
    processes of this host left are swept first (see sweep_scratch)."""
    sweep_scratch()
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{kind}-{socket.gethostname()}-{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_scratch() -> int:
    """Removes the scratch directories that processes of this host left when they were killed; returns how many."""
    root, pattern, removed = Path(tempfile.gettempdir()), _scratch_pattern(), 0
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        match = pattern.match(name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(root / name, ignore_errors=True)
            removed += not (root / name).exists()
    return removed


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_save_tensors(tensors: dict, path: str | Path) -> Path:
    # lazy: torch (seconds) only where tensors are written, not to read a config
    from safetensors.torch import save_file

    return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp))


def damaged(key: str, file: Path, what: str, hint: str) -> ConfigError:
    """The one line for a file embinject wrote that is no longer what it wrote (cut, emptied, overwritten)."""
    return ConfigError(f"{key}: {file} is damaged ({what}); {hint}")


def read_json_object(file: Path, key: str, hint: str) -> dict:
    """A JSON object embinject wrote; a ConfigError naming `key` and the file when it is empty, cut or overwritten."""
    data = Path(file).read_bytes()
    if not data.strip():
        raise damaged(key, file, "empty", hint)
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise damaged(key, file, "not UTF-8 text", hint) from None
    except json.JSONDecodeError as exc:
        raise damaged(
            key, file, f"not the JSON embinject writes: cut or overwritten at line {exc.lineno} ({exc.msg})", hint
        ) from None
    if not isinstance(value, dict):
        raise damaged(key, file, f"a JSON {type(value).__name__}, not the object embinject writes", hint)
    return value


def discard_corrupt(path: Path, reason: str) -> None:
    """One warning line naming a corrupt cache entry, which is then deleted so it is rebuilt."""
    warn(f"cache entry {path} is corrupt ({reason}); deleting and rebuilding it")
    if Path(path).is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


# Entries larger than this are computed in each process instead of kept on disk. Token states are the large ones:
# 62-72 MB per 1,024 windows of 64 tokens in half precision; reading them back was x270-x930 faster than computing
# them (benchmarks.token_cache), so anything that fits is kept.
MAX_CACHED_BYTES = 4 * 2**30


def cached_tensors(file: Path, make: Callable[[], dict], problem: Callable[[dict], str | None], what: str) -> dict:
    """The tensors kept in the cache entry `file`, or `make()`'s, kept there for the next caller. An entry that cannot
    be read or that `problem` finds wrong is named, deleted and rebuilt; one over MAX_CACHED_BYTES is not kept (one
    line names `what`)."""
    from safetensors.torch import load_file  # lazy, as in atomic_save_tensors

    if file.is_file():
        try:
            kept = load_file(str(file))
            wrong = problem(kept)
            if wrong is None:
                return kept
            raise ValueError(wrong)
        except Exception as exc:  # truncated or foreign file: rebuild it
            discard_corrupt(file, first_line(exc))
    made = {k: v.contiguous() for k, v in make().items()}
    size = sum(v.numel() * v.element_size() for v in made.values())
    if size > MAX_CACHED_BYTES:
        warn(
            f"{what} of {size / 2**30:.1f} GiB not kept in {file.parent} (over {MAX_CACHED_BYTES / 2**30:.0f} GiB): "
            "every process computes them"
        )
        return made
    atomic_save_tensors(made, file)
    return made


def check_writable(path: str | Path, key: str) -> None:
    """Raise ConfigError naming `key` unless `path` (a directory, perhaps not there yet) can be created
    and written. Probes with a temporary file in the nearest existing directory, so permissions, read-only
    file systems and files in the way are all found, and nothing is left behind."""
    target = Path(path)
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == target else f"{probe} is a file, not a directory"
        raise ConfigError(f"{key}: cannot write to {target} ({where}); choose a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".embinject-write-check-")
        try:
            os.write(fd, bytes(WRITE_CHECK_BYTES))  # an empty file is created even on a full disk; data is not
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        hint = (
            "free some space there or choose another directory"
            if exc.errno == errno.ENOSPC
            else "choose a writable directory"
        )
        raise ConfigError(f"{key}: cannot write to {target} ({exc.strerror or exc}); {hint}") from None


def resolve_local(value: str) -> str:
    """A user-given location made absolute against the current directory when it is a local path;
    builtin/bundled names and hub ids (`org/name` that does not exist here) stay as they are (encoder names are kept
    from it by the caller: embinject.config_files.resolve_location)."""
    if not isinstance(value, str) or value.startswith(("builtin:", "bundled:")) or "://" in value:
        return value
    expanded = os.path.expanduser(value)
    if value.startswith((".", "/", "~")) or os.path.exists(expanded):
        return os.path.abspath(expanded)
    return value


def resolve_tracking_uri(uri: str | None) -> str | None:
    """`sqlite:///relative.db`, `file:relative` and plain paths become absolute; servers stay as they are."""
    if not uri:
        return uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(os.path.expanduser(uri[len("sqlite:///") :]))
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return Path(os.path.abspath(uri[len("file:") :])).as_uri()
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return os.path.abspath(os.path.expanduser(uri))
    return uri
