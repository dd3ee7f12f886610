"""DreamerV3 math as pure functions: symlog, two-hot, categorical KL balancing, lambda-returns. Torch only.

Conventions: `K` bins or classes on the last dim, `S` categorical variables on the dim before it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def symlog(x: Tensor) -> Tensor:
    """sign(x) * log(1 + |x|): compresses large magnitudes, identity-like near 0."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    """Inverse of symlog: sign(x) * (exp(|x|) - 1)."""
    return torch.sign(x) * torch.expm1(x.abs())


def twohot_bins(num_bins: int = 255, low: float = -20.0, high: float = 20.0) -> Tensor:
    """[K] equally spaced bin centres in symlog space (DreamerV3: 255 bins over [-20, 20])."""
    if num_bins < 2:
        raise ValueError(f"need at least 2 bins, got {num_bins}")
    # built from integer steps so that the middle bin of a symmetric range is exactly 0
    steps = torch.arange(num_bins, dtype=torch.float64)
    return (low + steps * ((high - low) / (num_bins - 1))).float()


def twohot_encode(x: Tensor, bins: Tensor) -> Tensor:
    """x: [...] values in bin space -> [..., K] weights on the two nearest bins, summing to 1.

    Values outside the bin range put all weight on the edge bin.
    """
    bins = bins.to(x)
    x = x.clamp(bins[0], bins[-1])
    # index of the bin at or below x; clamp so that x == bins[-1] uses the last interval
    below = torch.searchsorted(bins, x.contiguous(), right=True).sub(1).clamp(0, len(bins) - 2)
    lo, hi = bins[below], bins[below + 1]
    w_hi = (x - lo) / (hi - lo)
    out = torch.zeros(*x.shape, len(bins), dtype=x.dtype, device=x.device)
    out.scatter_(-1, below.unsqueeze(-1), (1 - w_hi).unsqueeze(-1))
    out.scatter_add_(-1, (below + 1).unsqueeze(-1), w_hi.unsqueeze(-1))
    return out


def twohot_decode(logits: Tensor, bins: Tensor) -> Tensor:
    """logits: [..., K] -> [...] expected value in real space: symexp(sum softmax(logits) * bins)."""
    return symexp((logits.softmax(-1) * bins.to(logits)).sum(-1))


def twohot_loss(logits: Tensor, target: Tensor, bins: Tensor) -> Tensor:
    """Cross-entropy of logits [..., K] against the two-hot code of symlog(target) [...] -> [...]."""
    code = twohot_encode(symlog(target.to(logits)), bins)
    return -(code * logits.log_softmax(-1)).sum(-1)


def unimix_logits(logits: Tensor, mix: float = 0.01) -> Tensor:
    """Logits of (1 - mix) * softmax(logits) + mix / K over the last dim: no class gets probability 0."""
    if mix <= 0:
        return logits
    probs = (1 - mix) * logits.softmax(-1) + mix / logits.shape[-1]
    return probs.log()


def kl_categorical(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(p || q) of S independent categoricals: logits [..., S, K] -> [...] (summed over S)."""
    p_log, q_log = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return (p_log.exp() * (p_log - q_log)).sum((-2, -1))


def kl_balance(
    post_logits: Tensor,
    prior_logits: Tensor,
    dyn_scale: float = 0.5,
    rep_scale: float = 0.1,
    free_bits: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DreamerV3 KL balancing with free bits; logits [..., S, K] -> (loss, dyn_kl, rep_kl), each [...].

    dyn: KL(sg(post) || prior) trains the prior; rep: KL(post || sg(prior)) trains the posterior.
    Both are clipped below at `free_bits` nats (per sample, after summing over S), so that
    a KL already under the budget gives no gradient. The returned KLs are unclipped, for logging.
    """
    dyn = kl_categorical(post_logits.detach(), prior_logits)
    rep = kl_categorical(post_logits, prior_logits.detach())
    loss = dyn_scale * dyn.clamp(min=free_bits) + rep_scale * rep.clamp(min=free_bits)
    return loss, dyn, rep


def lambda_returns(
    rewards: Tensor,
    values: Tensor,
    continues: Tensor,
    gamma: float = 0.997,
    lam: float = 0.95,
) -> Tensor:
    """TD(lambda) returns of an imagined trajectory.

    rewards:   [B, H] reward received on the step t -> t+1
    values:    [B, H + 1] value estimates of states 0..H (values[:, H] bootstraps)
    continues: [B, H] 0 where the step t -> t+1 ends the episode, else 1
    returns:   [B, H] with R_t = r_t + gamma * c_t * ((1 - lam) * v_{t+1} + lam * R_{t+1}), R_H = v_H.
    """
    if values.shape[1] != rewards.shape[1] + 1 or continues.shape != rewards.shape:
        raise ValueError(
            f"expected rewards [B, H], continues [B, H], values [B, H + 1]; got {tuple(rewards.shape)}, "
            f"{tuple(continues.shape)}, {tuple(values.shape)}"
        )
    out = []
    nxt = values[:, -1]
    for t in reversed(range(rewards.shape[1])):
        nxt = rewards[:, t] + gamma * continues[:, t] * ((1 - lam) * values[:, t + 1] + lam * nxt)
        out.append(nxt)
    return torch.stack(out[::-1], 1)


def bce_continue_loss(logits: Tensor, continues: Tensor) -> Tensor:
    """Bernoulli negative log-likelihood of continue flags (1 = episode goes on); elementwise."""
    return F.binary_cross_entropy_with_logits(logits, continues.to(logits), reduction="none")
