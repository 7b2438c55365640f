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
    "fourier-4": (
        "injection",
        {"adapter.inject_tokens": 4, "adapter.embedding_model": "fourier"},
        None,
        "Injection, 4 vectors (fourier)",
    ),
    "lm-mean-4": (
        "injection",
        {"adapter.inject_tokens": 4, "adapter.embedding_model": "lm-mean"},
        None,
        "Injection, 4 vectors (lm-mean)",
    ),
    "shuffled-1": ("injection", {"adapter.inject_tokens": 1}, "shuffled", "Control: shuffled embeddings, 1 vector"),
    "shuffled-8": ("injection", {"adapter.inject_tokens": 8}, "shuffled", "Control: shuffled embeddings, 8 vectors"),
    # At 4 vectors the constant input is the stronger control; these check whether that holds at 1 and 8.
    "constant-1": ("injection", {"adapter.inject_tokens": 1}, "constant", "Control: constant input, 1 vector"),
    "constant-8": ("injection", {"adapter.inject_tokens": 8}, "constant", "Control: constant input, 8 vectors"),
    # The seed report's mode: the encoder reads the scored window itself. Same test windows and tokens as above.
    "window-4": (
        "injection",
        {"adapter.inject_tokens": 4, "adapter.embed_source": "window"},
        None,
        "Injection, 4 vectors, encoder reads the scored window (`window`)",
    ),
    "window-shuffled-4": (
        "injection",
        {"adapter.inject_tokens": 4, "adapter.embed_source": "window"},
        "shuffled",
        "Control: shuffled embeddings, 4 vectors (`window`)",
    ),
    # The quickstart's mode: the encoder reads the window's first tokens, which the LM reads too and is not scored on.
    # These arms are scored on the window's last 64 - 8 tokens, so they form their own table with their own baseline.
    "context-4": (
        "injection",
        {"adapter.inject_tokens": 4, **CONTEXT},
        None,
        f"Injection, 4 vectors, encoder reads the window's first {CONTEXT_READ} tokens (`context`)",
    ),
    "context-constant-4": (
        "injection",
        {"adapter.inject_tokens": 4, **CONTEXT},
        "constant",
        "Control: constant input, 4 vectors (`context`)",
    ),
}
# The earlier series' arms: every one whose encoder reads the preceding text (no `window` or `context` arms) is the
# series trained to convergence. The designs below are screened on one epoch first; the best is trained on once chosen.
PREVIOUS = [a for a, (_, extra, _, _) in ARMS.items() if extra.get("adapter.embed_source", "previous") == "previous"]

