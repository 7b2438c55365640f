"""The `embinject` command (`embinject train|tune|generate|evaluate|report|export ...`): a dispatcher to
the command modules, each of which is also `python -m embinject.<name>`."""

from __future__ import annotations

import importlib
import sys

from .arguments import before_imports
from .errors import called_via_embinject

# name -> (command module, one line of help); a command's module is imported only once its arguments are parsed
# (`arguments`), so `embinject --help` and `embinject COMMAND --help` do not load torch, Ray or MLflow.
COMMANDS = {
    "train": ("embinject.train.__main__", "train one adapter on a frozen LM"),
    "tune": ("embinject.tune.__main__", "search adapters and their hyperparameters with Ray Tune, Optuna and ASHA"),
    "generate": ("embinject.generate", "generate text through an adapter (directory, runs:/... or models:/...)"),
    "evaluate": ("embinject.evaluate", "perplexity of an adapter on any data, scored as in training (JSON out)"),
    "report": ("embinject.report", "a search's trials best-first, with plots (Markdown + PNG)"),
    "export": ("embinject.export", "an adapter in PEFT's layout or as an MLflow model"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: embinject {"
        + ",".join(COMMANDS)
        + "} ...\n\n"
        + "\n".join(f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items())
        + "\n\n`embinject COMMAND --help` lists its options."
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}' (expected one of: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    called_via_embinject()
    before_imports(name, rest)
    return importlib.import_module(COMMANDS[name][0]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
