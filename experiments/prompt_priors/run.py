"""Embedding priors for prompt tuning (seed 004): do priors move the trained prompts, and do they
change the final quality?

    python -m experiments.prompt_priors.run --data ../shared/data

Soft prompts initialised from five priors (normal, vocab, fitted Gaussian, Gaussian exclusion,
interpolation between the two tasks' clusters) are trained on a QA task (sciq_qa, answer after
context and question) and an arithmetic task (basic_arithmetic), over several seeds. Reported per
prior: exact match and token F1 of greedy answers, answer perplexity, and where the prompt vectors
sit (distance to the nearest token embedding, distance moved in training). ANOVA and Kruskal-Wallis across
priors (Holm-corrected) test the seed study's claim; PCA and t-SNE plots place the trained prompts among the
vocabulary embeddings and the tasks' mean activations. Writes RESULTS.md, results.json, pca.png and
tsne.png beside this file, and logs every run to MLflow.
"""

from __future__ import annotations

import re
import string
import sys
import time
from pathlib import Path

import torch

from embinject.config import Config, DataConfig, config_from_dict
from embinject.config_files import parse_override, read_yaml, set_dotted
from embinject.data import load_documents
from embinject.fsutil import atomic_write_text
from embinject.train.generation import generate
from embinject.methods import build_method
from embinject.methods.baseline import Baseline
from embinject.specs import method_spec
from embinject.train import prepare, shared_lm, train
from experiments.common import experiment_parser, log_result, machine, parse_experiment_args, run_or_reload
from experiments.prompt_priors.report import render

HERE = Path(__file__).resolve().parent
PRIORS = ("normal", "vocab", "gaussian", "exclusion", "interpolate")
TASKS = {
    "sciq_qa": {
        "path": "sciq_qa",
        "prompt_template": "Context: {context}\nQuestion: {question}\nAnswer:",
        "target_template": " {answer}",
        "seq_len": 64,
    },
    # The shared validation split holds only the hardest problems; validate on every 10th training row instead.
    "basic_arithmetic": {
        "path": "basic_arithmetic/train.jsonl",
        "prompt_template": "{question}",
        "target_template": " {answer}",
        "seq_len": 24,
        "val_fraction": 0.1,
    },
}
GENERAL_CORPUS = "wikipedia_en_sample"  # the "general text" cluster in the plots
CLUSTER_TEXT_ROWS = 40  # prompts per task that define its cluster for the interpolate prior


def make_config(args, task: str, prior: str, seed: int, method: str = "prompt") -> Config:
    raw = read_yaml(args.config)
    for key, value in {**TASKS[task], "path": str(Path(args.data) / TASKS[task]["path"])}.items():
        set_dotted(raw, f"data.{key}", value)
    set_dotted(raw, "method", method)
    set_dotted(raw, "adapter.init", prior)
    set_dotted(raw, "adapter.init_text", args.cluster_text["sciq_qa"])
    set_dotted(raw, "adapter.init_text_b", args.cluster_text["basic_arithmetic"])
    set_dotted(raw, "train.seed", seed)
    if method_spec(method).reads_key("adapter.deep_layers"):
        set_dotted(raw, "adapter.deep_layers", args.deep_layers)
    for item in args.overrides:
        set_dotted(raw, *parse_override(item))
    return config_from_dict(raw)


def task_prompts(args, task: str) -> tuple[list[str], list[str]]:
    """The filled prompt templates of a task's training and validation rows."""
    spec = TASKS[task]
    cfg = DataConfig(
        path=str(Path(args.data) / spec["path"]),
        prompt_template=spec["prompt_template"],
        target_template=spec["target_template"],
        val_fraction=spec.get("val_fraction", 0.1),
    )
    train, val = load_documents(cfg)
    return [p for p, _ in train], [p for p, _ in val]


# ---------------------------------------------------------------- answer quality


def normalise(text: str) -> str:
    text = text.strip().split("\n")[0].lower()
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    text = "".join(c for c in text if c not in set(string.punctuation) - {"-", "."}).rstrip(".")
    return " ".join(text.split())


