"""The clipped GRPO objective with a k3 KL penalty to a reference policy.

    loss_t = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A) + beta * KL_t
    rho_t  = exp(logp_t - old_logp_t)
    KL_t   = exp(ref_t - logp_t) - (ref_t - logp_t) - 1        (k3 estimator: unbiased, >= 0)

With one update per rollout (the paper's setting) old_logp = logp.detach(), so rho = 1 and the
off-policy row's gradient is A_G * grad log pi(GT): an advantage-weighted likelihood term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossStats:
    """Diagnostics of one loss evaluation (plain floats, ready to log)."""

    policy_loss: float
    kl: float
    clip_fraction: float
    ratio_min: float
    ratio_max: float
    ratio_mean: float
    tokens: int


def grpo_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.04,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    aggregation: str = "token_mean",
    normalizer: float | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """Loss (scalar, to minimise) and statistics for completions of one or more groups.

    logp, old_logp, ref_logp: [N, L] per-token log-probs of the completion tokens (``logp`` with grad).
    advantages: [N], one per completion (broadcast over its tokens). mask: [N, L], 1 on real tokens.
    old_logp None -> logp.detach() (single update per rollout). ref_logp None -> no KL term.
    aggregation:
      "token_mean"    sum over every token of every row / number of tokens (long and short
                      completions weigh by their length; the default).
      "sequence_mean" mean over rows of each row's token mean (the original GRPO form).
    normalizer: with gradient accumulation over micro-batches, pass the step's total token count
      (token_mean) or row count (sequence_mean) so the accumulated gradient equals one big batch's.
    """
    if aggregation not in ("token_mean", "sequence_mean"):
        raise ValueError(f"aggregation must be 'token_mean' or 'sequence_mean', not {aggregation!r}")
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype).unsqueeze(-1)
    old = logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(logp - old)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if ref_logp is not None and beta != 0.0:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + beta * kl
    else:
        kl = torch.zeros_like(logp)

    if aggregation == "token_mean":
        loss = (per_token * mask).sum() / (normalizer or mask.sum().clamp(min=1.0))
    else:
        per_row = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        loss = per_row.sum() / (normalizer or max(per_row.numel(), 1))

    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        real = mask.bool()
        ratios = ratio[real] if real.any() else torch.ones(1, dtype=ratio.dtype)
        stats = LossStats(
            policy_loss=float((-torch.minimum(unclipped, clipped) * mask).sum() / n),
            kl=float((kl * mask).sum() / n),
            # tokens where min() picks the clipped term: their gradient is zero
            clip_fraction=float(((clipped < unclipped).to(mask.dtype) * mask).sum() / n),
            ratio_min=float(ratios.min()),
            ratio_max=float(ratios.max()),
            ratio_mean=float(ratios.mean()),
            tokens=int(mask.sum()),
        )
    return loss, stats