# Designs beyond one pooled MiniLM vector, screened at k = 8 beside their constant-input controls (the same architecture
# fed the training split's mean input), then their shuffled controls and the compression curve at the other k:
# token-level states pooled by chunks or read by a resampler, the frozen LM as its own encoder, key/value injection,
# distillation. Each design's learning rate, and each of its controls', comes from its own search at k = 8 (`lr_group`).
LM_LAYER = 15  # the frozen LM's encoder layer: the middle of SmolLM2-135M's 30 (not searched)
DESIGNS: dict[str, tuple[dict, str]] = {
    "kv": ({"adapter.inject_into": "kv"}, "key/value injection (pooled MiniLM)"),
    "lmchunks": (
        {"adapter.embedding_model": f"lm-hidden:{LM_LAYER}", "adapter.pooling": "chunks"},
        f"the LM's layer-{LM_LAYER} states, a chunk mean per vector",
    ),
    "lmchunks-kv": (
        {"adapter.embedding_model": f"lm-hidden:{LM_LAYER}", "adapter.pooling": "chunks", "adapter.inject_into": "kv"},
        f"the LM's layer-{LM_LAYER} states, a chunk mean per vector, key/value injection",
    ),
    # the text-m rows show the last few tokens carry most of the gain (the last one alone about 15%): chunks that grow
    # with distance from the window, the last three tokens one vector each (`adapter.pooling: recent`)
    "lmrecent-kv": (
        {"adapter.embedding_model": f"lm-hidden:{LM_LAYER}", "adapter.pooling": "recent", "adapter.inject_into": "kv"},
        f"the LM's layer-{LM_LAYER} states, chunks growing with distance from the window, key/value injection",
    ),
    # the best screened design with its encoder trained: LoRA on the pass that encodes the text (as 500xCompressor's)
    "lmchunks-lora-kv": (
        {
            "adapter.embedding_model": f"lm-hidden:{LM_LAYER}",
            "adapter.pooling": "chunks",
            "adapter.encoder_rank": 8,
            "adapter.inject_into": "kv",
        },
        f"the LM's layer-{LM_LAYER} states through LoRA of rank 8 on the encoder pass, a chunk mean per "
        "vector, key/value injection",
    ),
    "chunks": ({"adapter.pooling": "chunks"}, "MiniLM token states, a chunk mean per vector"),
    "resampler": ({"adapter.pooling": "resampler"}, "MiniLM token states, resampler"),
    "distill": ({"train.distill": 1.0}, "pooled MiniLM, distilled from the LM reading the text"),
}
SCREEN_K = 8
CURVE_K = (1, 2, 4, 16)  # with SCREEN_K, the compression curve the arms span
CONTROL_LABELS = {"constant": "constant input", "shuffled": "shuffled inputs"}
# design arm -> (design, k, control or None), for every arm the block below adds
DESIGN_OF: dict[str, tuple[str, int, str | None]] = {}


def _frozen(design: str) -> dict:
    return {key: v for key, v in DESIGNS[design][0].items() if key != "adapter.encoder_rank"}


# A constant or shuffled input leaves an encoder nothing to learn from the text, so a control is the same MLP over the
# frozen encoder: a design that differs from another only by its encoder's LoRA shares that design's controls (the same
# settings, trained once), e.g. lmchunks-lora-kv's constant control is lmchunks-kv-constant-k.
CONTROLS_OF = {d: next((o for o in DESIGNS if o != d and DESIGNS[o][0] == _frozen(d)), d) for d in DESIGNS}


def control_arm(design: str, k: int, control: str) -> str:
    """The arm that is `design`'s constant or shuffled control at k."""
    return f"{CONTROLS_OF[design]}-{control}-{k}"


def _add_design_arm(design: str, k: int, control: str | None) -> str:
    extra, label = DESIGNS[design]
    name = control_arm(design, k, control) if control else f"{design}-{k}"
    if control and CONTROLS_OF[design] != design:
        return name  # another design's control, added with that design
    if control:
        extra = _frozen(design)
    shape = {"adapter.inject_tokens": k, **extra}
    text = (
        f"Control: {CONTROL_LABELS[control]}, {k} vectors: {label}" if control else f"Injection, {k} vectors: {label}"
    )
    ARMS[name] = ("injection", shape, control, text)
    DESIGN_OF[name] = (design, k, control)
    return name


# Order is priority: the screen (each design and its constant control at k = 8), the static prefix beside it, the
# shuffled controls, then the curve (each design with its constant control at every other k, the pooled vector and
# the static prefix at the same k).
DESIGN_ARMS = list(dict.fromkeys(_add_design_arm(d, SCREEN_K, c) for d in DESIGNS for c in (None, "constant")))
ARMS["static-8"] = ("prompt", {"adapter.prefix_len": 8}, None, "Static prefix, 8 vectors")
SHUFFLED_ARMS = list(dict.fromkeys(_add_design_arm(d, SCREEN_K, "shuffled") for d in DESIGNS))
for _k in (1, 2, 16):
    ARMS[f"static-{_k}"] = ("prompt", {"adapter.prefix_len": _k}, None, f"Static prefix, {_k} vector{'s' * (_k > 1)}")