def token_f1(pred: str, ref: str) -> float:
    p, r = normalise(pred).split(), normalise(ref).split()
    common = sum(min(p.count(t), r.count(t)) for t in set(p))
    if not p or not r or common == 0:
        return float(p == r)
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def answer_scores(method, prep, tokenizer, max_new_tokens: int) -> tuple[float, float, list[dict]]:
    """Exact match and token F1 of greedy answers to the validation prompts."""
    ids, labels = prep.val["input_ids"], prep.val["labels"]
    prompts, refs = [], []
    eos = tokenizer.eos_token_id
    for row, lab in zip(ids, labels):
        scored = (lab != -100).nonzero().flatten()
        prompts.append(row[: int(scored[0])].tolist())
        refs.append(tokenizer.decode([t for t in row[scored].tolist() if t != eos], skip_special_tokens=True))
    outs = generate(method, prompts, max_new_tokens, eos_id=eos, device=prep.device)
    preds = [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
    em = sum(normalise(p) == normalise(r) for p, r in zip(preds, refs)) / len(refs)
    f1 = sum(token_f1(p, r) for p, r in zip(preds, refs)) / len(refs)
    return em, f1, [{"reference": r, "prediction": p} for r, p in zip(refs[:3], preds[:3])]


# ---------------------------------------------------------------- geometry


def nearest_token_distance(vectors: torch.Tensor, table: torch.Tensor) -> float:
    return float(torch.cdist(vectors.float(), table.float()).min(dim=1).values.mean())


@torch.no_grad()
def mean_activations(lm, tokenizer, texts: list[str], max_tokens: int = 64) -> torch.Tensor:
    """Each text's mean input embedding: the layer the soft prompt lives in."""
    table = lm.get_input_embeddings().weight
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in texts]
    return torch.stack([table[torch.tensor(r)].float().mean(0) for r in rows if r])


def run(args) -> dict:
    t_start = time.time()
    prompts = {t: task_prompts(args, t) for t in TASKS}  # read once: cluster texts now, plots at the end
    args.cluster_text = {t: "\n".join(prompts[t][0][:CLUSTER_TEXT_ROWS]) for t in TASKS}
    runs, baselines, vectors = [], {}, {}
    for task in args.tasks:
        cfg = make_config(args, task, "vocab", 0, method="baseline")
        prep = prepare(cfg)
        base_result, _ = train(cfg, prepared=prep)
        em, f1, examples = answer_scores(Baseline(cfg, prep.lm.model), prep, prep.lm.tokenizer, args.max_new_tokens)
        baselines[task] = {
            "exact_match": em,
            "f1": f1,
            "val_perplexity": base_result["val_perplexity"],
            "examples": examples,
        }
        print(f"[{task}] frozen model: EM {em:.3f}, F1 {f1:.3f}, ppl {base_result['val_perplexity']:.2f}", flush=True)
        table = prep.lm.model.get_input_embeddings().weight.detach()
        for prior in args.priors:
            for seed in range(args.seeds):
                row, init, trained = prompt_run(args, task, prior, seed, table)
                runs.append(row)
                vectors[(task, prior, seed)] = (init, trained)
    cfg = make_config(args, "sciq_qa", "vocab", 0)
    lm = shared_lm(cfg.model, "cpu")
    clusters = {task: mean_activations(lm.model, lm.tokenizer, prompts[task][1][: args.plot_texts]) for task in TASKS}
    general = Path(args.data) / GENERAL_CORPUS
    if general.is_dir():
        docs = load_documents(DataConfig(path=str(general)))[1][: args.plot_texts]
        clusters["general text (wikipedia)"] = mean_activations(lm.model, lm.tokenizer, docs)
    g = torch.Generator().manual_seed(0)
    table = lm.model.get_input_embeddings().weight.detach().float()
    vocab = table[torch.randperm(table.shape[0], generator=g)[: args.plot_vocab]]
    plot_geometry(vocab, clusters, vectors, args.out)
    return {
        "runs": runs,
        "baselines": baselines,
        "config": make_config(args, args.tasks[0], "vocab", 0).to_dict(),
        "tasks": {t: TASKS[t] for t in args.tasks},
        "priors": list(args.priors),
        "seeds": args.seeds,
        "seconds": time.time() - t_start,
        "machine": machine(),
        "command": " ".join(sys.argv[1:]),
        "cluster_distances": {
            a: {b: float((clusters[a].mean(0) - clusters[b].mean(0)).norm()) for b in clusters} for a in clusters
        },
    }


