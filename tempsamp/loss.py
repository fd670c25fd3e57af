"""The clipped GRPO objective with a k3 KL penalty to a reference policy.

    loss_t = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A) + beta * KL_t
    rho_t  = exp(logp_t - old_logp_t)
    KL_t   = exp(ref_t - logp_t) - (ref_t - logp_t) - 1        (k3 estimator: unbiased, >= 0)

With one update per rollout (the paper's setting) old_logp = logp.detach(), so rho = 1 and the
off-policy row's gradient is A_G * grad log pi(GT): an advantage-weighted likelihood term.

Off-policy rows (``offpolicy``) under several updates per rollout: their "old" log-probs are not a
behaviour policy (nobody sampled the GT), and clipping their ratio stops a low-probability GT token
from learning once it passes 1 + eps. ``offpolicy_loss="luffy"`` treats them as LUFFY does
(Yan et al. 2025, arXiv 2504.14945): behaviour probability 1, so the ratio is pi_theta itself, no
clipping, and optional policy shaping f(p) = p / (p + gamma) (gamma = 0.1 in LUFFY; 0 = off):
    loss_t = -A * f(exp(logp_t))        for tokens of off-policy rows
The default ``"ratio"`` treats them like on-policy tokens (the paper's one-update setting, where
rho = 1 and both readings differ only by LUFFY's weighting); the trainer refuses ``"ratio"`` with
more than one update per rollout (tempsamp.train.config).

Sampler/learner mismatch (a separate engine such as vLLM samples the completions): the tokens were
drawn from the sampler's distribution, not exactly from pi_old, so each on-policy token can be
reweighted by truncated importance sampling (as verl and TRL do), ``truncated_is_weights``:
    w_t = min(exp(old_logp_t - sampler_logp_t), C)           (detached; C = ``tis_cap``)
    loss_t = -w_t * min(rho_t A, clip(rho_t) A) + beta * KL_t
The GT row was never sampled by anyone: its weight is 1 (TIS leaves it as it was).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossStats:
    """Diagnostics of one loss evaluation (plain floats, ready to log)."""

    policy_loss: float
    kl: float  # k3 per token over the on-policy rows (the GT row was never sampled: k3 there estimates nothing)
    kl_offpolicy: float | None  # the same over the off-policy rows; None when there are none
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
    offpolicy: torch.Tensor | None = None,
    offpolicy_loss: str = "ratio",
    luffy_gamma: float = 0.1,
    is_weights: torch.Tensor | None = None,
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
    offpolicy: [N] bool, the off-policy (GT) rows; None = all on-policy.
    offpolicy_loss: "ratio" (off-policy tokens like on-policy ones) or "luffy" (see the module doc).
    is_weights: [N, L] per-token weights of the policy-gradient term (``truncated_is_weights``; the
      KL term is not reweighted); None = 1.
    """
    if aggregation not in ("token_mean", "sequence_mean"):
        raise ValueError(f"aggregation must be 'token_mean' or 'sequence_mean', not {aggregation!r}")
    if offpolicy_loss not in ("ratio", "luffy"):
        raise ValueError(f"offpolicy_loss must be 'ratio' or 'luffy', not {offpolicy_loss!r}")
    mask = mask.to(logp.dtype)
    off = torch.zeros(logp.shape[0], dtype=torch.bool, device=logp.device) if offpolicy is None else offpolicy.to(logp.device).bool()
    off_tok = off.unsqueeze(-1).expand_as(logp)
    adv = advantages.to(logp.dtype).unsqueeze(-1)
    old = logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(logp - old)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high) * adv
    surrogate = torch.minimum(unclipped, clipped)
    if offpolicy_loss == "luffy" and bool(off.any()):
        p = torch.exp(logp)
        shaped = p / (p + luffy_gamma) if luffy_gamma > 0 else p
        surrogate = torch.where(off_tok, shaped * adv, surrogate)
        clipped = torch.where(off_tok, unclipped, clipped)  # never clipped: for the clip statistics
    if is_weights is not None:
        surrogate = surrogate * is_weights.to(logp.dtype).detach()
    per_token = -surrogate
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
        on_mask, off_mask = mask * (~off_tok), mask * off_tok
        stats = LossStats(
            policy_loss=float((-surrogate * mask).sum() / n),
            kl=float((kl * on_mask).sum() / on_mask.sum().clamp(min=1.0)),
            kl_offpolicy=float((kl * off_mask).sum() / off_mask.sum().clamp(min=1.0)) if bool(off_mask.any()) else None,
            # tokens where min() picks the clipped term: their gradient is zero
            clip_fraction=float(((clipped < unclipped).to(mask.dtype) * mask).sum() / n),
            ratio_min=float(ratios.min()),
            ratio_max=float(ratios.max()),
            ratio_mean=float(ratios.mean()),
            tokens=int(mask.sum()),
        )
    return loss, stats


def truncated_is_weights(
    old_logp: torch.Tensor, sampler_logp: torch.Tensor, cap: float, offpolicy: torch.Tensor | None = None,
) -> torch.Tensor:
    """Truncated importance-sampling weights min(exp(old_logp - sampler_logp), cap), per token [N, L].

    old_logp: the learner's log-probs of the sampled tokens before the update (pi_old);
    sampler_logp: the sampling engine's log-probs of the same tokens (NaN where it gave none: weight 1).
    Rows flagged ``offpolicy`` (the GT completion, which no engine sampled) get weight 1.
    The weights carry no gradient.
    """
    if cap <= 0:
        raise ValueError(f"truncated_is_weights: cap must be positive, got {cap}")
    with torch.no_grad():
        weights = torch.exp(old_logp - sampler_logp).clamp(max=cap)
        weights = torch.where(torch.isnan(sampler_logp), torch.ones_like(weights), weights)
        if offpolicy is not None:
            weights = torch.where(offpolicy.to(weights.device).bool().unsqueeze(-1), torch.ones_like(weights), weights)
    return weights


@dataclass
class Mismatch:
    """How far the learner's log-probs are from the sampler's, over some tokens (sums, to add up across groups)."""

    abs_sum: float = 0.0
    tokens: int = 0
    max: float = 0.0
    over_0_1: int = 0  # tokens differing by more than 0.1 nats

    def add(self, other: "Mismatch") -> "Mismatch":
        return Mismatch(self.abs_sum + other.abs_sum, self.tokens + other.tokens, max(self.max, other.max),
                        self.over_0_1 + other.over_0_1)


def logprob_mismatch(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                     offpolicy: torch.Tensor | None = None) -> Mismatch:
    """|old_logp - sampler_logp| over the masked tokens of on-policy rows that have a sampler log-prob."""
    with torch.no_grad():
        keep = mask.bool() & ~torch.isnan(sampler_logp)
        if offpolicy is not None:
            keep &= ~offpolicy.to(keep.device).bool().unsqueeze(-1)
        diff = (old_logp.detach() - sampler_logp)[keep].abs().double()
        if diff.numel() == 0:
            return Mismatch()
        return Mismatch(float(diff.sum()), int(diff.numel()), float(diff.max()), int((diff > 0.1).sum()))
