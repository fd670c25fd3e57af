"""Group advantages with an off-policy (ground-truth) sample: the heart of TempSamp-R1.

Rewards come as [groups, G] with a boolean mask of the same shape marking off-policy rows (by
flag, never by position). Every strategy below is a few lines of tensor code over whole batches.

Normalisation: A = (r - mean) / (std + eps) with the *population* std (the paper's formula
std(r_1..r_G), which makes the normalised group exactly zero-mean and unit-variance); ``std="sample"``
gives the unbiased std that TRL and DeepSeekMath's code use. eps = 1e-6. A group (or, for anchoring,
an on-policy subgroup) whose rewards are all equal gets advantages of exactly 0, never NaN.
"""

from __future__ import annotations

import math

import torch

STRATEGIES = ("grpo", "mixed", "reward_scaling", "anchor", "shaping", "shaping+anchor")
# What anchoring gives the GT row when every on-policy reward of its group is equal (docs/decisions.md):
#   "literal"  lambda_off * max(on-policy advantages) = lambda_off * 0 = 0: the group teaches nothing.
#   "joint"    the GT row's jointly normalised advantage (as under ``mixed``), floored at 0; the tied
#              on-policy rows keep 0. Measured on the toy and the demo; the default is "joint".
ANCHOR_TIED = ("literal", "joint")


def shape_rewards(r, tau: float = 0.8, alpha1: float = 0.01, alpha2: float = 1.0) -> torch.Tensor:
    """The paper's non-linear soft shaping, applied element-wise.

        r~ = tau + alpha1 * ln((r - tau) + 1)                           if r >= tau
        r~ = tau - (exp(alpha2 * (tau - r)) - 1) / (exp(alpha2) - 1)    if r < tau

    It compresses the high region (the ground truth stops dominating the group statistics) and
    stretches the low region (poor samples become distinguishable). Continuous and increasing;
    with the defaults r~(1) = 0.8018, r~(0.8) = 0.8, r~(0) = 0.0867.
    """
    r = torch.as_tensor(r, dtype=torch.float64)
    high = tau + alpha1 * torch.log1p(torch.clamp(r - tau, min=0.0))
    low = tau - torch.expm1(alpha2 * torch.clamp(tau - r, min=0.0)) / math.expm1(alpha2)
    return torch.where(r >= tau, high, low)


def _normalise(r: torch.Tensor, mask: torch.Tensor, std: str, eps: float) -> torch.Tensor:
    """(r - mean) / (std + eps) over the entries of each row where ``mask`` is True; 0 elsewhere."""
    n = mask.sum(-1, keepdim=True)
    mean = (r * mask).sum(-1, keepdim=True) / n.clamp(min=1)
    sq = (((r - mean) * mask) ** 2).sum(-1, keepdim=True)
    dof = (n - 1) if std == "sample" else n
    sd = torch.sqrt(sq / dof.clamp(min=1))
    big = torch.finfo(r.dtype).max
    spread = torch.where(mask, r, -big).amax(-1, keepdim=True) - torch.where(mask, r, big).amin(-1, keepdim=True)
    adv = (r - mean) / (sd + eps)
    return torch.where(mask & (spread > 0), adv, torch.zeros_like(adv))


