r"""One run of the injection study in its own process: one arm at one seed (or the evaluation-only reference
arms), trained on the study's split and scored on the held-out test windows; it writes one record. The driver
(`experiments.injection_context.run`) starts it; it imports no part of the search layer (Ray, Optuna), so each of the
study's many runs starts without them.

    python -m experiments.injection_context.train_arm --data ../shared/data/wikipedia_en_sample \
        --arm inject-8 --seed 0 --lr 0.002
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import resource
import sys
import time
from pathlib import Path

import torch

from embinject.config_files import load_config
from embinject.data import select_windows, tokenize_documents
from embinject.encoders import cached_embeddings, encoder_key, load_encoder, pooling_of
from embinject.errors import ConfigError
from embinject.fsutil import atomic_write_text
from embinject.methods.base import AdapterMethod
from embinject.models import cache_root
from embinject.specs import method_spec
from embinject.train import Diverged, ablated, encoder_ids, prepare, scored_labels, train
from embinject.train.evaluation import window_nll
from embinject.train.precision import cpu_bf16_fast
from experiments.injection_context.arms import ARMS, CONTEXT, HERE, REFERENCE, TEXT_TOKENS, extra_corpus


# ---------------------------------------------------------------- data: train / validation / test


def read_docs(file: Path) -> list[str]:
    return [json.loads(line)["text"] for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def study_data(src: Path, extra: Path | None = None) -> tuple[Path, list[str]]:
    """(a data folder embinject trains on: train.jsonl + validation.jsonl carved from the corpus's training
    documents, the test documents = the corpus's validation file). The folder lives in embinject's cache.
    `extra`: another corpus folder whose documents (both files) are appended to the training documents; the
    validation and test documents stay the same, and extra text that repeats them is refused."""
    train_file, test_file = src / "train.jsonl", src / "validation.jsonl"
    extra_files = [extra / "train.jsonl", extra / "validation.jsonl"] if extra else []
    for f in (train_file, test_file):
        if not f.is_file():
            raise ConfigError(f"--data: {f} not found (a folder with train.jsonl and validation.jsonl)")
    for f in extra_files:
        if not f.is_file():
            raise ConfigError(
                f"--arms: {f} not found: the arms trained on more text read it (a shared corpus folder "
                "beside --data, with train.jsonl and validation.jsonl)"
            )
    key = hashlib.sha256(b"".join(f.read_bytes() for f in (train_file, *extra_files))).hexdigest()[:16]
    folder = cache_root() / "experiments" / (f"{src.name}+{extra.name}-{key}" if extra else f"{src.name}-{key}")
    test_docs = read_docs(test_file)
    if not (folder / "validation.jsonl").is_file():  # split, checked and written once per corpus (and extra text)
        docs = read_docs(train_file)
        train_docs, val_docs = (
            [d for i, d in enumerate(docs) if i % 10 != 9],
            [d for i, d in enumerate(docs) if i % 10 == 9],
        )
        extra_docs = [d for f in extra_files for d in read_docs(f)]
        if extra_docs:
            check_disjoint(extra_docs, val_docs + test_docs, extra)
        lines = lambda ds: "".join(json.dumps({"text": d}) + "\n" for d in ds)  # noqa: E731
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "train.jsonl", lines(train_docs + extra_docs))
        atomic_write_text(folder / "validation.jsonl", lines(val_docs))
    return folder, test_docs


def extra_dir(data: Path, arm: str) -> Path | None:
    """The folder of an arm's extra training text: its shared corpus, beside --data."""
    corpus = extra_corpus(arm)
    return None if corpus is None else data.parent / corpus


def check_disjoint(extra_docs: list[str], held_out: list[str], extra: Path, n: int = 8, most: float = 0.01) -> None:
    """Extra training text must not hold the held-out articles: refused when any extra document shares more than
    `most` of its n-word sequences with the validation and test documents."""

    def grams(text: str) -> set[str]:
        words = re.findall(r"\w+", text.lower())
        return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}

    seen = set().union(*map(grams, held_out))
    for doc in extra_docs:
        own = grams(doc)
        if own and len(own & seen) > most * len(own):
            raise ConfigError(
                f"{extra}: a document ({doc[:60]!r}...) repeats {len(own & seen) / len(own):.0%} of its "
                f"{n}-word sequences from the study's validation or test articles; remove it from the extra text"
            )


