"""Train one adapter on a frozen LM: `python -m embinject.train CONFIG.yaml [--set k=v ...]`.

The command only: arguments, the checks before any work, printing. The loop is `embinject.train.train`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..arguments import before_imports, train_parser

if __name__ == "__main__":  # `--help` and a mistyped option are answered before the imports below load torch (seconds)
    before_imports("train")

from ..config_files import load_config
from ..errors import run_command
from ..fsutil import check_writable
from ..models import cache_root
from .checkpoint import write_outputs
from .loop import Diverged, train


def main(argv: list[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    output_dir = Path(os.path.abspath(os.path.expanduser(args.output_dir)))

    def body() -> int:
        cfg = load_config(args.config, args.overrides, extra_sections=("search", "tune", "mlflow"))
        check_writable(output_dir, "--output-dir")  # before any work, not after the training
        check_writable(cache_root(), "EMBINJECT_CACHE")
        try:
            result, method = train(cfg)
        except Diverged as exc:
            print(f"error: {exc}; nothing written", file=sys.stderr)
            return 1
        try:
            write_outputs(output_dir, result, method)
        finally:
            method.release()  # a LoRA adapter must not stay in this process's shared LM
        summary = {
            k: result[k]
            for k in (
                "method",
                "dtype",
                "baseline_perplexity",
                "val_perplexity",
                "trainable_params",
                "steps",
                "train_seconds",
            )
        }
        print(json.dumps(summary))
        print(f"wrote {output_dir / 'result.json'} and {output_dir / 'adapter'}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
