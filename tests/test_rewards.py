"""Rewards: IoU, format (CoT stage), timestamp reward (highlights)."""

import numpy as np
import pytest

from tempsamp import build_offpolicy_completion, clips_from_windows, format_reward, iou_reward, parse_scored_spans, timestamp_reward
from tempsamp.spans import parse_span, spans_to_array


def test_iou_reward_unparsed_is_zero():
    texts = ["<answer> 0 to 10 </answer>", "no idea", "<answer> 5 to 15 </answer>"]
    pred = spans_to_array([parse_span(t) for t in texts])
    r = iou_reward(pred, np.array([[0, 10]] * 3, float))
    np.testing.assert_allclose(r, [1.0, 0.0, 5 / 15])


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>the door opens late</think><answer> 3 to 5 </answer>", 1.0),
        ("  <think> a </think>\n<answer>3 - 5</answer>\n", 1.0),
        ("<answer> 3 to 5 </answer>", 0.0),  # no reasoning
        ("<think></think><answer> 3 to 5 </answer>", 0.0),  # empty reasoning
        ("<think>  </think><answer> 3 to 5 </answer>", 0.0),
        ("<think>x</think><answer> soon </answer>", 0.0),  # answer does not parse
        ("<think>x</think><think>y</think><answer> 3 to 5 </answer>", 0.0),  # two think blocks
        ("<think>x</think><answer> 3 to 5 </answer><answer> 1 to 2 </answer>", 0.0),
        ("Sure! <think>x</think><answer> 3 to 5 </answer>", 0.0),  # text outside the tags
        ("<think>x</think><answer> 3 to 5", 0.0),  # truncated
        ("<answer> 3 to 5 </answer><think>x</think>", 0.0),  # wrong order
        ("<think>x<answer> 3 to 5 </answer></think>", 0.0),  # nested
    ],
)
def test_format_reward(text, expected):
    assert format_reward([text])[0] == expected


def test_offpolicy_completion_scores_full_marks():
    cot = build_offpolicy_completion((12.5, 17.8), "cot")
    assert format_reward([cot])[0] == 1.0
    assert parse_span(cot) == (12.5, 17.8)
    answer = build_offpolicy_completion((12.5, 17.8), "answer")
    assert answer == "<answer> 12.5 to 17.8 </answer>"
    assert format_reward([answer])[0] == 0.0


def test_offpolicy_completion_highlights_round_trips():
    text = build_offpolicy_completion([(10.0, 20.0), (30.0, 34.0)], "answer", scores=[3.5, 2.0])
    assert parse_scored_spans(text) == [(10.0, 20.0, 3.5), (30.0, 34.0, 2.0)]


def test_offpolicy_completion_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        build_offpolicy_completion((1, 2), "reasoning")


def test_clips_from_windows():
    mask, scores = clips_from_windows([(2.0, 6.0, 4.0), (5.0, 8.0, 2.0)], n_clips=5)
    # clip centres 1, 3, 5, 7, 9
    assert mask.tolist() == [False, True, True, True, False]
    np.testing.assert_allclose(scores, [0, 1.0, 1.0, 0.5, 0])
    empty_mask, empty_scores = clips_from_windows([], n_clips=3)
    assert not empty_mask.any() and not empty_scores.any()


def test_timestamp_reward_hand_computed():
    gt_mask = np.array([[0, 1, 1, 0]], bool)
    gt_sal = np.array([[0, 1.0, 0.5, 0]])
    # perfect answer: F2 = 1, WMSE = 0 -> 0.5 + 0.5
    assert timestamp_reward(gt_mask, gt_sal, gt_mask, gt_sal)[0] == pytest.approx(1.0)
    # predict clips 2, 3 with score 1: P = 1/2, R = 1/2 -> F2 = 1/2
    pred_mask = np.array([[0, 0, 1, 1]], bool)
    pred_sc = np.array([[0, 0, 1.0, 1.0]])
    w = np.array([1, 5, 3, 1.0])
    wmse = (w * (pred_sc[0] - gt_sal[0]) ** 2).sum() / w.sum()
    expected = 0.5 * 0.5 + 0.5 / (1 + wmse)
    assert timestamp_reward(pred_mask, pred_sc, gt_mask, gt_sal)[0] == pytest.approx(expected)