def test_inputs(prep, cfg, docs: list[str]) -> dict[str, torch.Tensor]:
    """Every test window that has preceding text, scored like validation windows, with its preceding tokens
    and (for injection) the encoder's embedding of them."""
    w = select_windows(tokenize_documents(docs, prep.lm.tokenizer, cfg.data.seq_len), 10**9, "previous", "test")
    inputs = {"input_ids": w.tokens, "labels": scored_labels(w, cfg), "previous_ids": w.previous}
    reads_text = method_spec(cfg.method).needs_encoder
    if reads_text and cfg.adapter.encoder_rank:  # the adapter's own encoder reads the text's ids
        inputs["encoder_ids"] = encoder_ids(w, cfg)
    elif reads_text:
        a, lm = cfg.adapter, prep.lm
        pooling = pooling_of(a)
        key = encoder_key(a.embedding_model, lm.tokenizer, a.fourier_features, lm.path, pooling)

        def make():
            return load_encoder(
                a.embedding_model, lm.model, lm.tokenizer, lm.path, a.fourier_features, prep.device, pooling
            )

        inputs["sentence_embedding"] = cached_embeddings(key, encoder_ids(w, cfg), make)
    return inputs


# ---------------------------------------------------------------- one process per arm


def device_label(device) -> str:
    """Where a run trained: the GPU's name, or the CPU's architecture and whether it has fast bf16 instructions (what
    `train.dtype: auto` resolves by, and what a run's time depends on)."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}{', bf16 instructions' if cpu_bf16_fast() else ''})"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


SEARCH_ONLY = ("search.", "tune.", "mlflow.")


def recorded_config(config: dict) -> dict:
    """A run's config as its record keeps it: the prepared data folder named relative to the cache directory, not by
    this machine's absolute path (data.path is not compared between records: IGNORED_SETTINGS)."""
    path = Path(config["data"]["path"])
    if path.is_relative_to(cache_root()):
        config = {**config, "data": {**config["data"], "path": path.relative_to(cache_root()).as_posix()}}
    return config


def base_overrides(args, data_dir: Path, search: bool = False) -> list[str]:
    """--set values for a training config; `search` keeps the search file's own sections too."""
    return [f"data.path={data_dir}", *[o for o in args.overrides if search or not o.startswith(SEARCH_ONLY)]]


def arm_config(args, arm: str, data_dir: Path, lr: float, extra: list[str] = ()):
    """The training config of one arm: the study's config, the arm's method and shape, its method's learning rate."""
    method, shape, control, _ = ARMS[arm]
    return load_config(
        args.config,
        base_overrides(args, data_dir)
        + [
            f"method={method}",
            f"train.lr={lr}",
            *[f"{k}={'null' if v is None else v}" for k, v in shape.items()],
            *([f"adapter.ablation={control}"] if control else []),
            *extra,
        ],
    )


