"""Reward shaping and group advantages: the paper's values and its motivating failure."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tempsamp import STRATEGIES, group_advantages, shape_rewards


def group(gt_reward, on_policy):
    r = torch.tensor([[gt_reward, *on_policy]], dtype=torch.float64)
    off = torch.zeros_like(r, dtype=torch.bool)
    off[0, 0] = True
    return r, off


def test_shaping_hand_computed_values():
    assert float(shape_rewards(1.0)) == pytest.approx(0.8018, abs=1e-4)
    assert float(shape_rewards(0.8)) == pytest.approx(0.8, abs=1e-12)
    assert float(shape_rewards(0.0)) == pytest.approx(0.8 - math.expm1(0.8) / math.expm1(1.0))
    assert float(shape_rewards(0.0)) == pytest.approx(0.0867, abs=1e-4)


def test_shaping_continuous_at_tau():
    eps = 1e-9
    below, at, above = shape_rewards(torch.tensor([0.8 - eps, 0.8, 0.8 + eps], dtype=torch.float64))
    assert float(below) == pytest.approx(float(at), abs=1e-8)
    assert float(above) == pytest.approx(float(at), abs=1e-8)


@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=2, max_size=50))
def test_shaping_monotone(values):
    r = torch.tensor(sorted(values), dtype=torch.float64)
    assert torch.all(torch.diff(shape_rewards(r)) >= 0)


def test_anchor_is_exactly_lambda_times_best_on_policy():
    r, off = group(1.0, [0.1, 0.4, 0.7, 0.2, 0.0, 0.5, 0.3])
    for strategy in ("anchor", "shaping+anchor"):
        adv = group_advantages(r, off, strategy)
        assert adv[0, 0] == pytest.approx(1.2 * float(adv[0, 1:].max()), rel=1e-12)
        adv = group_advantages(r, off, strategy, lambda_off=2.0)
        assert adv[0, 0] == pytest.approx(2.0 * float(adv[0, 1:].max()), rel=1e-12)


def test_anchor_on_policy_advantages_ignore_the_gt():
    r, off = group(1.0, [0.1, 0.4, 0.7, 0.2, 0.0, 0.5, 0.3])
    on = r[:, 1:]
    expected = (on - on.mean()) / (on.std(unbiased=False) + 1e-6)
    torch.testing.assert_close(group_advantages(r, off, "anchor")[:, 1:], expected)


def test_mixed_sparse_rewards_make_every_on_policy_advantage_negative():
    """The paper's motivating failure: the GT inflates the mean."""
    r, off = group(1.0, [0.0, 0.05, 0.1, 0.02, 0.08, 0.0, 0.03])
    adv = group_advantages(r, off, "mixed")
    assert torch.all(adv[0, 1:] < 0)
    assert adv[0, 0] > 5 * adv[0, 1:].abs().max()


def test_shaping_brings_best_on_policy_closer_to_the_gt():
    r, off = group(1.0, [0.1, 0.4, 0.7, 0.2, 0.0, 0.5, 0.3])
    ratio = {s: float(group_advantages(r, off, s)[0, 3] / group_advantages(r, off, s)[0, 0]) for s in ("mixed", "shaping")}
    assert ratio["mixed"] == pytest.approx(0.5, abs=0.02)
    assert ratio["shaping"] == pytest.approx(0.8, abs=0.03)
    # the on-policy order is kept
    on_order = torch.argsort(r[0, 1:])
    assert torch.equal(torch.argsort(group_advantages(r, off, "shaping")[0, 1:]), on_order)


def test_reward_scaling_shrinks_gt_dominance():
    r, off = group(1.0, [0.1, 0.4, 0.7, 0.2, 0.0, 0.5, 0.3])
    mixed = group_advantages(r, off, "mixed")
    scaled = group_advantages(r, off, "reward_scaling", offpolicy_scale=0.8)
    assert scaled[0, 3] / scaled[0, 0] > mixed[0, 3] / mixed[0, 0]
    # a scale of 1 is exactly the mixed baseline
    torch.testing.assert_close(group_advantages(r, off, "reward_scaling", offpolicy_scale=1.0), mixed)


def test_grpo_refuses_off_policy_rows():
    r, off = group(1.0, [0.1, 0.2])
    with pytest.raises(ValueError, match="on-policy"):
        group_advantages(r, off, "grpo")