ARMS["constant-2"] = ("injection", {"adapter.inject_tokens": 2}, "constant", "Control: constant input, 2 vectors")
ARMS["inject-16"] = ("injection", {"adapter.inject_tokens": 16}, None, "Injection, 16 vectors (MiniLM)")
ARMS["constant-16"] = ("injection", {"adapter.inject_tokens": 16}, "constant", "Control: constant input, 16 vectors")
CURVE_ARMS = {d: [_add_design_arm(d, k, c) for k in CURVE_K for c in (None, "constant")] for d in DESIGNS}
REFERENCE_CURVE = ["static-1", "static-2", "static-4", "static-16", "constant-2", "inject-16", "constant-16"]
# Does the content share grow with data? The pooled vector and its constant control at 8 vectors on 4x the training
# windows (the Wikipedia sample's training split holds 4,910 with preceding text); the same validation and test windows,
# the rate of injection's search, one epoch, and patience 5 (16 evaluations instead of 4: patience 3 could stop at a
# spike). Then the best design of the screen (the LM's own states, chunk-pooled, as keys/values) and its control the
# same way, each at its own searched rate; its rows compare with the pooled vector on the same windows. Then whether it
# was the data or the steps: the same pair over the 1,024 windows four times, as many steps as 4,096 windows once. Then
# more windows than the sample holds side by side: 8,192 that overlap, one every 32 tokens (`data.train_stride`). Their
# epoch is 1,024 steps: early stopping watches the whole validation split every 64 steps, as the 64-window subset's
# noise would stop a run on a plateau long before the epoch's end.
# Last, more distinct text: 8,192 windows from the sample's training articles and other Wikipedia articles (the shared
# WikiText-2 articles, appended to the training documents; `train_arm.study_data` refuses extra text that repeats the
# validation or test articles), early-stopped as the overlapping windows.
MORE_WINDOWS = 4096
MORE_EPOCHS = 4
OVERLAPPING, STRIDE = 8192, 32
MORE_TEXT, MORE_TEXT_CORPUS = 8192, "wikitext2_valid_detok"
POOLED_PAIR = ("inject-8", "constant-8")
BEST_PAIR = (f"lmchunks-kv-{SCREEN_K}", f"lmchunks-kv-constant-{SCREEN_K}")
# suffix -> (overrides, label, the (arm, its constant control) pairs it repeats)
MORE_TRAINING: dict[str, tuple[dict, str, list[tuple[str, str]]]] = {
    f"w{MORE_WINDOWS}": (
        {"data.train_samples": MORE_WINDOWS, "train.patience": 5},
        f"{MORE_WINDOWS:,} training windows",
        [POOLED_PAIR, BEST_PAIR],
    ),
    f"e{MORE_EPOCHS}": (
        {"train.max_epochs": MORE_EPOCHS, "train.patience": 5},
        f"{MORE_EPOCHS} epochs over 1,024 windows",
        [BEST_PAIR],
    ),
    f"w{OVERLAPPING}s{STRIDE}": (
        {
            "data.train_samples": OVERLAPPING,
            "data.train_stride": STRIDE,
            "train.eval_windows": None,
            "train.eval_every": 64,
            "train.patience": 5,
        },
        f"{OVERLAPPING:,} overlapping training windows (one every {STRIDE} tokens)",
        [BEST_PAIR],
    ),
    f"w{MORE_TEXT}t": (
        {"data.train_samples": MORE_TEXT, "train.eval_windows": None, "train.eval_every": 64, "train.patience": 5},
        f"{MORE_TEXT:,} training windows with other articles' text",
        [BEST_PAIR],
    ),
}
EXTRA_TEXT = {f"w{MORE_TEXT}t": MORE_TEXT_CORPUS}  # suffix -> the shared corpus whose documents its arms also train on
REPEAT_OF: dict[str, str] = {}  # arm trained longer -> the one-epoch, 1,024-window arm it repeats
MORE_TRAINING_ARMS: dict[str, list[str]] = {}  # suffix -> its arms
for _suffix, (_extra, _tail, _pairs) in MORE_TRAINING.items():
    for _arm in (a for pair in _pairs for a in pair):
        _method, _shape, _control, _label = ARMS[_arm]
        REPEAT_OF[f"{_arm}-{_suffix}"] = _arm
        ARMS[f"{_arm}-{_suffix}"] = (_method, {**_shape, **_extra}, _control, f"{_label}, {_tail}")
        MORE_TRAINING_ARMS.setdefault(_suffix, []).append(f"{_arm}-{_suffix}")