def run_arm(args, arm: str, seed: int, data_dir: Path, test_docs: list[str], lr: float) -> dict:
    method, _, control, label = ARMS[arm]
    cfg = arm_config(args, arm, data_dir, lr, [f"train.seed={seed}", f"train.threads={args.threads}"])
    t0 = time.time()
    prep = prepare(cfg)
    test = test_inputs(prep, cfg, test_docs)
    if control and "sentence_embedding" in test:  # prepare fed the control's input to training and validation
        mean = prep.train["sentence_embedding"][:1]  # constant: every training row is the training split's mean
        test["sentence_embedding"] = ablated(test["sentence_embedding"], control, mean, seed, 2)
    result, adapter = train(cfg, prepared=prep)
    nll, count = window_nll(adapter, test, cfg.train.eval_batch_size, prep.device, None)  # test scored in float32
    adapter.release()
    history = result["history"]
    return {
        "arm": arm,
        "label": label,
        "seed": seed,
        "lr": lr,
        "method": method,
        "control": control,
        "trainable_params": result["trainable_params"],
        "val_perplexity": result["val_perplexity"],
        "train_windows": len(prep.train["input_ids"]),
        "val_windows": len(prep.val["input_ids"]),
        "baseline_val_perplexity": result["baseline_perplexity"],
        "steps": result["steps"],
        "epochs_run": result["epochs_run"],
        "best_step": result["best_step"],
        "stopped_early": result["stopped_early"],
        # The last evaluation's val_perplexity is the kept adapter on every validation window; the curve and "still
        # improving" use the evaluation subset at every step, so that they compare like with like.
        "improving_at_end": result["best_step"] == result["steps"],
        "history": [
            {"step": h["step"], "val_perplexity_subset": h.get("val_perplexity_subset", h["val_perplexity"])}
            for h in history
        ],
        "train_seconds": result["train_seconds"],
        "wall_seconds": time.time() - t0,
        "dtype": result["dtype"],
        "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
        "device": device_label(prep.device),
        # chunk i through position i's own rows of the MLP's last layer (records without it: one shared MLP)
        **({"chunk_rows": "per-position"} if cfg.adapter.pooling == "chunks" else {}),
        **({"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20} if torch.cuda.is_available() else {}),
        "config": recorded_config(result["config"]),
        "test_nll": [round(float(x), 5) for x in nll],
        "test_tokens": [int(x) for x in count],
    }


def run_reference(args, data_dir: Path, test_docs: list[str], skip: set[str] = frozenset()) -> list[dict]:
    """The frozen LM alone, and reading the last m tokens of the preceding text as ordinary tokens; and the frozen
    LM alone scored as the `context` arms are (`baseline-context`). Records named in `skip` are not recomputed."""

    class ReadText(AdapterMethod):
        name = "read-text"

        def __init__(self, cfg, lm, m: int):
            super().__init__(cfg, lm)
            self.m = m

        def prefix_embeds(self, batch):
            return None if self.m == 0 else self.lm.get_input_embeddings()(batch["previous_ids"][:, -self.m :])

    cfg = load_config(
        args.config, base_overrides(args, data_dir) + ["method=baseline", f"train.threads={args.threads}"]
    )
    torch.set_num_threads(args.threads)
    prep = prepare(cfg)
    test = test_inputs(prep, cfg, test_docs)
    context_cfg = load_config(
        args.config,
        base_overrides(args, data_dir)
        + ["method=baseline", f"train.threads={args.threads}", *[f"{k}={v}" for k, v in CONTEXT.items()]],
    )
    records = []
    for name, m, c in (
        [("baseline", 0, cfg)] + [(f"text-{m}", m, cfg) for m in TEXT_TOKENS] + [("baseline-context", 0, context_cfg)]
    ):
        if name in skip:
            continue
        inputs = test if c is cfg else test_inputs(prep, c, test_docs)
        nll, count = window_nll(ReadText(c, prep.lm.model, m), inputs, c.train.eval_batch_size, prep.device, None)
        records.append(
            {
                "arm": name,
                "text_tokens": m,
                "peak_rss_mb": peak_rss_mb(),
                "config": recorded_config(c.to_dict()),
                "test_nll": [round(float(x), 5) for x in nll],
                "test_tokens": [int(x) for x in count],
            }
        )
    return records


# ---------------------------------------------------------------- records


def record_path(runs: Path, arm: str, seed: int | None) -> Path:
    return runs / (f"{arm}.json" if seed is None else f"{arm}__seed{seed}.json")


def diverged_path(runs: Path, arm: str, seed: int) -> Path:
    """Where a run that diverged is recorded: it would diverge again (same seed, same rate), so it is not retried."""
    return runs / "diverged" / f"{arm}__seed{seed}.json"


def lr_check_path(out: Path, corpus: str, arm: str, lr: float) -> Path:
    return out / "lr_check" / corpus / f"{arm}__lr{lr:g}.json"


def missing_references(runs: Path) -> list[str]:
    return [name for name in REFERENCE if not record_path(runs, name, None).is_file()]


def run_one(args) -> int:
    """Train and score one arm at one seed (or score the reference arms not yet recorded) and write its record."""
    data_dir, test_docs = study_data(args.data, extra_dir(args.data, args.arm))
    runs = args.out / "runs" / args.data.name
    if args.arm == "reference":
        done = set(REFERENCE) - set(missing_references(runs))
        for r in run_reference(args, data_dir, test_docs, skip=done):
            atomic_write_text(record_path(runs, r["arm"], None), json.dumps(r))
        return 0
    try:
        r = run_arm(args, args.arm, args.seed, data_dir, test_docs, args.lr)
    except Diverged as exc:
        if args.lr_check:
            raise
        atomic_write_text(
            diverged_path(runs, args.arm, args.seed),
            json.dumps(
                {
                    "arm": args.arm,
                    "seed": args.seed,
                    "lr": args.lr,
                    "step": exc.step,
                    "what": exc.what,
                    "value": exc.value,
                }
            ),
        )
        print(f"[{args.data.name}] {args.arm} seed {args.seed}: {exc}; recorded, not retried", flush=True)
        return 0
    path = (
        lr_check_path(args.out, args.data.name, args.arm, args.lr)
        if args.lr_check
        else record_path(runs, args.arm, args.seed)
    )
    atomic_write_text(path, json.dumps(r))
    print(
        f"[{args.data.name}] {args.arm} seed {args.seed}: val ppl {r['val_perplexity']:.3f}, {r['steps']} steps, "
        f"{r['wall_seconds']:.0f} s",
        flush=True,
    )
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", type=Path, required=True, help="a shared corpus folder with train.jsonl and validation.jsonl"
    )
    p.add_argument("--config", default=str(HERE / "config.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--arm", required=True, choices=[*ARMS, "reference"], metavar="ARM", help="an arm, or `reference`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, help="the arm's learning rate (required for a trained arm)")
    p.add_argument(
        "--lr-check", action="store_true", help="write the record under <out>/lr_check/ (a learning-rate check)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    if args.arm != "reference" and args.lr is None:
        p.error(f"--lr: required for the trained arm {args.arm}")
    args.data, args.out = args.data.resolve(), args.out.resolve()
    try:
        return run_one(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
