"""Initial values for learnable prefix vectors, drawn from priors over the vocabulary embeddings.

`normal` ignores the vocabulary but matches its scale; `vocab` copies random real token
embeddings; `gaussian` / `gaussian-diag` sample a Gaussian fitted to the embedding table (full or
diagonal covariance); `exclusion` rejects Gaussian samples closer than `radius` to any token;
`text` uses the embeddings of an init text (repeated to length).
"""
from __future__ import annotations

import torch

from ..config import ConfigError


def _fitted_gaussian(table: torch.Tensor, n: int, g: torch.Generator, diagonal: bool) -> torch.Tensor:
    mean = table.mean(0)
    z = torch.randn(n, table.shape[1], generator=g, dtype=torch.float64)
    if diagonal:
        return (mean.double() + z * table.double().std(0)).float()
    centred = (table - mean).double()
    cov = centred.T @ centred / (table.shape[0] - 1)
    chol = torch.linalg.cholesky(cov + 1e-6 * torch.eye(cov.shape[0], dtype=torch.float64))
    return (mean.double() + z @ chol.T).float()


def init_vectors(kind: str, n: int, table: torch.Tensor, g: torch.Generator, *, tokenizer=None,
                 text: str = "", radius: float = 0.5) -> torch.Tensor:
    """`n` vectors of the table's width; deterministic for a given generator state."""
    table = table.detach().float().cpu()
    if n == 0:
        return table.new_zeros(0, table.shape[1])
    if kind == "normal":
        return torch.randn(n, table.shape[1], generator=g) * table.std()
    if kind == "vocab":
        return table[torch.randint(0, table.shape[0], (n,), generator=g)].clone()
    if kind in ("gaussian", "gaussian-diag"):
        return _fitted_gaussian(table, n, g, diagonal=kind == "gaussian-diag")
    if kind == "exclusion":
        kept: list[torch.Tensor] = []
        for _ in range(200):
            cand = _fitted_gaussian(table, max(n, 16), g, diagonal=False)
            nearest = torch.cdist(cand, table).min(dim=1).values
            kept.extend(cand[nearest >= radius])
            if len(kept) >= n:
                return torch.stack(kept[:n])
        raise ConfigError(f"adapter.init_radius: no Gaussian sample lies {radius} away from every token embedding; use a smaller radius")
    if kind == "text":
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] if tokenizer is not None else []
        if not ids:
            raise ConfigError("adapter.init_text: the init text has no tokens")
        ids = (ids * (n // len(ids) + 1))[:n]
        return table[torch.tensor(ids)].clone()
    raise ConfigError(f"adapter.init: unknown prior '{kind}'")