def group_advantages(
    rewards,
    offpolicy,
    strategy: str = "shaping",
    *,
    bonus=None,
    std: str = "population",
    eps: float = 1e-6,
    lambda_off: float = 1.2,
    offpolicy_scale: float = 0.8,
    tau: float = 0.8,
    alpha1: float = 0.01,
    alpha2: float = 1.0,
    anchor_tied: str = "joint",
) -> torch.Tensor:
    """Advantages [groups, G] (float64) for rewards [groups, G] and an off-policy mask [groups, G].

    Strategies (the paper's ablation rows):
      grpo            no off-policy row allowed; joint normalisation (plain GRPO).
      mixed           the GT row joins the group; plain joint normalisation. The biased baseline:
                      the GT's reward inflates the mean, so even good on-policy samples go negative.
      reward_scaling  the off-policy reward is multiplied by ``offpolicy_scale`` (default 0.8)
                      before joint normalisation. The paper names this variant without a formula;
                      this is the project's reading (docs/decisions.md): shrink the GT's reward so
                      it dominates the group statistics less, keep everything else as in ``mixed``.
      anchor          on-policy advantages are normalised among on-policy rows only; the
                      off-policy row gets A_G = lambda_off * max(on-policy advantages),
                      lambda_off = 1.2. If every on-policy reward is equal the max is 0, so the
                      literal rule gives A_G = 0 and the group is dropped: exactly the sparse case
                      (every sample at IoU 0) the paper targets. ``anchor_tied`` chooses:
                      "literal" (A_G = 0) or "joint" (default: A_G = the GT row's jointly
                      normalised advantage, as under ``mixed``, floored at 0 so that anchoring
                      never pushes away from the GT; the tied on-policy rows keep 0).
      shaping         ``shape_rewards`` on every reward, then joint normalisation.
      shaping+anchor  ``shape_rewards``, then ``anchor``.

    bonus: optional [groups, G] rewards added *after* shaping/scaling (the CoT stage's format
      reward): shaping's tau = 0.8 is a point on the [0, 1] task-reward scale, so the task reward is
      shaped alone and the format reward joins it unshaped.
    """
    r = torch.as_tensor(rewards, dtype=torch.float64)
    off = torch.as_tensor(offpolicy, dtype=torch.bool, device=r.device)
    if r.ndim != 2 or off.shape != r.shape:
        raise ValueError(f"rewards and offpolicy must both be [groups, G]; got {tuple(r.shape)} and {tuple(off.shape)}")
    if not torch.isfinite(r).all():
        raise ValueError("rewards contain NaN or inf; replace them (and count them) before computing advantages")
    extra = torch.zeros_like(r) if bonus is None else torch.as_tensor(bonus, dtype=torch.float64, device=r.device)
    if extra.shape != r.shape or not torch.isfinite(extra).all():
        raise ValueError("bonus must be a finite [groups, G] tensor like rewards")
    if std not in ("population", "sample"):
        raise ValueError(f"std must be 'population' or 'sample', not {std!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if anchor_tied not in ANCHOR_TIED:
        raise ValueError(f"anchor_tied must be one of {ANCHOR_TIED}, not {anchor_tied!r}")
    # A group whose raw rewards are all equal carries no signal under any strategy: exact zeros
    # (reward scaling would otherwise turn a tie into a penalty for the GT row).
    total = r + extra
    tied = total.amax(-1, keepdim=True) == total.amin(-1, keepdim=True)
    return torch.where(tied, torch.zeros_like(r), _by_strategy(
        r, extra, off, strategy, std=std, eps=eps, lambda_off=lambda_off, offpolicy_scale=offpolicy_scale,
        tau=tau, alpha1=alpha1, alpha2=alpha2, anchor_tied=anchor_tied,
    ))


def _by_strategy(r, extra, off, strategy, *, std, eps, lambda_off, offpolicy_scale, tau, alpha1, alpha2, anchor_tied) -> torch.Tensor:
    everyone = torch.ones_like(off)

    if strategy == "grpo":
        if off.any():
            raise ValueError("strategy 'grpo' takes on-policy groups only, but the off-policy mask has True entries")
        return _normalise(r + extra, everyone, std, eps)
    if strategy == "mixed":
        return _normalise(r + extra, everyone, std, eps)
    if strategy == "reward_scaling":
        return _normalise(torch.where(off, r * offpolicy_scale, r) + extra, everyone, std, eps)
    if strategy.startswith("shaping"):
        r = shape_rewards(r, tau, alpha1, alpha2)
        if strategy == "shaping":
            return _normalise(r + extra, everyone, std, eps)
    # anchor / shaping+anchor
    r = r + extra
    on = ~off
    adv = _normalise(r, on, std, eps)
    best_on = torch.where(on, adv, torch.full_like(adv, -torch.inf)).amax(-1, keepdim=True)
    best_on = torch.where(torch.isfinite(best_on), best_on, torch.zeros_like(best_on))  # group without on-policy rows
    gt_adv = lambda_off * best_on
    if anchor_tied == "joint":
        big = torch.finfo(r.dtype).max
        on_tied = torch.where(on, r, -big).amax(-1, keepdim=True) == torch.where(on, r, big).amin(-1, keepdim=True)
        joint = _normalise(r, torch.ones_like(off), std, eps).clamp(min=0.0)
        gt_adv = torch.where(on_tied & on.any(-1, keepdim=True), joint, gt_adv)
    return torch.where(off, gt_adv, adv)
