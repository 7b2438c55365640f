"""The study's arms, seeds and settings, shared by run.py (which trains them) and report.py (which reads them)."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
TEXT_TOKENS = (1, 2, 4, 8, 16, 32, 64)  # the LM reads the last m tokens of the preceding text
INJECT = "bundled:all-minilm-l6-v2"
CONTEXT = {"adapter.embed_source": "context", "adapter.context_tokens": 8}  # the `context` arms' shared settings
CONTEXT_READ = CONTEXT["adapter.context_tokens"]

# name: (method, overrides, control, label). Order is priority: an interrupted study has the headline first.
ARMS: dict[str, tuple[str, dict, str | None, str]] = {
    "static-4": ("prompt", {"adapter.prefix_len": 4}, None, "Static prefix, 4 vectors"),
    "inject-4": ("injection", {"adapter.inject_tokens": 4}, None, "Injection, 4 vectors (MiniLM)"),
    "shuffled-4": ("injection", {"adapter.inject_tokens": 4}, "shuffled", "Control: shuffled embeddings, 4 vectors"),
    "constant-4": ("injection", {"adapter.inject_tokens": 4}, "constant", "Control: constant input, 4 vectors"),
    "inject-1": ("injection", {"adapter.inject_tokens": 1}, None, "Injection, 1 vector (MiniLM)"),
    "inject-2": ("injection", {"adapter.inject_tokens": 2}, None, "Injection, 2 vectors (MiniLM)"),
    "inject-8": ("injection", {"adapter.inject_tokens": 8}, None, "Injection, 8 vectors (MiniLM)"),
    "fourier-4": ("injection", {"adapter.inject_tokens": 4, "adapter.embedding_model": "fourier"}, None,
                  "Injection, 4 vectors (fourier)"),
    "lm-mean-4": ("injection", {"adapter.inject_tokens": 4, "adapter.embedding_model": "lm-mean"}, None,
                  "Injection, 4 vectors (lm-mean)"),
    "shuffled-1": ("injection", {"adapter.inject_tokens": 1}, "shuffled", "Control: shuffled embeddings, 1 vector"),
    "shuffled-8": ("injection", {"adapter.inject_tokens": 8}, "shuffled", "Control: shuffled embeddings, 8 vectors"),
    # At 4 vectors the constant input is the stronger control; these check whether that holds at 1 and 8.
    "constant-1": ("injection", {"adapter.inject_tokens": 1}, "constant", "Control: constant input, 1 vector"),
    "constant-8": ("injection", {"adapter.inject_tokens": 8}, "constant", "Control: constant input, 8 vectors"),
    # The seed report's mode: the encoder reads the scored window itself. Same test windows and tokens as above.
    "window-4": ("injection", {"adapter.inject_tokens": 4, "adapter.embed_source": "window"}, None,
                 "Injection, 4 vectors, encoder reads the scored window (`window`)"),
    "window-shuffled-4": ("injection", {"adapter.inject_tokens": 4, "adapter.embed_source": "window"}, "shuffled",
                          "Control: shuffled embeddings, 4 vectors (`window`)"),
    # The quickstart's mode: the encoder reads the window's first tokens, which the LM reads too and is not scored on.
    # These arms are scored on the window's last 64 - 8 tokens, so they form their own table with their own baseline.
    "context-4": ("injection", {"adapter.inject_tokens": 4, **CONTEXT}, None,
                  f"Injection, 4 vectors, encoder reads the window's first {CONTEXT_READ} tokens (`context`)"),
    "context-constant-4": ("injection", {"adapter.inject_tokens": 4, **CONTEXT}, "constant",
                           "Control: constant input, 4 vectors (`context`)"),
}
# Designs beyond one pooled MiniLM vector, each at k = 8 beside its constant-input control (the same architecture fed
# the training split's mean input): token-level states pooled by chunks or read by a resampler, the frozen LM as its own
# encoder, key/value injection, distillation. Each design's learning rate comes from its own search (`lr_group`).
LM_LAYER = 15  # the frozen LM's encoder layer: the middle of SmolLM2-135M's 30 (not searched)
DESIGNS: dict[str, tuple[dict, str]] = {
    "kv": ({"adapter.inject_into": "kv"}, "key/value injection (pooled MiniLM)"),
    "lmchunks": ({"adapter.embedding_model": f"lm-hidden:{LM_LAYER}", "adapter.pooling": "chunks"},
                 f"the LM's layer-{LM_LAYER} states, 8 chunk means"),
    "lmchunks-kv": ({"adapter.embedding_model": f"lm-hidden:{LM_LAYER}", "adapter.pooling": "chunks", "adapter.inject_into": "kv"},
                    f"the LM's layer-{LM_LAYER} states, 8 chunk means, key/value injection"),
    "lmchunks-lora": ({"adapter.embedding_model": f"lm-hidden:{LM_LAYER}", "adapter.pooling": "chunks", "adapter.encoder_rank": 8},
                      f"the LM's layer-{LM_LAYER} states through LoRA of rank 8 on the encoder pass, 8 chunk means"),
    "resampler": ({"adapter.pooling": "resampler"}, "MiniLM token states, resampler"),
    "distill": ({"train.distill": 1.0}, "pooled MiniLM, distilled from the LM reading the text"),
}
for _name, (_extra, _label) in DESIGNS.items():
    ARMS[f"{_name}-8"] = ("injection", {"adapter.inject_tokens": 8, **_extra}, None, f"Injection, 8 vectors: {_label}")
    # A constant input leaves an encoder nothing to train: that control is the same MLP fed the frozen encoder's mean
    _control = {k: v for k, v in _extra.items() if k != "adapter.encoder_rank"}
    ARMS[f"{_name}-constant-8"] = ("injection", {"adapter.inject_tokens": 8, **_control}, "constant",
                                   f"Control: constant input, 8 vectors: {_label}")
ARMS["static-8"] = ("prompt", {"adapter.prefix_len": 8}, None, "Static prefix, 8 vectors")
DESIGN_ARMS = [a for d in DESIGNS for a in (f"{d}-8", f"{d}-constant-8")]


def design_of(arm: str) -> str | None:
    """The design an arm belongs to (its own or its control's), or None for the pooled-MiniLM arms."""
    return next((d for d in DESIGNS if arm in (f"{d}-8", f"{d}-constant-8")), None)


def lr_group(arm: str) -> str:
    """Whose learning-rate search an arm trains with: a design's arm and its control each their own (`kv`,
    `kv-constant`); the earlier arms their method's (prompt, injection)."""
    design = design_of(arm)
    if design is None:
        return ARMS[arm][0]
    return design if arm == f"{design}-8" else f"{design}-constant"


def lr_shape(group: str) -> tuple[str, dict]:
    """The method and settings a learning-rate search trains: the 4-vector arm of a method, a design's arm or its
    control (with its adapter.ablation)."""
    if group in DESIGNS or group.removesuffix("-constant") in DESIGNS:
        method, shape, control, _ = ARMS[f"{group}-8"]
        return method, {**shape, **({"adapter.ablation": control} if control else {})}
    return group, ARMS["static-4" if group == "prompt" else "inject-4"][1]


HEADLINE = ["static-4", "inject-4", "shuffled-4", "constant-4"]
WINDOW = ["window-4", "window-shuffled-4"]
CURVE = ["inject-1", "inject-2", "inject-8"]
CONTEXT_ARMS = [a for a, (_, extra, _, _) in ARMS.items() if extra.get("adapter.embed_source") == "context"]
# Every arm whose encoder reads the preceding text (no `window` or `context` arms): the series trained to convergence.
# The designs are screened on one epoch first; the best of them is trained to early stopping once chosen.
PREVIOUS = [a for a, (_, extra, _, _) in ARMS.items() if extra.get("adapter.embed_source", "previous") == "previous"
            and a not in DESIGN_ARMS + ["static-8"]]
ARM_SETS = {"all": list(ARMS), "headline": HEADLINE, "previous": PREVIOUS, "designs": DESIGN_ARMS + ["static-8"]}
REFERENCE = ["baseline"] + [f"text-{m}" for m in TEXT_TOKENS] + ["baseline-context"]  # evaluation only, no seeds

IGNORED_SETTINGS = {"data.path", "train.threads", "train.progress", "train.seed"}  # where and how fast, not what


def lr_edge(search: dict) -> str | None:
    """"largest" or "smallest" when a search's chosen rate is at that edge of the rates it tried."""
    tried = [t["lr"] for t in search["trials"]]
    return "largest" if search["lr"] >= max(tried) else "smallest" if search["lr"] <= min(tried) else None
