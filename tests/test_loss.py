"""The clipped GRPO loss with k3 KL."""

import math

import pytest
import torch

from tempsamp import grpo_loss


def test_on_policy_loss_gradient_is_advantage_weighted_likelihood():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    mask = torch.ones(2, 2)
    loss, stats = grpo_loss(logp, adv, mask, beta=0.0)
    loss.backward()
    # rho = 1 -> d loss / d logp_t = -A / n_tokens
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, -0.5], [0.25, 0.25]]))
    assert stats.clip_fraction == 0.0 and stats.ratio_min == stats.ratio_max == 1.0


def test_clipping_hand_computed():
    logp = torch.log(torch.tensor([[1.5, 0.5]]))
    old = torch.zeros(1, 2)
    adv = torch.tensor([1.0])
    loss, stats = grpo_loss(logp, adv, torch.ones(1, 2), old_logp=old, beta=0.0, clip_eps=0.2)
    # positive advantage: min(1.5, 1.2) = 1.2 and min(0.5, 0.8) = 0.5
    assert float(loss) == pytest.approx(-(1.2 + 0.5) / 2)
    assert stats.clip_fraction == pytest.approx(0.5)
    assert stats.ratio_max == pytest.approx(1.5) and stats.ratio_min == pytest.approx(0.5)
    loss_hi, _ = grpo_loss(logp, adv, torch.ones(1, 2), old_logp=old, beta=0.0, clip_eps=0.2, clip_eps_high=0.28)
    assert float(loss_hi) == pytest.approx(-(1.28 + 0.5) / 2)


def test_k3_kl_value_and_zero_at_reference():
    logp = torch.tensor([[-1.0, -1.0]])
    ref = torch.tensor([[-1.0, -2.0]])
    loss, stats = grpo_loss(logp, torch.zeros(1), torch.ones(1, 2), ref_logp=ref, beta=0.5)
    d = -1.0
    k3 = torch.exp(torch.tensor(d)) - d - 1
    assert stats.kl == pytest.approx(float(k3) / 2)
    assert float(loss) == pytest.approx(0.5 * float(k3) / 2)


def test_mask_excludes_padding():
    logp = torch.tensor([[-1.0, 99.0]], requires_grad=True)
    loss, stats = grpo_loss(logp, torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]), beta=0.0)
    loss.backward()
    assert logp.grad[0, 1] == 0 and stats.tokens == 1


def test_token_mean_vs_sequence_mean():
    logp = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    adv = torch.tensor([1.0, 1.0])
    token, _ = grpo_loss(logp, adv, mask, beta=0.0)
    (g_tok,) = torch.autograd.grad(token, logp)
    seq, _ = grpo_loss(logp, adv, mask, beta=0.0, aggregation="sequence_mean")
    (g_seq,) = torch.autograd.grad(seq, logp)
    assert g_tok[0, 0] == g_tok[1, 0] == pytest.approx(-1 / 5)
    assert g_seq[0, 0] == pytest.approx(-1 / 8) and g_seq[1, 0] == pytest.approx(-1 / 2)


def test_normalizer_makes_accumulation_equal_one_batch():
    logp = torch.randn(4, 3, requires_grad=True)
    adv = torch.randn(4)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    full, _ = grpo_loss(logp, adv, mask, beta=0.0)
    (g_full,) = torch.autograd.grad(full, logp)
    n = mask.sum()
    a, _ = grpo_loss(logp[:2], adv[:2], mask[:2], beta=0.0, normalizer=n)
    b, _ = grpo_loss(logp[2:], adv[2:], mask[2:], beta=0.0, normalizer=n)
    (g_acc,) = torch.autograd.grad(a + b, logp)
    torch.testing.assert_close(g_acc, g_full)


def test_unknown_aggregation_is_refused():
    with pytest.raises(ValueError, match="aggregation"):
        grpo_loss(torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), aggregation="sum")


