"""The adapter-injection principle (seed 001), measured on LoRA through PEFT:

    python -m experiments.adapter_injection.run --data ../shared/data/wikipedia_en_sample

1. At injection the output equals the base model's (B is zero-initialised): max |difference|.
2. Named adapters: two adapters live side by side, each selectable by name.
3. Two adapters active at once: the output moves by the sum of both low-rank updates.
4. Disabling the adapters restores the base output exactly.
5. Parameters added per adapted layer equal r x (d_in + d_out).
6. LoRA's validation perplexity on the data and budget of the embedding-injection experiment.
Writes RESULTS.md and results.json beside this file.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

from embinject.config_files import load_config
from embinject.errors import ConfigError
from embinject.fsutil import atomic_write_text
from embinject.models import load_frozen_lm
from embinject.tracking import flatten
from embinject.train import prepare, train
from experiments.common import experiment_parser, log_result, parse_experiment_args

HERE = Path(__file__).resolve().parent
EXP1 = HERE.parent / "embedding_injection"
SETTINGS = (  # the settings the LoRA row and the copied rows are compared on
    "data.path",
    "adapter.embed_source",
    "adapter.context_tokens",
    "data.train_samples",
    "data.seq_len",
    "train.max_steps",
    "train.lr",
    "train.dtype",
)


def lora_facts(model_spec: str, rank: int, targets: list[str]) -> dict:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lm = load_frozen_lm(model_spec)
    ids = torch.randint(0, len(lm.tokenizer), (2, 24))
    with torch.no_grad():
        base = lm.model(input_ids=ids).logits
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, task_type="CAUSAL_LM")
    model = get_peft_model(lm.model, cfg, adapter_name="first")
    model.add_adapter("second", cfg)
    facts = {}
    with torch.no_grad():
        model.set_adapter("first")
        facts["max_abs_diff_at_injection"] = float((model(input_ids=ids).logits - base).abs().max())
        # give each adapter a different non-zero update, as training would
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.02)
        model.set_adapter("first")
        out_a = model(input_ids=ids).logits
        model.set_adapter("second")
        out_b = model(input_ids=ids).logits
        facts["adapter_names"] = sorted(model.peft_config)
        facts["a_and_b_differ_max_abs"] = float((out_a - out_b).abs().max())
        model.base_model.set_adapter(["first", "second"])
        out_ab = model(input_ids=ids).logits
        facts["both_active_differs_from_each"] = float(min((out_ab - out_a).abs().max(), (out_ab - out_b).abs().max()))
        # with both active, a layer's update is the sum of the two low-rank updates
        layer = next(m for n, m in model.named_modules() if n.endswith(targets[0]) and hasattr(m, "lora_A"))
        x = torch.randn(3, layer.in_features)
        expected = layer.base_layer(x) + sum(
            layer.lora_B[k](layer.lora_A[k](x)) * layer.scaling[k] for k in ("first", "second")
        )
        facts["two_active_sum_max_abs_error"] = float((layer(x) - expected).abs().max())
        with model.disable_adapter():
            facts["max_abs_diff_disabled"] = float((model(input_ids=ids).logits - base).abs().max())
    per_layer = []
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "first" in module.lora_A:
            added = module.lora_A["first"].weight.numel() + module.lora_B["first"].weight.numel()
            per_layer.append(
                {
                    "module": name.replace("base_model.model.", ""),
                    "d_in": module.in_features,
                    "d_out": module.out_features,
                    "added": added,
                    "r_x_(d_in+d_out)": rank * (module.in_features + module.out_features),
                }
            )
    facts["per_layer"] = per_layer
    facts["all_layers_match_formula"] = all(p["added"] == p["r_x_(d_in+d_out)"] for p in per_layer)
    model.unload()
    return facts


def main(argv=None) -> int:
    p = experiment_parser(
        __doc__,
        HERE,
        "a shared data folder, e.g. ../shared/data/wikipedia_en_sample",
        config=EXP1 / "config.yaml",
        render_only=False,
    )  # the embedding-injection budget
    p.add_argument("--rank", type=int, default=8)
    args = parse_experiment_args(p, argv)
    out = args.out
    t0 = time.time()
    try:
        cfg = load_config(
            args.config,
            [
                f"data.path={args.data}",
                "method=lora",
                f"adapter.rank={args.rank}",
                "adapter.target_modules=[q_proj,v_proj]",
                "adapter.embed_source=context",
                "train.progress=false",
                *args.overrides,
            ],
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    facts = lora_facts(cfg.model, args.rank, cfg.adapter.target_modules)
    result, method = train(cfg, prepared=prepare(cfg))
    method.release()
    log_result(
        args.mlflow,
        "experiment-adapter-injection",
        f"LoRA r={args.rank}",
        {"rank": args.rank, "target_modules": cfg.adapter.target_modules},
        result,
        {k: float(v) for k, v in facts.items() if isinstance(v, (int, float))},
    )
    results = {"facts": facts, "lora": result}
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=str))
    lines = claims_table(cfg, args.rank, facts, time.time() - t0) + lora_table(cfg, args, result)
    atomic_write_text(out / "RESULTS.md", "\n".join(lines))
    print(f"wrote {out / 'RESULTS.md'}")
    return 0


def claims_table(cfg, rank: int, facts: dict, seconds: float) -> list[str]:
    """RESULTS.md's head: each claim of the principle against what was measured, and the layers' parameter counts."""
    lines = [
        "# Adapter injection, measured on LoRA (seed 001)",
        "",
        f"Generated by `python -m experiments.adapter_injection.run {' '.join(sys.argv[1:])}` in {seconds / 60:.1f} "
        f"min on {platform.machine()} with {torch.get_num_threads()} threads. Model `{cfg.model}`, rank {rank}, "
        f"targets {', '.join(cfg.adapter.target_modules)}.",
        "",
        "| claim | measured |",
        "|---|---|",
        "| output identical to the base model at injection | "
        f"max abs difference {facts['max_abs_diff_at_injection']:.3g} |",
        "| named adapters | "
        f"{', '.join(facts['adapter_names'])}; their outputs differ by up to {facts['a_and_b_differ_max_abs']:.3g} |",
        "| two adapters active at once | "
        f"output differs from either alone by at least {facts['both_active_differs_from_each']:.3g}; "
        f"a layer's output equals base + both updates to {facts['two_active_sum_max_abs_error']:.3g} |",
        f"| disabling restores the base exactly | max abs difference {facts['max_abs_diff_disabled']:.3g} |",
        "| parameters per layer = r x (d_in + d_out) | "
        f"{'holds for all' if facts['all_layers_match_formula'] else 'FAILS for some of'} {len(facts['per_layer'])} "
        "adapted layers |",
        "",
        "| layer (first of each kind) | d_in | d_out | added | r x (d_in + d_out) |",
        "|---|---|---|---|---|",
    ]
    seen = set()
    for row in facts["per_layer"]:
        kind = row["module"].rsplit(".", 1)[-1]
        if kind not in seen:
            seen.add(kind)
            lines.append(
                f"| {row['module']} | {row['d_in']} | {row['d_out']} | {row['added']:,} | {row['r_x_(d_in+d_out)']:,} |"
            )
    return lines


def lora_table(cfg, args, result: dict) -> list[str]:
    """LoRA's validation perplexity beside the embedding-injection experiment's rows (when writing beside this file),
    and the settings the rows share or do not."""
    lines = [
        "",
        "## LoRA on the embedding-injection experiment's data and budget",
        "",
        "| method | val perplexity | vs baseline | trainable params | train time (s) |",
        "|---|---|---|---|---|",
        f"| LoRA r={args.rank} | {result['val_perplexity']:.2f} | "
        f"{100 * (result['val_perplexity'] / result['baseline_perplexity'] - 1):+.1f}% | "
        f"{result['trainable_params']:,} | {result['train_seconds']:.0f} |",
    ]
    exp1 = EXP1 / "results.json"
    copied = []
    if exp1.is_file() and str(Path(args.out).resolve()) == str(HERE):
        copied = [
            r
            for r in json.loads(exp1.read_text()).get("context", [])
            if r["label"] in ("Static prefix (3 tokens)", "Injection (MiniLM)")
        ]
        for r in copied:
            lines.append(
                f"| {r['label']} (from embedding_injection/results.json) | {r['val_perplexity']:.2f} | "
                f"{100 * (r['val_perplexity'] / r['baseline_perplexity'] - 1):+.1f}% | {r['trainable_params']:,} | "
                f"{r['train_seconds']:.0f} |"
            )
    ours = setting(dataclasses.asdict(cfg))
    theirs = [setting(r["config"]) for r in copied]
    differ = [
        f"`{k}` ({', '.join(sorted({str(t[k]) for t in theirs}))})"
        for k in SETTINGS
        if any(t[k] != ours[k] for t in theirs)
    ]
    lines += [
        "",
        f"{'The LoRA row uses' if differ else 'All rows use'} `embed_source: {cfg.adapter.embed_source}` "
        f"({cfg.adapter.context_tokens} context tokens, not scored), {cfg.data.train_samples} training windows of "
        f"{cfg.data.seq_len} tokens from `{ours['data.path']}`, at most {cfg.train.max_steps} steps, "
        f"lr {cfg.train.lr:g}, `train.dtype: {cfg.train.dtype}`"
        + (
            f"; the copied rows differ in {', '.join(differ)}, so their train times are not comparable with the "
            "LoRA row's"
            if differ
            else ""
        )
        + ". Each row is one training run (one seed, no interval): the table sets sizes and costs side by side and "
        "draws no verdict between methods.",
        "",
    ]
    return lines


def setting(c: dict) -> dict:
    """A run's SETTINGS, its data folder by name."""
    values = {k: v for k, v in flatten(c).items() if k in SETTINGS}
    return {**values, "data.path": Path(values["data.path"]).name}


if __name__ == "__main__":
    sys.exit(main())
