"""`embinject generate` (also `python -m embinject.generate`): text through a trained adapter, one
continuation per prompt. The command only; decoding is `embinject.train.generation`."""
from __future__ import annotations

import argparse
import json
import sys

from .adapters import load_adapter
from .errors import ConfigError, prog, run_command


def main(argv: list[str] | None = None) -> int:
    """`embinject generate --adapter REF --prompt TEXT ...`: continuations, one per prompt."""
    parser = argparse.ArgumentParser(prog=prog("generate"), description="Generate text through a trained adapter.")
    parser.add_argument("--adapter", required=True, help="adapter directory, runs:/RUN_ID/PATH or models:/NAME@ALIAS")
    parser.add_argument("--prompt", action="append", required=True, help="text to continue (repeatable)")
    parser.add_argument("--context", action="append", default=None,
                        help="injection adapters: the text the sentence encoder sees, one per --prompt (default: what "
                             "it saw in training for the prompt, per adapter.embed_source)")
    parser.add_argument("--mix", default=None, help="a second prompt or prefix adapter to blend with (prefix mixing)")
    parser.add_argument("--alpha", type=float, default=1.0, help="with --mix: alpha * adapter + (1 - alpha) * mix (1.0)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-k", type=int, default=0, help="sample only among the k most likely tokens (0 = all)")
    parser.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for runs:/ and models:/ (default: "
                        "MLFLOW_TRACKING_URI, else runs/tune/mlflow.db)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of {prompt, generated_text}")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.context is not None and len(args.context) != len(args.prompt):
            raise ConfigError(f"--context: give one per --prompt ({len(args.prompt)} prompts, {len(args.context)} contexts)")
        if args.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens: expected a positive number, got {args.max_new_tokens}")
        if args.temperature < 0 or args.top_k < 0:
            raise ConfigError("--temperature and --top-k: expected numbers >= 0")
        adapter = load_adapter(args.adapter, args.tracking_uri, args.device)
        mix = None
        if args.mix:
            mix = load_adapter(args.mix, args.tracking_uri, adapter.device, "--mix", lm=adapter.lm)
        texts = adapter.generate(args.prompt, args.context, mix=mix, alpha=args.alpha, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, top_k=args.top_k, seed=args.seed)
        if args.json:
            print(json.dumps([{"prompt": p, "generated_text": t} for p, t in zip(args.prompt, texts)], indent=1))
        else:
            for p, t in zip(args.prompt, texts):
                print(f"{p}{t}" if len(args.prompt) == 1 else f"--- {p}\n{p}{t}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