def test_kl_term_gradient_is_beta_times_one_minus_ratio_to_reference():
    """d/dlogp [beta * (exp(ref - logp) - (ref - logp) - 1)] = beta * (1 - exp(ref - logp)), per token / n."""
    logp = torch.tensor([[-1.0, -0.5, -2.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -0.5, -1.0]])
    beta = 0.3
    loss, _ = grpo_loss(logp, torch.zeros(1), torch.ones(1, 3), ref_logp=ref, beta=beta)
    loss.backward()
    expected = beta * (1 - torch.exp(ref - logp.detach())) / 3
    torch.testing.assert_close(logp.grad, expected)
    assert logp.grad[0, 1] == 0 and logp.grad[0, 0] > 0 > logp.grad[0, 2]


def test_clipping_with_a_negative_advantage():
    """A < 0: min(rho A, clip(rho) A) keeps the more pessimistic term: rho = 1.5 unclipped (-1.5 < -1.2),
    rho = 0.5 clipped at 0.8 (-0.8 < -0.5), so only the low-ratio token stops learning."""
    logp = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_(True)
    loss, stats = grpo_loss(logp, torch.tensor([-1.0]), torch.ones(1, 2), old_logp=torch.zeros(1, 2), beta=0.0, clip_eps=0.2)
    assert float(loss.detach()) == pytest.approx((1.5 + 0.8) / 2)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[1.5 / 2, 0.0]]))
    assert stats.clip_fraction == pytest.approx(0.5)


def test_luffy_offpolicy_rows_are_not_clipped_and_use_shaped_probability():
    logp = torch.log(torch.tensor([[0.2, 0.6], [0.2, 0.6]])).requires_grad_(True)
    old = logp.detach() - 1.0  # ratio e ~ 2.7: far past 1 + eps
    adv = torch.tensor([1.0, 1.0])
    off = torch.tensor([False, True])
    loss, stats = grpo_loss(logp, adv, torch.ones(2, 2), old_logp=old, beta=0.0, offpolicy=off, offpolicy_loss="luffy", luffy_gamma=0.1)
    loss.backward()
    p = torch.tensor([0.2, 0.6])
    assert logp.grad[0].abs().sum() == 0  # the on-policy row is clipped (rho > 1 + eps, A > 0)
    torch.testing.assert_close(logp.grad[1], -(0.1 * p / (p + 0.1) ** 2) / 4)  # d f(p)/d logp = gamma p / (p + gamma)^2
    assert stats.clip_fraction == pytest.approx(0.5)
    plain, _ = grpo_loss(logp.detach(), adv, torch.ones(2, 2), old_logp=old, beta=0.0, offpolicy=off, offpolicy_loss="luffy", luffy_gamma=0.0)
    assert float(plain) == pytest.approx(-(1.2 + 1.2 + 0.2 + 0.6) / 4)  # gamma 0: f(p) = p
    ratio, _ = grpo_loss(logp.detach(), adv, torch.ones(2, 2), old_logp=old, beta=0.0, offpolicy=off)
    assert float(ratio) == pytest.approx(-1.2)  # default: the GT row is clipped like the others


def test_kl_statistics_split_on_and_off_policy_rows():
    logp = torch.tensor([[-1.0], [-1.0]])
    ref = torch.tensor([[-1.0], [-2.0]])
    _, stats = grpo_loss(logp, torch.zeros(2), torch.ones(2, 1), ref_logp=ref, offpolicy=torch.tensor([False, True]))
    assert stats.kl == 0.0 and stats.kl_offpolicy == pytest.approx(math.exp(-1) + 1 - 1)
    _, none = grpo_loss(logp, torch.zeros(2), torch.ones(2, 1), ref_logp=ref)
    assert none.kl_offpolicy is None


def test_luffy_offpolicy_rows_with_negative_advantage_are_not_clipped_either():
    logp = torch.log(torch.tensor([[0.2, 0.6]])).requires_grad_(True)
    old = logp.detach() + 1.0  # ratio 1/e: below 1 - eps, where clipping bites for A < 0
    loss, _ = grpo_loss(logp, torch.tensor([-1.0]), torch.ones(1, 2), old_logp=old, beta=0.0,
                        offpolicy=torch.tensor([True]), offpolicy_loss="luffy", luffy_gamma=0.0)
    assert float(loss.detach()) == pytest.approx((0.2 + 0.6) / 2)  # -A * p, not -A * 0.8
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.2, 0.6]]) / 2)