def test_population_and_sample_std():
    r = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    off = torch.zeros_like(r, dtype=torch.bool)
    assert group_advantages(r, off, "grpo")[0, 1] == pytest.approx(0.5 / (0.5 + 1e-6))
    assert group_advantages(r, off, "grpo", std="sample")[0, 1] == pytest.approx(0.5 / (math.sqrt(0.5) + 1e-6))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_equal_rewards_give_exact_zeros(strategy):
    r = torch.full((3, 8), 0.1, dtype=torch.float64)
    off = torch.zeros_like(r, dtype=torch.bool)
    if strategy != "grpo":
        off[:, -1] = True  # the flag, not the position, marks the off-policy row
    adv = group_advantages(r, off, strategy)
    assert torch.equal(adv, torch.zeros_like(adv))


def test_bad_inputs_are_refused():
    r, off = group(1.0, [0.1, float("nan")])
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(r, off, "mixed")
    with pytest.raises(ValueError, match="unknown strategy"):
        group_advantages(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool), "ppo")
    with pytest.raises(ValueError, match=r"\[groups, G\]"):
        group_advantages(torch.zeros(4), torch.zeros(4, dtype=torch.bool), "mixed")


rewards_batches = st.integers(min_value=1, max_value=6).flatmap(
    lambda g: st.lists(st.lists(st.floats(min_value=0, max_value=1), min_size=8, max_size=8), min_size=1, max_size=g)
)


@settings(max_examples=60)
@given(rewards_batches, st.sampled_from(STRATEGIES))
def test_advantages_finite_and_zero_mean_where_promised(rows, strategy):
    r = torch.tensor(rows, dtype=torch.float64)
    off = torch.zeros_like(r, dtype=torch.bool)
    if strategy != "grpo":
        off[:, 0] = True
    adv = group_advantages(r, off, strategy)
    assert torch.isfinite(adv).all()
    if strategy in ("grpo", "mixed", "reward_scaling", "shaping"):
        np.testing.assert_allclose(adv.sum(-1).numpy(), 0.0, atol=1e-6)
    else:  # anchoring: zero-mean among the on-policy rows
        np.testing.assert_allclose(adv[:, 1:].sum(-1).numpy(), 0.0, atol=1e-6)


def test_bonus_joins_after_shaping():
    r, off = group(1.0, [0.1, 0.4, 0.7])
    fmt = torch.tensor([[1.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    shaped = shape_rewards(r) + fmt
    expected = (shaped - shaped.mean()) / (shaped.std(unbiased=False) + 1e-6)
    torch.testing.assert_close(group_advantages(r, off, "shaping", bonus=fmt), expected)
    # without shaping, the bonus is simply part of the reward
    torch.testing.assert_close(group_advantages(r, off, "mixed", bonus=fmt), group_advantages(r + fmt, off, "mixed"))
    # a group tied on task reward but not on format still gets a signal
    tied_task = torch.zeros(1, 4, dtype=torch.float64)
    assert group_advantages(tied_task, off, "shaping", bonus=fmt).abs().sum() > 0


def test_anchor_tied_rule_literal_and_joint():
    r, off = group(1.0, [0.0] * 7)
    assert group_advantages(r, off, "anchor", anchor_tied="literal").abs().sum() == 0
    joint = group_advantages(r, off, "anchor", anchor_tied="joint")
    expected = group_advantages(r, off, "mixed")[0, 0]
    assert float(joint[0, 0]) == pytest.approx(float(expected)) and joint[0, 1:].abs().sum() == 0
    # never a push away from the GT: a GT below tied on-policy rows gets 0, not a negative advantage
    low, off = group(0.9, [1.0] * 7)
    assert group_advantages(low, off, "anchor", anchor_tied="joint").abs().sum() == 0
    # groups that are not tied keep the paper's rule under both
    r, off = group(1.0, [0.1, 0.4, 0.7])
    torch.testing.assert_close(group_advantages(r, off, "anchor", anchor_tied="joint"), group_advantages(r, off, "anchor", anchor_tied="literal"))
    with pytest.raises(ValueError, match="anchor_tied"):
        group_advantages(r, off, "anchor", anchor_tied="sometimes")
