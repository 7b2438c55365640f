"""`embinject report SEARCH_DIR|PARENT_RUN_ID [--tracking-uri URI] [--output-dir DIR]` (also `python -m
embinject.report`): a search's trials best-first, with plots. The command only; reading a search directory and
rendering are `embinject.search_report`, reading MLflow is `embinject.tracking`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .arguments import before_imports, report_parser

if __name__ == "__main__":  # `--help` and a mistyped option are answered before the imports below load torch (seconds)
    before_imports("report")

from .errors import ConfigError, run_command
from .fsutil import atomic_write_text, check_writable
from .search_report import from_search_dir, render
from .tracking import open_store, search_from_mlflow, tracking_uri_default


def main(argv: list[str] | None = None) -> int:
    args = report_parser().parse_args(argv)

    def body() -> int:
        local = Path(os.path.abspath(os.path.expanduser(args.search)))
        if local.is_dir():
            data = from_search_dir(local)
            default_out = local
        elif "/" in args.search or os.sep in args.search:
            raise ConfigError(f"{args.search}: no such search directory")
        else:
            data = search_from_mlflow(
                args.search, open_store(args.tracking_uri or tracking_uri_default(), "--tracking-uri")
            )
            default_out = Path.cwd() / f"report-{args.search}"
        out = Path(os.path.abspath(os.path.expanduser(args.output_dir))) if args.output_dir else default_out
        check_writable(out, "--output-dir")
        out.mkdir(parents=True, exist_ok=True)
        report = render(data, out)
        atomic_write_text(out / "report.md", report.markdown)
        # a person at a terminal reads aligned columns; a pipe or a file gets the Markdown that report.md holds
        print(report.plain if sys.stdout.isatty() else report.markdown)
        print(f"wrote {out / 'report.md'}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
