"""benchmarks/RESULTS.md's peer section: embinject's search against the same search through
`Trainer.hyperparameter_search` (`python -m benchmarks.report` puts it with the others)."""

from __future__ import annotations


def spread(run: dict, key: str, fmt: str) -> str:
    """Each repeat's value in brackets, or nothing for a single run."""
    values = run.get(key)
    return "" if not values or len(values) < 2 else " (" + ", ".join(format(v, fmt) for v in values) + ")"


def peer_row(name: str, stopping: str, run: dict) -> str:
    return (
        f"| {name} | {stopping} | {run['wall_s']:.1f}{spread(run, 'walls_s', '.1f')} | "
        f"{run['best_val_perplexity']:.3f}{spread(run, 'best_val_perplexities', '.2f')} | {run['best_params']} |"
    )


def walls(run: dict) -> list[float]:
    """Every repeat's wall clock (the one run's where there were no repeats)."""
    return run.get("walls_s") or [run["wall_s"]]


def peer_table(data: dict) -> list[str]:
    ours, hf, asha = data["embinject"], data["hf_trainer_ray_peft"], data.get("embinject_asha")
    ours32, hf_vocab = data.get("embinject_float32"), data.get("hf_trainer_ray_peft_vocab_init")
    reps = data.get("repeats", 1)
    lines = [
        "## peer: the same search through Trainer.hyperparameter_search",
        "",
        f"`python -m benchmarks.peer` on {data['time']}: prompt tuning over learning rate and prompt length, "
        f"{data['trials']} trials of {data['steps']} steps (batch {data['batch']} x {data['seq_len']} tokens, "
        f"{data['train_windows']} training / {data['val_windows']} validation windows), 1 CPU per trial, 2 at a time; "
        f"every arm {reps} time(s), interleaved: median wall clock (each repeat in brackets) and the best perplexity "
        "of the median run (each repeat's in brackets).",
        "",
        "| search | early stopping | wall clock (s) | best val perplexity | best params |",
        "|---|---|---|---|---|",
        peer_row("`embinject tune` as users run it (`train.dtype: auto`)", "none (same work as HF)", ours),
        peer_row('`Trainer.hyperparameter_search(backend="ray")` + PEFT, defaults (float32, RANDOM init)', "none", hf),
    ]
    if ours32:
        lines.append(peer_row("`embinject tune` at float32 (same precision as HF)", "none", ours32))
    if hf_vocab:
        lines.append(
            peer_row(
                "`Trainer.hyperparameter_search` + PEFT with SAMPLE_VOCAB init (embinject's kind)", "none", hf_vocab
            )
        )
    if asha:
        lines.append(peer_row("`embinject tune` as users run it", "ASHA, evaluations every quarter", asha))
    return lines


def same_precision_note(data: dict) -> str:
    """Whether float32 on both sides still tells the trainers apart."""
    hf, ours32 = data["hf_trainer_ray_peft"], data["embinject_float32"]
    apart = min(walls(hf)) > max(walls(ours32)) or max(walls(hf)) < min(walls(ours32))
    return (
        f"- Same precision (float32 on both sides): x{data['speedup_same_precision']:.2f}; the repeats' wall "
        f"clocks {'do not overlap' if apart else 'overlap'} ({min(walls(ours32)):.1f}-{max(walls(ours32)):.1f} s "
        f"against {min(walls(hf)):.1f}-{max(walls(hf)):.1f} s), so "
        + (
            "the two trainers differ at equal precision too."
            if apart
            else "at equal precision neither is shown faster, and the gain at equal work comes with bf16 autocast "
            "where the CPU has bf16 instructions, which embinject runs by default and the HF Trainer only when "
            "asked (`bf16=True`)."
        )
    )


def same_init_note(data: dict) -> str:
    """How far apart the best perplexities are with the same kind of prompt initialisation, and with HF's own."""
    ours, hf, hf_vocab = data["embinject"], data["hf_trainer_ray_peft"], data["hf_trainer_ray_peft_vocab_init"]
    return (
        f"- With the same kind of prompt initialisation on both sides, HF's best perplexity is "
        f"{hf_vocab['best_val_perplexity']:.2f} against embinject's {ours['best_val_perplexity']:.2f}; with HF's "
        f"default (RANDOM) init it is {hf['best_val_perplexity']:.2f}. Each is one search's best, repeated "
        f"{data.get('repeats', 1)} time(s) with the same draws, not an interval over seeds: with the same "
        "init the two searches end "
        + (
            "within 1% of each other"
            if abs(hf_vocab["best_val_perplexity"] / ours["best_val_perplexity"] - 1) <= 0.01
            else f"{100 * abs(hf_vocab['best_val_perplexity'] / ours['best_val_perplexity'] - 1):.1f}% apart"
        )
        + f", against {100 * abs(hf['best_val_perplexity'] / ours['best_val_perplexity'] - 1):.0f}% apart with HF's "
        "default init."
    )


def asha_note(data: dict) -> str:
    """The whole search with early stopping, and when it first reached the HF search's best."""
    reached = data["embinject_asha"].get("seconds_to_hf_best")
    to_best = data.get("speedup_to_hf_best")
    return (
        f"- With its default early stopping the whole embinject search is x{data['speedup_asha']:.2f} faster; it first "
        f"reached the HF search's best perplexity after "
        + (f"{reached:.1f} s, x{to_best:.2f} sooner than the HF search finished." if reached is not None else "never.")
    )


def peer_section(data: dict) -> list[str]:
    speed = data["speedup"]
    met = speed >= 1.5
    lines = peer_table(data) + [
        "",
        f"- Equal work, each side as users run it by default: x{speed:.2f} the speed of the HF search "
        f"(target x1.5: {'met' if met else f'missed by {1.5 - speed:.2f}'}).",
    ]
    if data.get("embinject_float32"):
        lines.append(same_precision_note(data))
    if data.get("hf_trainer_ray_peft_vocab_init"):
        lines.append(same_init_note(data))
    if data.get("embinject_asha"):
        lines.append(asha_note(data))
    lines.append("")
    return lines
