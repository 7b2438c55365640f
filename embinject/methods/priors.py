"""Initial values for learnable prefix vectors, drawn from priors over the vocabulary embeddings.

`normal` ignores the vocabulary but matches its scale; `vocab` copies random real token
embeddings; `gaussian` / `gaussian-diag` sample a Gaussian fitted to the embedding table (full or
diagonal covariance); `exclusion` rejects Gaussian samples closer than `radius` to any token;
`text` uses the embeddings of an init text (repeated to length); `interpolate` places the vectors
on a path between two task clusters (the mean token embeddings of two texts), with Gaussian noise
of the texts' own per-dimension spread.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


def _fitted_gaussian(table: torch.Tensor, n: int, g: torch.Generator, diagonal: bool) -> torch.Tensor:
    mean = table.mean(0)
    z = torch.randn(n, table.shape[1], generator=g, dtype=torch.float64)
    if diagonal:
        return (mean.double() + z * table.double().std(0)).float()
    centred = (table - mean).double()
    cov = centred.T @ centred / (table.shape[0] - 1)
    chol = torch.linalg.cholesky(cov + 1e-6 * torch.eye(cov.shape[0], dtype=torch.float64))
    return (mean.double() + z @ chol.T).float()


def _text_embeddings(tokenizer, text: str, table: torch.Tensor, key: str) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if tokenizer is not None and text else []
    if not ids:
        raise ConfigError(f"{key}: the init text has no tokens")
    return table[torch.tensor(ids)]


def init_vectors(
    kind: str,
    n: int,
    table: torch.Tensor,
    g: torch.Generator,
    *,
    tokenizer=None,
    text: str = "",
    radius: float = 0.5,
    text_b: str = "",
) -> torch.Tensor:
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
        raise ConfigError(
            f"adapter.init_radius: no Gaussian sample lies {radius} away from every token embedding; "
            "use a smaller radius"
        )
    if kind == "text":
        emb = _text_embeddings(tokenizer, text, table, "adapter.init_text")
        return emb[torch.arange(n) % emb.shape[0]].clone()
    if kind == "interpolate":
        a = _text_embeddings(tokenizer, text, table, "adapter.init_text")
        b = _text_embeddings(tokenizer, text_b, table, "adapter.init_text_b")
        t = torch.linspace(0, 1, n).unsqueeze(1) if n > 1 else torch.full((1, 1), 0.5)
        centre = (1 - t) * a.mean(0) + t * b.mean(0)
        return centre + torch.randn(n, table.shape[1], generator=g) * torch.cat([a, b]).std(0)
    raise ConfigError(f"adapter.init: unknown prior '{kind}'")
