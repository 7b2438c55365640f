"""Training: the loop for one adapter (`loop`) and how it takes a step (`steps`), what trials share (`shared`),
checkpoints (`checkpoint`), evaluation, generation and precision. It knows nothing of Ray or MLflow;
`python -m embinject.train` is its command (`__main__`)."""

from .checkpoint import load_checkpoint, save_checkpoint, write_outputs
from .evaluation import eval_subset
from .loop import Diverged, Report, train
from .steps import checkpointed_lm
from .shared import (
    Prepared,
    ablated,
    autocast_dtype,
    baseline_perplexity,
    encoder_ids,
    prepare,
    release_shared_lms,
    resolve_device,
    scored_labels,
    shared_lm,
)

__all__ = [
    "Diverged",
    "Prepared",
    "Report",
    "ablated",
    "autocast_dtype",
    "baseline_perplexity",
    "checkpointed_lm",
    "encoder_ids",
    "eval_subset",
    "load_checkpoint",
    "prepare",
    "release_shared_lms",
    "resolve_device",
    "save_checkpoint",
    "scored_labels",
    "shared_lm",
    "train",
    "write_outputs",
]
