"""Every command's arguments, in a module that imports nothing heavy: `--help` and a mistyped option are answered,
and a search's first line is printed, before a command's module loads torch, Ray or MLflow (seconds).

The `embinject` dispatcher and each `python -m embinject.<name>` call `before_imports` first; the command's
`main(argv)` then parses the same arguments with the same parser."""

from __future__ import annotations

import argparse
import sys
import time

from .config import keys_help
from .errors import prog

TUNE_DESCRIPTION = (
    "Search adapters with Ray Tune: `python -m embinject.tune SEARCH.yaml [--set k=v] [--address A] "
    "[--resume] [--dry-run]`."
)
ADAPTER_REF = "adapter directory, runs:/RUN_ID/PATH or models:/NAME@ALIAS"
_first_line_at: float | None = None  # time.perf_counter() when this process printed its command's first line


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("train"),
        description="Train one adapter on a frozen LM: `python -m embinject.train CONFIG.yaml [--set k=v ...]`.",
        epilog=keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="YAML config (defaults are used for missing keys)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=3e-4 (repeatable)",
    )
    parser.add_argument("--output-dir", default="runs/train", help="where result.json and adapter/ go")
    return parser


def tune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("tune"),
        description=TUNE_DESCRIPTION,
        epilog="A search file is a training config (see `embinject train --help` for its keys) "
        "plus search:, tune: and mlflow: sections; see docs/search-file.md.",
    )
    parser.add_argument("search_file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any key of the search file, e.g. --set tune.num_samples=4",
    )
    parser.add_argument("--address", default=None, help="an existing Ray cluster: auto, HOST:PORT or ray://HOST:PORT")
    parser.add_argument("--resume", action="store_true", help="continue the newest interrupted search of this name")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; do not start Ray")
    registry = parser.add_mutually_exclusive_group()
    registry.add_argument(
        "--promote",
        action="store_true",
        help="the best adapter takes the registered model's alias "
        "champion even where it does not beat (or cannot be compared with) the version holding it",
    )
    registry.add_argument(
        "--no-register",
        action="store_true",
        help="register nothing (as mlflow.register_as: null), e.g. for a smoke run",
    )
    parser.add_argument("-v", "--verbose", action="count", default=1, help="-v shows trial logs")
    return parser


def generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog("generate"), description="Generate text through a trained adapter.")
    parser.add_argument("--adapter", required=True, help=ADAPTER_REF)
    parser.add_argument("--prompt", action="append", required=True, help="text to continue (repeatable)")
    parser.add_argument(
        "--context",
        action="append",
        default=None,
        help="injection adapters: the text the sentence encoder sees, one per --prompt (default: what "
        "it saw in training for the prompt, per adapter.embed_source)",
    )
    parser.add_argument("--mix", default=None, help="a second prompt or prefix adapter to blend with (prefix mixing)")
    parser.add_argument(
        "--alpha", type=float, default=1.0, help="with --mix: alpha * adapter + (1 - alpha) * mix (1.0)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-k", type=int, default=0, help="sample only among the k most likely tokens (0 = all)")
    parser.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store for runs:/ and models:/ (default: MLFLOW_TRACKING_URI, else runs/tune/mlflow.db)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of {prompt, generated_text}")
    return parser


def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("evaluate"),
        description="Perplexity of an adapter and of its frozen model on the validation windows "
        "of the adapter's own data or of other data, scored on exactly the tokens training scores.",
    )
    parser.add_argument("--adapter", required=True, help=ADAPTER_REF)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="data.* keys (e.g. data.path=FILE, data.val_samples=512), train.eval_batch_size, train.dtype, "
        "train.device",
    )
    parser.add_argument("--output", default=None, help="also write the JSON to this file")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for runs:/ and models:/")
    return parser


def report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("report"),
        description="Report a search: trials best-first with their parameters, and validation curves (Markdown + PNG).",
    )
    parser.add_argument(
        "search", help="a search directory (runs/tune/NAME-TIMESTAMP) or the search's MLflow parent run id"
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store for a run id (default: MLFLOW_TRACKING_URI, else runs/tune/mlflow.db)",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where report.md and its plots go (default: the search directory, or report-RUN_ID/)",
    )
    return parser


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("export"),
        description="Write an adapter in PEFT's layout (prompt, deep "
        "prefix, LoRA) or as an MLflow pyfunc model (every method).",
    )
    parser.add_argument("--adapter", required=True, help=ADAPTER_REF)
    parser.add_argument("--format", choices=("peft", "mlflow"), default="peft")
    parser.add_argument("--output-dir", required=True, help="where the export goes (replaced if it exists)")
    parser.add_argument(
        "--mix", default=None, help="mlflow format: a second adapter for prefix mixing (predict's alpha)"
    )
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for runs:/ and models:/")
    return parser


PARSERS = {
    "train": train_parser,
    "tune": tune_parser,
    "generate": generate_parser,
    "evaluate": evaluate_parser,
    "report": report_parser,
    "export": export_parser,
}


def first_line(name: str, args: argparse.Namespace) -> str | None:
    """What a command says at once, before seconds of imports and warm-up: only a search has such a wait."""
    if name != "tune" or args.dry_run:
        return None  # a dry run's plan is its whole output
    doing = "resuming the newest search of" if args.resume else "starting a search from"
    return f"{doing} {args.search_file}: loading torch, Ray Tune and MLflow"


def before_imports(name: str, argv: list[str] | None = None) -> None:
    """Parse `argv` as command `name` will: `--help` and bad arguments end the process here (exit 0 and 2), before the
    command's module is imported; otherwise print the command's first line, if it has one."""
    args = PARSERS[name]().parse_args(sys.argv[1:] if argv is None else argv)
    line = first_line(name, args)
    if line:
        global _first_line_at
        print(line, flush=True)
        _first_line_at = time.perf_counter()


def seconds_since_first_line() -> float | None:
    """None where no first line was printed (a command's `main` called in another program's process)."""
    return None if _first_line_at is None else time.perf_counter() - _first_line_at