def extra_corpus(arm: str) -> str | None:
    """The shared corpus (a folder beside --data) whose documents an arm trains on besides the study's own, or None."""
    return next((corpus for suffix, corpus in EXTRA_TEXT.items() if arm in MORE_TRAINING_ARMS[suffix]), None)


def design_of(arm: str) -> str | None:
    """The design an arm belongs to (its own or a control's, at any k), or None for the pooled-MiniLM arms."""
    return DESIGN_OF[arm][0] if arm in DESIGN_OF else None


def lr_group(arm: str) -> str:
    """Whose learning-rate search an arm trains with: a design's arm and each of its controls their own, searched at
    k = 8 (`kv`, `kv-constant`, `kv-shuffled`) and used at every k; the earlier arms their method's (prompt,
    injection)."""
    arm = REPEAT_OF.get(arm, arm)  # trained longer, an arm keeps the rate of the arm it repeats
    if arm not in DESIGN_OF:
        return ARMS[arm][0]
    design, _, control = DESIGN_OF[arm]
    return f"{design}-{control}" if control else design


def lr_shape(group: str) -> tuple[str, dict]:
    """The method and settings a learning-rate search trains: the 4-vector arm of a method, a design's arm or one of
    its controls at k = 8 (with its adapter.ablation)."""
    if f"{group}-{SCREEN_K}" in DESIGN_OF:
        method, shape, control, _ = ARMS[f"{group}-{SCREEN_K}"]
        return method, {**shape, **({"adapter.ablation": control} if control else {})}
    return group, ARMS["static-4" if group == "prompt" else "inject-4"][1]


HEADLINE = ["static-4", "inject-4", "shuffled-4", "constant-4"]
WINDOW = ["window-4", "window-shuffled-4"]
CURVE = ["inject-1", "inject-2", "inject-8"]
CONTEXT_ARMS = [a for a, (_, extra, _, _) in ARMS.items() if extra.get("adapter.embed_source") == "context"]
# `--arms designs` screens; `<design>-curve` (kv-curve, ...) adds that design's other k with the references beside them
ARM_SETS = {
    "all": list(ARMS),
    "headline": HEADLINE,
    "previous": PREVIOUS,
    "designs": DESIGN_ARMS + ["static-8"],
    "design-controls": SHUFFLED_ARMS,
    "more-windows": MORE_TRAINING_ARMS[f"w{MORE_WINDOWS}"],
    "more-epochs": MORE_TRAINING_ARMS[f"e{MORE_EPOCHS}"],
    "overlapping-windows": MORE_TRAINING_ARMS[f"w{OVERLAPPING}s{STRIDE}"],
    "more-text": MORE_TRAINING_ARMS[f"w{MORE_TEXT}t"],
    **{f"{d}-curve": arms + [a for a in REFERENCE_CURVE if a not in arms] for d, arms in CURVE_ARMS.items()},
}
REFERENCE = ["baseline"] + [f"text-{m}" for m in TEXT_TOKENS] + ["baseline-context"]  # evaluation only, no seeds

# where and how fast, not what; train.dtype is compared as the precision it resolved to (`run.check_precision`)
IGNORED_SETTINGS = {"data.path", "train.threads", "train.progress", "train.seed", "train.dtype"}


def lr_edge(search: dict) -> str | None:
    """ "largest" or "smallest" when a search's chosen rate is at that edge of the rates it tried."""
    tried = [t["lr"] for t in search["trials"]]
    return "largest" if search["lr"] >= max(tried) else "smallest" if search["lr"] <= min(tried) else None


