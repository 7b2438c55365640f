"""Ctrl-C and SIGTERM during a search: the first stops it the way Ray Tune's own Ctrl-C does (state kept
for --resume), a second stops at once."""

from __future__ import annotations

import os
import signal
import sys
import threading


class GracefulStop:
    """SIGINT (Ctrl-C) and SIGTERM during `Tuner.fit`: the first asks Ray Tune to stop the way its own
    Ctrl-C handling does (SIGUSR1: running trials stop, the experiment state is saved for --resume); a
    second one stops at once. Remembers which signal came, for the exit code."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _ignore(self, signum, frame):  # until Ray Tune installs its own SIGUSR1 handler
        pass

    def _handle(self, signum, frame):
        first = self.signum is None
        self.signum = self.signum or signum
        if first and signal.getsignal(signal.SIGUSR1) is not self._ignore:
            print(
                "\nstopping: the running trials are saved for --resume (press Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread (run_search called from a thread)
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours forwards to Ray's SIGUSR1 handler instead
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        self._old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._ignore)
        return self

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)
