"""Train one adapter on a frozen LM: `python -m embinject.train CONFIG.yaml [--set k=v ...]`.

The command only: arguments, the checks before any work, printing. The loop is `embinject.train.train`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..config import keys_help
from ..config_files import load_config
from ..errors import prog, run_command
from ..fsutil import check_writable
from ..models import cache_root
from .checkpoint import write_outputs
from .loop import Diverged, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("train"), description=__doc__.splitlines()[0], epilog=keys_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML config (defaults are used for missing keys)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=3e-4 (repeatable)")
    parser.add_argument("--output-dir", default="runs/train", help="where result.json and adapter/ go")
    args = parser.parse_args(argv)
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
        summary = {k: result[k] for k in ("method", "dtype", "baseline_perplexity", "val_perplexity", "trainable_params",
                                          "steps", "train_seconds")}
        print(json.dumps(summary))
        print(f"wrote {output_dir / 'result.json'} and {output_dir / 'adapter'}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