# ---------------------------------------------------------------- the learning-rate rule (issue 53, item 1)
# An arm's rate is searched at the budget it is reported at: the same arm (its own k and its own input, controls
# included), the same training windows, epochs and early stopping, every trial run to the end (no pruning) and scored
# on the whole validation split, over at least these rates and one step beyond the best on each side
# (`run.py --lr-at-budget ARM`). A row whose rate was not is marked, and a content share that rests on such a control
# gets no verdict.
LR_RULE_GRID = (0.001, 0.002, 0.00376)
SEARCHED = "searched at this budget"
SEARCHED_PRUNED = "searched at this budget, pruned search"
BORROWED = "rate borrowed"
NOT_AT_BUDGET = "rate not searched at this budget"
NO_SEARCH = "no search of its own"
# the budget fields two searches' and arms' budgets must share (pruning is told apart: SEARCHED_PRUNED)
BUDGET_KEYS = ("windows", "stride", "extra_text", "epochs", "steps", "eval_every", "validation", "patience")


def searched_arm(group: str) -> str:
    """The arm whose shape a group's learning-rate search trains (`lr_shape`): a design's or control's arm at k = 8,
    a method's 4-vector arm."""
    if f"{group}-{SCREEN_K}" in DESIGN_OF:
        return f"{group}-{SCREEN_K}"
    return "static-4" if group == "prompt" else "inject-4"


def budget_of(config: dict, extra_text: str | None = None, tune: dict | None = None) -> dict:
    """What a run (or a search's trials) trained on: training windows (stride, extra text), epochs, the steps those
    allow, early stopping (evaluated every n steps on which validation windows, patience) and pruning. `config` is a
    nested config dict (a record's, or a search's YAML); `tune` a search's tune section (its scheduler)."""
    data, train = config.get("data", {}), config.get("train", {})
    windows, epochs, batch = data.get("train_samples"), train.get("max_epochs", 1), train.get("batch_size", 8)
    steps = epochs * -(-windows // batch) if windows else None
    if train.get("max_steps"):
        steps = min(steps, train["max_steps"]) if steps else train["max_steps"]
    subset = train.get("eval_windows", 64) if "eval_windows" in train else 64  # the Config default: 64 windows
    sched = (tune or {}).get("scheduler") or {}
    pruning = None
    if tune is not None and sched.get("type", "none") not in (None, "none"):
        pruning = (
            f"{sched['type']} (max_t {sched.get('max_t')}, grace {sched.get('grace_period')}, "
            f"reduction {sched.get('reduction_factor')})"
        )
    validation = "all validation windows" if subset is None else f"a fixed subset of {subset} validation windows"
    return {
        "windows": windows,
        "seq_len": data.get("seq_len"),
        "stride": data.get("train_stride"),
        "extra_text": extra_text,
        "epochs": epochs,
        "steps": steps,
        "eval_every": train.get("eval_every"),
        "validation": validation,
        "patience": train.get("patience"),
        "pruning": pruning,
    }


def lr_status(arm: str, budget: dict, search_arm: str | None, search_budget: dict | None) -> str:
    """Whether an arm's rate was searched at the budget it is reported at (SEARCHED, SEARCHED_PRUNED) or not: searched
    for another arm (BORROWED), for this arm at another budget (NOT_AT_BUDGET), or never (NO_SEARCH)."""
    if search_arm is None or search_budget is None:
        return NO_SEARCH
    if search_arm != arm and search_arm != REPEAT_OF.get(arm):
        return BORROWED
    if any(budget.get(k) != search_budget.get(k) for k in BUDGET_KEYS):
        return NOT_AT_BUDGET
    return SEARCHED_PRUNED if search_budget.get("pruning") else SEARCHED


def rate_searched(status: str) -> bool:
    """A rate a verdict may rest on: searched for this arm at this budget (a pruned search included, and marked)."""
    return status in (SEARCHED, SEARCHED_PRUNED)
