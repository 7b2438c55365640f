"""`embinject evaluate` (also `python -m embinject.evaluate`): an adapter's perplexity and its frozen model's
on any data, scored on exactly the tokens training scores, as JSON. The command only; the scoring is
`embinject.adapters.LoadedAdapter.evaluate`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .arguments import before_imports, evaluate_parser

if __name__ == "__main__":  # `--help` and a mistyped option are answered before the imports below load torch (seconds)
    before_imports("evaluate")

from .adapters import load_adapter
from .errors import run_command
from .fsutil import atomic_write_text, check_writable


def main(argv: list[str] | None = None) -> int:
    """`embinject evaluate --adapter REF [--set data.path=...]`: perplexity as JSON."""
    args = evaluate_parser().parse_args(argv)

    def body() -> int:
        output = Path(os.path.abspath(os.path.expanduser(args.output))) if args.output else None
        if output:
            check_writable(output.parent, "--output")
        adapter = load_adapter(args.adapter, args.tracking_uri)
        result = adapter.evaluate(args.overrides)
        text = json.dumps(result, indent=2)
        if output:
            atomic_write_text(output, text + "\n")
        print(text)
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
