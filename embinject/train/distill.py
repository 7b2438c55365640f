"""Distillation (`train.distill`): the teacher is the frozen LM reading the text before each window as ordinary
tokens; the adapted model, which sees only what the adapter makes of that text, is pulled towards the teacher's
next-token distribution on the scored tokens, beside the NLL.

The teacher's distribution at every window position is kept as its `train.distill_top_k` most likely tokens and
their log-probabilities (the rest as one bucket): 49k-wide logits for every training token would not fit (6 GB for
1,024 windows of 64 tokens in half precision), the top 64 take 25 MB. The KL divergence is then exact between the
two distributions coarsened to those tokens plus the rest, a lower bound of the full one. Computed once per
(model, precision, windows, k) and kept on disk beside the embeddings: every trial and epoch reads it.
"""

from __future__ import annotations

import hashlib

import torch

from ..fsutil import cached_tensors
from ..models import cache_dir

TEACHER_INDEX, TEACHER_LOGP = "teacher_index", "teacher_logp"  # batch keys: [B, T-1, k] int32 and float16


@torch.no_grad()
def teacher_top_k(
    lm, previous: torch.Tensor, tokens: torch.Tensor, k: int, device: str, amp: torch.dtype | None, batch_size: int = 16
) -> dict[str, torch.Tensor]:
    """The frozen LM's k most likely next tokens at window positions 0..T-2 when it reads `previous` first."""
    index, logp = [], []
    P = previous.shape[1]
    for i in range(0, tokens.shape[0], batch_size):
        ids = torch.cat([previous[i : i + batch_size], tokens[i : i + batch_size]], dim=1).to(device)
        with torch.autocast(device_type=device.split(":")[0], dtype=amp, enabled=amp is not None):
            hidden = lm.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state[:, P : P + tokens.shape[1] - 1]
            logits = lm.get_output_embeddings()(hidden)
        top = logits.float().log_softmax(-1).topk(k, dim=-1)
        index.append(top.indices.to(torch.int32).cpu())
        logp.append(top.values.to(torch.float16).cpu())
    return {TEACHER_INDEX: torch.cat(index), TEACHER_LOGP: torch.cat(logp)}


def cached_teacher(
    lm, model_path: str, previous: torch.Tensor, tokens: torch.Tensor, k: int, device: str, amp: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """`teacher_top_k`, computed once and kept on disk (a truncated or foreign file is rebuilt)."""
    h = hashlib.sha256(f"{model_path}|{amp}|{k}|{tuple(previous.shape)}|{tuple(tokens.shape)}".encode())
    h.update(previous.to(torch.int64).contiguous().numpy().tobytes())
    h.update(tokens.to(torch.int64).contiguous().numpy().tobytes())
    file = cache_dir("teacher") / f"{h.hexdigest()[:24]}.safetensors"
    expected = (tokens.shape[0], tokens.shape[1] - 1, k)
    shape = lambda t: None if tuple(t[TEACHER_INDEX].shape) == expected else f"shape {list(t[TEACHER_INDEX].shape)}"  # noqa: E731
    return cached_tensors(
        file, lambda: teacher_top_k(lm, previous, tokens, k, device, amp), shape, "the teacher's top-k"
    )


def distill_kl(logits: torch.Tensor, index: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Summed KL(teacher || student) over scored positions ([n, V] student logits, [n, k] teacher top-k), on the
    teacher's k tokens plus one bucket for the rest."""
    student = logits.float().log_softmax(-1).gather(1, index.long())
    teacher = teacher_logp.float()
    p = teacher.exp()
    rest_teacher = (1 - p.sum(1)).clamp_min(1e-6)
    rest_student = (1 - student.exp().sum(1)).clamp_min(1e-6)
    return (p * (teacher - student)).sum() + (rest_teacher * (rest_teacher.log() - rest_student.log())).sum()