def prompt_run(args, task: str, prior: str, seed: int, table: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """One soft prompt trained from `prior`: its answers' scores, where its vectors sit against the token embeddings
    `table` before and after training, and those vectors; logged to MLflow and printed."""
    cfg = make_config(args, task, prior, seed)
    prep = prepare(cfg)
    init = build_method(cfg, prep.lm.model, tokenizer=prep.lm.tokenizer).prompt.detach().clone()
    result, method = train(cfg, prepared=prep)
    trained = method.prompt.detach().clone()
    em, f1, examples = answer_scores(method, prep, prep.lm.tokenizer, args.max_new_tokens)
    row = {
        "task": task,
        "prior": prior,
        "seed": seed,
        "exact_match": em,
        "f1": f1,
        "val_perplexity": result["val_perplexity"],
        "baseline_perplexity": result["baseline_perplexity"],
        "init_nearest_token": nearest_token_distance(init, table),
        "trained_nearest_token": nearest_token_distance(trained, table),
        "moved": float((trained - init).norm(dim=1).mean()),
        "trained_norm": float(trained.norm(dim=1).mean()),
        "train_seconds": result["train_seconds"],
        "steps": result["steps"],
        "examples": examples,
    }
    log_result(
        args.mlflow,
        "experiment-prompt-priors",
        f"{task} | {prior} | seed {seed}",
        {"task": task, "prior": prior, "seed": seed},
        result,
        {k: row[k] for k in ("exact_match", "f1", "init_nearest_token", "trained_nearest_token", "moved")},
    )
    print(
        f"[{task}] {prior} seed {seed}: EM {em:.3f}, F1 {f1:.3f}, ppl {result['val_perplexity']:.2f}, "
        f"nearest token {row['init_nearest_token']:.2f} -> {row['trained_nearest_token']:.2f}, "
        f"moved {row['moved']:.2f}",
        flush=True,
    )
    return row, init, trained


def plot_geometry(vocab: torch.Tensor, clusters: dict, vectors: dict, out: Path) -> None:
    """PCA (fitted on vocabulary + task activations) and t-SNE (all points), one panel per task,
    trained prompts of seed 0 coloured by prior, their initial values as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    tasks = sorted({t for t, _, _ in vectors})
    priors = sorted({p for _, p, _ in vectors}, key=PRIORS.index)
    prompt_sets = [(t, p, *vectors[(t, p, 0)]) for t in tasks for p in priors if (t, p, 0) in vectors]
    background = [vocab.numpy()] + [c.numpy() for c in clusters.values()]
    points = np.concatenate(background + [np.concatenate([i.numpy(), v.numpy()]) for _, _, i, v in prompt_sets])
    pca = PCA(n_components=2, random_state=0).fit(np.concatenate(background))
    reduced50 = PCA(n_components=min(50, points.shape[0] - 1, points.shape[1]), random_state=0).fit_transform(points)
    perplexity = float(min(30, max(2, (points.shape[0] - 1) // 3)))
    embeddings = {
        "pca": pca.transform(points),
        "tsne": TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(reduced50),
    }
    colours = plt.get_cmap("tab10")
    for name, xy in embeddings.items():
        fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 5), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            start = 0
            for label, block in zip(["vocabulary"] + list(clusters), background):
                seg = xy[start : start + len(block)]
                start += len(block)
                if label == "vocabulary":
                    ax.scatter(seg[:, 0], seg[:, 1], s=2, c="lightgrey", label=label)
                else:
                    ax.scatter(seg[:, 0], seg[:, 1], s=6, alpha=0.5, label=f"{label} mean activations")
            for k, (t, prior, init, trained) in enumerate(prompt_sets):
                n = len(init)
                if t == task:
                    c = colours(5 + priors.index(prior) % 5)
                    ax.scatter(xy[start : start + n, 0], xy[start : start + n, 1], marker="x", s=18, color=c, alpha=0.6)
                    ax.scatter(
                        xy[start + n : start + 2 * n, 0],
                        xy[start + n : start + 2 * n, 1],
                        marker="o",
                        s=30,
                        color=c,
                        edgecolors="black",
                        linewidths=0.5,
                        label=f"prompt: {prior}",
                    )
                start += 2 * n
            ax.set_title(f"{name.upper()}: {task} prompts (o trained, x initial), seed 0", fontsize=9)
            ax.legend(fontsize=6, markerscale=1.5, loc="best")
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)


# ---------------------------------------------------------------- report


def main(argv=None) -> int:
    p = experiment_parser(__doc__, HERE, "the shared data root holding sciq_qa/ and basic_arithmetic/")
    p.add_argument("--priors", nargs="+", default=list(PRIORS), choices=PRIORS)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument(
        "--deep-layers", type=int, default=0, help="deep prompts: learned activations entering the last N layers"
    )
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--plot-texts", type=int, default=200, help="texts per cluster in the plots")
    p.add_argument("--plot-vocab", type=int, default=1500, help="vocabulary embeddings in the plots")
    args = parse_experiment_args(p, argv)
    out = args.out
    missing = [t for t, spec in TASKS.items() if not (Path(args.data) / spec["path"]).exists()]
    if missing:
        print(f"error: --data: {args.data} lacks {', '.join(missing)} (expected the shared data root)", file=sys.stderr)
        return 2
    results = run_or_reload(args, out, run)
    if results is None:
        return 2
    atomic_write_text(out / "RESULTS.md", render(results, TASKS))
    print(f"wrote {out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
