"""JEPA losses and representation-collapse monitors as pure functions. Torch only."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def normed_targets(h: Tensor) -> Tensor:
    """Layer norm without affine over the feature dim: the regression target of V-JEPA. [..., D] -> [..., D]."""
    return F.layer_norm(h, (h.shape[-1],))


def jepa_l1(preds: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """Mean L1 between predictions and targets, averaged over mask generators.

    preds, targets: one [B, K_g, D] pair per mask generator (targets already layer-normed, detached).
    """
    if len(preds) != len(targets) or not preds:
        raise ValueError(f"need one target per prediction, got {len(preds)} predictions and {len(targets)} targets")
    return torch.stack([(p - t).abs().mean() for p, t in zip(preds, targets, strict=True)]).mean()


def embedding_std(emb: Tensor) -> Tensor:
    """Mean over dimensions of the per-dimension std across the batch. emb: [B, D] -> scalar (0 when collapsed)."""
    return emb.float().std(dim=0, unbiased=False).mean()


def effective_rank(emb: Tensor, eps: float = 1e-12) -> Tensor:
    """exp(entropy) of the normalised singular values of emb [M, D] (Roy & Vetterli); 1 when all rows agree."""
    s = torch.linalg.svdvals(emb.float())
    p = s / s.sum().clamp_min(eps)
    entropy = -(p * (p + eps).log()).sum()
    return entropy.exp()


@torch.no_grad()
def collapse_monitors(tokens: Tensor) -> dict[str, Tensor]:
    """Collapse monitors of target-encoder tokens [B, N, D]: std of clip embeddings, effective rank of tokens."""
    return {
        "target_std": embedding_std(tokens.mean(dim=1)),
        "target_rank": effective_rank(tokens.reshape(-1, tokens.shape[-1])),
    }