def test_the_gt_row_carries_the_kl_term_too():
    """The k3 KL to the reference is in the loss for every row, the off-policy (GT) row included:
    the GT row is pulled towards the reference like any other (only its statistics are kept apart)."""
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0], [-0.5, -0.5]])  # only the GT row (row 0) differs from the reference
    mask = torch.ones(2, 2)
    offpolicy = torch.tensor([True, False])
    for offpolicy_loss in ("ratio", "luffy"):
        loss, stats = grpo_loss(logp, torch.zeros(2), mask, ref_logp=ref, beta=0.5, offpolicy=offpolicy,
                                offpolicy_loss=offpolicy_loss)
        delta = ref[0] - logp[0].detach()
        k3 = torch.exp(delta) - delta - 1.0
        torch.testing.assert_close(loss, 0.5 * k3.sum() / 4)  # token mean over all 4 tokens
        assert stats.kl == 0.0 and stats.kl_offpolicy == pytest.approx(float(k3.mean()))
        (grad,) = torch.autograd.grad(loss, logp)
        assert grad[0].abs().min() > 0 and grad[1].abs().max() == 0


def test_truncated_is_weights_hand_case():
    from tempsamp.loss import truncated_is_weights

    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
    sampler = torch.tensor([[-1.0 - math.log(2.0), -2.0 + math.log(4.0), float("nan")], [-3.0, -3.0, -3.0]])
    weights = truncated_is_weights(old, sampler, cap=3.0, offpolicy=torch.tensor([False, True]))
    # row 0: exp(log 2) = 2; exp(-log 4) = 0.25; no sampler log-prob -> 1. Row 1 is the GT row -> 1.
    torch.testing.assert_close(weights, torch.tensor([[2.0, 0.25, 1.0], [1.0, 1.0, 1.0]]))
    assert float(truncated_is_weights(old[:1, :1], torch.tensor([[-10.0]]), cap=3.0)) == 3.0  # exp(9) capped
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(old, sampler, cap=0.0)


def test_truncated_is_weights_scale_the_policy_gradient_term_only():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    ref = torch.tensor([[-1.5, -2.0], [-0.5, -0.4]])
    weights = torch.tensor([[2.0, 0.25], [1.0, 3.0]])
    loss, _ = grpo_loss(logp, adv, torch.ones(2, 2), ref_logp=ref, beta=0.1, is_weights=weights)
    loss.backward()
    # rho = 1: d/dlogp of -w A rho = -w A; k3's gradient: beta (1 - exp(ref - logp)); over 4 tokens
    kl_grad = 0.1 * (1 - torch.exp(ref - logp.detach()))
    want = (-weights * adv.unsqueeze(-1) + kl_grad) / 4
    torch.testing.assert_close(logp.grad, want)
    plain, _ = grpo_loss(logp.detach(), adv, torch.ones(2, 2), ref_logp=ref, beta=0.1)
    weighted, _ = grpo_loss(logp.detach(), adv, torch.ones(2, 2), ref_logp=ref, beta=0.1, is_weights=weights)
    # the loss value: -sum(w A) / 4 instead of -sum(A) / 4, the KL part unchanged
    assert float(weighted - plain) == pytest.approx(-float(((weights - 1) * adv.unsqueeze(-1)).sum()) / 4)


def test_logprob_mismatch_counts_on_policy_tokens_with_a_sampler_logprob():
    from tempsamp.loss import logprob_mismatch

    old = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    sampler = torch.tensor([[-1.05, -2.5, float("nan")], [-9.0, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    m = logprob_mismatch(old, sampler, mask, offpolicy=torch.tensor([False, True]))
    assert m.tokens == 2 and m.abs_sum == pytest.approx(0.55) and m.max == pytest.approx(0.5) and m.over_0_1 == 1
    m2 = logprob_mismatch(old, sampler, mask)  # without the flag row 1's two real tokens count
    assert m2.tokens == 4 and m2.max == pytest.approx(8.0) and m.add(m2).tokens == 6
