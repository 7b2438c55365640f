"""One-line errors and exit codes: `ConfigError` for anything a user can fix, and how a command turns it
(and Ctrl-C or SIGTERM) into one `error:` line and exit code 2 (130/143 for an interrupt)."""

from __future__ import annotations

import errno
import signal
import sys
from typing import Callable


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the key or file."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (stop, write nothing half-done) but exiting 143 instead of 130."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def disk_full(exc: BaseException | None) -> OSError | None:
    """The `No space left on device` (or quota) error behind `exc`, however deep a library wrapped it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        if any(
            text in str(exc) for text in ("No space left on device", "database or disk is full")
        ):  # (SQLite's words)
            return OSError(errno.ENOSPC, "No space left on device")
        exc = exc.__cause__ or exc.__context__
    return None


def _raise_terminated(signum, frame):
    raise Terminated()


def handle_sigterm() -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def run_command(body: Callable[[], int]) -> int:
    """Run a command's body: a ConfigError is one `error:` line and exit 2, an interrupt exits 130/143."""
    handle_sigterm()
    try:
        return body()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("interrupted; nothing written", file=sys.stderr)
        return interrupt_exit_code(exc)


_via_embinject = False  # set by the `embinject` dispatcher, so usage lines name the command as it was typed


def called_via_embinject() -> None:
    global _via_embinject
    _via_embinject = True


def prog(name: str) -> str:
    """How the user called the command, for usage lines: `embinject NAME` or `python -m embinject.NAME`."""
    return f"embinject {name}" if _via_embinject else f"python -m embinject.{name}"
