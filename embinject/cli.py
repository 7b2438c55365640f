"""What the command-line entry points share: SIGTERM handled like Ctrl-C, with its own exit code."""
from __future__ import annotations

import signal


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (stop, write nothing half-done) but exiting 143 instead of 130."""


def _raise_terminated(signum, frame):
    raise Terminated()


def handle_sigterm() -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