def test_timestamp_reward_weights_and_padding():
    gt_mask = np.array([[1, 0, 0], [1, 0, 0]], bool)
    gt_sal = np.array([[1.0, 0, 0], [1.0, 0, 0]])
    valid = np.array([[1, 1, 1], [1, 0, 0]], bool)
    # wrong score on a salient clip costs more than the same error on a background clip
    miss_salient = timestamp_reward(gt_mask, np.array([[0.5, 0, 0]]), gt_mask[:1], gt_sal[:1])
    miss_background = timestamp_reward(gt_mask, np.array([[1.0, 0.5, 0]]), gt_mask[:1], gt_sal[:1])
    assert miss_salient[0] < miss_background[0]
    # padded clips are ignored
    pred = np.array([[1, 0, 1], [1, 0, 1]], bool)
    out = timestamp_reward(pred, pred.astype(float), gt_mask, gt_sal, valid)
    assert out[1] == pytest.approx(1.0) and out[0] < 1.0


def test_timestamp_reward_in_unit_interval():
    rng = np.random.default_rng(0)
    pm, gm = rng.random((64, 20)) > 0.5, rng.random((64, 20)) > 0.7
    r = timestamp_reward(pm, rng.random((64, 20)), gm, rng.random((64, 20)) * gm)
    assert np.all((r >= 0) & (r <= 1))


@pytest.mark.parametrize("text", ["<think>...</think><answer> 3 to 5 </answer>", "<think> … </think><answer> 3 to 5 </answer>",
                                  "<think> -- ?! </think><answer> 3 to 5 </answer>"])
def test_format_reward_is_not_earned_by_the_prompts_placeholder(text):
    assert format_reward([text])[0] == 0.0


def test_clip_f2_where_precision_differs_from_recall():
    gt = np.array([[1, 1, 0, 0, 0, 0]], bool)
    pred = np.array([[1, 0, 1, 1, 0, 0]], bool)  # P = 1/3, R = 1/2 -> F2 = 5 (1/6) / (4/3 + 1/2) = 5/11
    sal = gt.astype(float)
    r = timestamp_reward(pred, pred.astype(float), gt, sal, lambda_rec=1.0, lambda_score=0.0)
    assert r[0] == pytest.approx(5 / 11)
    from tempsamp.rewards import window_f2

    # windows: P = (1 + 0.5) / 3, R = (1 + 0.5) / 2 -> F2 = 5 P R / (4 P + R)
    p, rr = 1.5 / 3, 1.5 / 2
    assert window_f2([(0, 10), (20, 30), (50, 60)], [(0, 10), (20, 40)]) == pytest.approx(5 * p * rr / (4 * p + rr))
    assert window_f2([], [(0, 10)]) == 0.0 and window_f2([(0, 10)], [(0, 10)]) == pytest.approx(1.0)


def test_highlight_shortcuts_score_below_a_partly_correct_answer():
    """Hand-computed (docs/decisions.md): 40-s video, 20 clips, GT windows 4-10 s (saliency 1.0) and 24-30 s (0.5)."""
    from tempsamp.advantages import shape_rewards
    from tempsamp.rewards import window_f2

    gt_windows = [(4.0, 10.0), (24.0, 30.0)]
    gt_mask, gt_sal = np.zeros(20, bool), np.zeros(20)
    gt_mask[2:5], gt_sal[2:5] = True, 1.0
    gt_mask[12:15], gt_sal[12:15] = True, 0.5

    def reward(windows):
        mask, scores = clips_from_windows(windows, 20)
        return timestamp_reward(mask[None], scores[None], gt_mask[None], gt_sal[None], f2=[window_f2(windows, gt_windows)])[0]

    exact = reward([(4, 10, 4), (24, 30, 2)])
    one_of_two = reward([(4, 10, 4)])  # F2 = 5 * 0.5 / 4.5; WMSE = 3 * 3 * 0.25 / 38
    whole = reward([(0, 40, 4)])  # F2: one window at IoU 0.15 -> P 0.15, R 0.075; WMSE = (14 + 2.25) / 38
    empty = reward([])
    assert exact == pytest.approx(1.0)
    assert one_of_two == pytest.approx(0.5 * 2.5 / 4.5 + 0.5 / (1 + 2.25 / 38))
    assert whole == pytest.approx(0.5 * (5 * 0.15 * 0.075 / 0.675) + 0.5 / (1 + 16.25 / 38))
    assert empty == 0.0
    assert whole < one_of_two < exact and float(shape_rewards(whole)) < float(shape_rewards(one_of_two)) - 0.2


def test_unparsable_highlight_answer_scores_zero():
    from tempsamp.data.example import Example
    from tempsamp.train.scoring import score_group

    ex = Example(qid="h", video_id="v", video_path=None, duration=20.0, query="q", spans=((4.0, 10.0),), task="highlights",
                 clip_ids=(2, 3, 4), saliency=((4, 4, 4),) * 3)
    for f2 in ("windows", "clips"):
        s = score_group(ex, ["no idea", "", "<answer> 4.0 to 10.0 (score 4) </answer>"], False, highlight_f2=f2)
        assert s.task.tolist()[:2] == [0.0, 0.0] and s.task[2] == pytest.approx(1.0)
