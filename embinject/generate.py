"""`embinject generate` (also `python -m embinject.generate`): text through a trained adapter, one
continuation per prompt. The command only; decoding is `embinject.train.generation`."""

from __future__ import annotations

import json
import sys

from .arguments import before_imports, generate_parser

if __name__ == "__main__":  # `--help` and a mistyped option are answered before the imports below load torch (seconds)
    before_imports("generate")

from .adapters import load_adapter
from .errors import ConfigError, run_command


def main(argv: list[str] | None = None) -> int:
    """`embinject generate --adapter REF --prompt TEXT ...`: continuations, one per prompt."""
    args = generate_parser().parse_args(argv)

    def body() -> int:
        if args.context is not None and len(args.context) != len(args.prompt):
            raise ConfigError(
                f"--context: give one per --prompt ({len(args.prompt)} prompts, {len(args.context)} contexts)"
            )
        if args.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens: expected a positive number, got {args.max_new_tokens}")
        if args.temperature < 0 or args.top_k < 0:
            raise ConfigError("--temperature and --top-k: expected numbers >= 0")
        adapter = load_adapter(args.adapter, args.tracking_uri, args.device)
        mix = None
        if args.mix:
            mix = load_adapter(args.mix, args.tracking_uri, adapter.device, "--mix", lm=adapter.lm)
        texts = adapter.generate(
            args.prompt,
            args.context,
            mix=mix,
            alpha=args.alpha,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            seed=args.seed,
        )
        if args.json:
            print(json.dumps([{"prompt": p, "generated_text": t} for p, t in zip(args.prompt, texts)], indent=1))
        else:
            for p, t in zip(args.prompt, texts):
                print(f"{p}{t}" if len(args.prompt) == 1 else f"--- {p}\n{p}{t}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
