"""`embinject export` (also `python -m embinject.export`): an adapter in PEFT's layout (prompt, deep prefix,
LoRA; written by `embinject.methods.peft_layout`) or as an MLflow pyfunc model (every method; `embinject.serving`).
The command only."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from .arguments import before_imports, export_parser

if __name__ == "__main__":  # `--help` and a mistyped option are answered before the imports below load torch (seconds)
    before_imports("export")

from .adapters import LoadedAdapter, adapter_directory
from .errors import ConfigError, run_command
from .fsutil import check_writable
from .methods import ADAPTER_CONFIG, mix_adapters
from .methods.model_card import recorded_result
from .methods.peft_layout import write_peft
from .serving import save_pyfunc


def main(argv: list[str] | None = None) -> int:
    """`embinject export --adapter REF --format peft|mlflow --output-dir DIR`."""
    args = export_parser().parse_args(argv)

    def body() -> int:
        output = Path(os.path.abspath(os.path.expanduser(args.output_dir)))
        check_writable(output.parent, "--output-dir")
        if output.exists() and (
            not output.is_dir()
            or (
                any(output.iterdir())
                and not ((output / "adapter_config.json").is_file() or (output / "MLmodel").is_file())
            )
        ):
            raise ConfigError(f"--output-dir: {output} exists and is not an earlier export; choose another directory")
        if args.mix and args.format != "mlflow":
            raise ConfigError("--mix: only for --format mlflow")
        with contextlib.ExitStack() as stack:  # a downloaded adapter (runs:/, models:/) is removed at the end
            directory = stack.enter_context(adapter_directory(args.adapter, args.tracking_uri))
            adapter = LoadedAdapter(directory, source=args.adapter)  # a corrupt adapter is named now, not at load time
            stack.callback(adapter.close)
            if args.format == "mlflow":
                mix = stack.enter_context(adapter_directory(args.mix, args.tracking_uri, "--mix")) if args.mix else None
                if mix:
                    mix_adapters(adapter.method, LoadedAdapter(mix, lm=adapter.lm).method, 0.5)  # same method and shape
                save_pyfunc(directory, output, mix)
                print(f"wrote an MLflow model to {output}; load it with mlflow.pyfunc.load_model({str(output)!r})")
                return 0
            write_peft(adapter.method, output, result=recorded_result(adapter.meta, str(directory / ADAPTER_CONFIG)))
        print(
            f"wrote a PEFT adapter to {output}; load it with "
            f"peft.AutoPeftModelForCausalLM.from_pretrained({str(output)!r})"
        )
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
