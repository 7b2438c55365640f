"""`embinject evaluate` (also `python -m embinject.evaluate`): an adapter's perplexity and its frozen model's
on any data, scored on exactly the tokens training scores, as JSON. The command only; the scoring is
`embinject.adapters.LoadedAdapter.evaluate`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .adapters import load_adapter
from .errors import prog, run_command
from .fsutil import atomic_write_text, check_writable


def main(argv: list[str] | None = None) -> int:
    """`embinject evaluate --adapter REF [--set data.path=...]`: perplexity as JSON."""
    parser = argparse.ArgumentParser(
        prog=prog("evaluate"), description="Perplexity of an adapter and of its frozen model on the validation windows "
        "of the adapter's own data or of other data, scored on exactly the tokens training scores.")
    parser.add_argument("--adapter", required=True, help="adapter directory, runs:/RUN_ID/PATH or models:/NAME@ALIAS")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="data.* keys (e.g. data.path=FILE, data.val_samples=512), train.eval_batch_size, train.dtype, "
                             "train.device")
    parser.add_argument("--output", default=None, help="also write the JSON to this file")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for runs:/ and models:/")
    args = parser.parse_args(argv)

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
