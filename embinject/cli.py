"""The `embinject` command (`embinject train|tune|generate|evaluate|report|export ...`) and what the
command-line entry points share: one error line and exit 2 for bad input, SIGTERM handled like Ctrl-C
with its own exit code. Each subcommand is also `python -m embinject.<name>`."""
from __future__ import annotations

import importlib
import signal
import sys
from typing import Callable

COMMANDS = {
    "train": "train one adapter on a frozen LM",
    "tune": "search adapters and their hyperparameters with Ray Tune, Optuna and ASHA",
    "generate": "generate text through an adapter (directory, runs:/... or models:/...)",
    "evaluate": "perplexity of an adapter on any data, scored as in training (JSON out)",
    "report": "a search's trials best-first, with plots (Markdown + PNG)",
    "export": "an adapter in PEFT's layout or as an MLflow model",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (stop, write nothing half-done) but exiting 143 instead of 130."""


def _raise_terminated(signum, frame):
    raise Terminated()


def handle_sigterm() -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def run_command(body: Callable[[], int]) -> int:
    """Run a command's body: a ConfigError is one `error:` line and exit 2, an interrupt exits 130/143."""
    from .config import ConfigError

    handle_sigterm()
    try:
        return body()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("interrupted; nothing written", file=sys.stderr)
        return interrupt_exit_code(exc)


def prog(name: str) -> str:
    """How the user called the command, for usage lines: `embinject NAME` or `python -m embinject.NAME`."""
    return f"embinject {name}" if _via_embinject else f"python -m embinject.{name}"


_via_embinject = False


def main(argv: list[str] | None = None) -> int:
    global _via_embinject
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: embinject {" + ",".join(COMMANDS) + "} ...\n\n" + "\n".join(
        f"  {name:<9} {text}" for name, text in COMMANDS.items()) + "\n\n`embinject COMMAND --help` lists its options."
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}' (expected one of: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    _via_embinject = True
    return importlib.import_module(f"embinject.{name}").main(rest)


if __name__ == "__main__":
    sys.exit(main())
