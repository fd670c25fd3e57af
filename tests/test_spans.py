"""Parsing model answers, and the IoU convention behind published numbers."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from tempsamp import parse_scored_spans, parse_span, parse_spans, spans_to_array, temporal_iou

# (model output, expected parse_span result): real-looking outputs, good and bad.
OUTPUTS = [
    ("<answer> 12.5 to 17.8 </answer>", (12.5, 17.8)),
    ("<answer>12.5 to 17.8</answer>", (12.5, 17.8)),
    ("12.5 - 17.8", (12.5, 17.8)),
    ("12.5-17.8", (12.5, 17.8)),
    ("The event happens from 12.5s to 17.8s.", (12.5, 17.8)),
    ("from 12.5 seconds to 17.8 seconds", (12.5, 17.8)),
    ("[(12.5, 17.8)]", (12.5, 17.8)),
    ("It happens between 3 and 9 seconds.", (3.0, 9.0)),
    ("<answer> 00:12 to 00:17 </answer>", (12.0, 17.0)),
    ("<answer> 1:02:03 - 1:02:10.5 </answer>", (3723.0, 3730.5)),
    ("<answer> 01:05.5 to 01:09 </answer>", (65.5, 69.0)),
    ("<answer> 0 to 4.2 </answer>", (0.0, 4.2)),
    ("<answer> .5 to 3 </answer>", (0.5, 3.0)),
    ("<answer> 12.5 ~ 17.8 </answer>", (12.5, 17.8)),
    ("<answer> 12.5 – 17.8 </answer>", (12.5, 17.8)),
    ("<answer> 12.5 until 17.8 </answer>", (12.5, 17.8)),
    ("<ANSWER> 12.5 TO 17.8 </ANSWER>", (12.5, 17.8)),
    # start > end is returned as written (it scores 0), never swapped
    ("<answer> 17.8 to 12.5 </answer>", (17.8, 12.5)),
    # several spans: the last one is the answer
    ("<answer> 1 to 2, no wait, 3 to 4 </answer>", (3.0, 4.0)),
    ("[(0, 10), (20, 30)]", (20.0, 30.0)),
    # CoT: numbers inside the reasoning do not count when an answer block exists
    ("<think>The man enters at 3 to 5 s, then sits from 8 to 12.</think><answer> 14.0 to 19.5 </answer>", (14.0, 19.5)),
    ("<think>Maybe 2 to 4? No.</think>\n<answer>6.5 to 9</answer>", (6.5, 9.0)),
    # CoT without an answer block: the reasoning is not an answer
    ("<think>It starts at 3 to 5 seconds</think>", None),
    ("<think>I think 3 to 5 seconds, then", None),  # truncated inside the reasoning
    ("<think>short</think> 7 to 9", (7.0, 9.0)),  # reasoning closed, answer outside tags
    # truncated inside the answer block: read what is there
    ("<think>ok</think><answer> 4.5 to 8.2", (4.5, 8.2)),
    ("<answer> 4.5 to", None),
    # several answer blocks: the last complete one
    ("<answer>1 to 2</answer><answer>5 to 6</answer>", (5.0, 6.0)),
    # garbage
    ("", None),
    ("I don't know.", None),
    ("<answer> the person opens the door </answer>", None),
    ("<answer> 12.5 </answer>", None),
    ("Qwen2.5 is a model; version 3", None),
    ("<answer> 12.5 to seventeen </answer>", None),
    ("<|im_end|>", None),
    ("clip3 to clip5", None),
]


@pytest.mark.parametrize("text,expected", OUTPUTS)
def test_parse_span_table(text, expected):
    assert parse_span(text) == expected


def test_table_is_large_enough():
    assert len(OUTPUTS) >= 30


def test_parse_spans_returns_every_window():
    assert parse_spans("<answer> 0 to 10; 20.5 to 30, and 40 - 50 </answer>") == [(0.0, 10.0), (20.5, 30.0), (40.0, 50.0)]
    assert parse_spans(None) == []


def test_parse_scored_spans_reads_scores_and_defaults():
    text = "<answer> 12.0 to 18.0 (score 4); 30.0 to 34.0 (score 2.5); 40 to 44 </answer>"
    assert parse_scored_spans(text) == [(12.0, 18.0, 4.0), (30.0, 34.0, 2.5), (40.0, 44.0, 4.0)]
    assert parse_scored_spans(text, default_score=1.0)[-1] == (40.0, 44.0, 1.0)


def test_iou_hand_made():
    pred = np.array([[0, 10], [5, 15], [20, 30], [10, 5], [0, 10], [2, 4], [np.nan, np.nan]], float)
    gt = np.array([[0, 10], [0, 10], [0, 10], [0, 20], [2, 4], [2, 4], [0, 10]], float)
    # identical; half overlap 5/15; disjoint; start > end scores 0; containment 2/10; same point
    expected = [1.0, 5 / 15, 0.0, 0.0, 0.2, 1.0, 0.0]
    np.testing.assert_allclose(temporal_iou(pred, gt), expected)


def test_iou_is_not_clipped_to_the_video():
    # a GT end past the video's duration stays as annotated
    assert temporal_iou([0, 30], [20, 40]) == pytest.approx(10 / 40)


def test_iou_degenerate_spans_are_zero_not_nan():
    out = temporal_iou([[3, 3], [np.inf, 5]], [[3, 3], [0, 5]])
    assert np.all(np.isfinite(out)) and out.tolist() == [0.0, 0.0]


def test_iou_broadcasts():
    pred = np.array([[0, 10], [5, 15]], float)[:, None, :]  # [2, 1, 2]
    gt = np.array([[0, 10], [10, 20], [0, 5]], float)[None]  # [1, 3, 2]
    assert temporal_iou(pred, gt).shape == (2, 3)


def test_spans_to_array_marks_missing_with_nan():
    arr = spans_to_array([(1.0, 2.0), None])
    assert arr[0].tolist() == [1.0, 2.0] and np.isnan(arr[1]).all()


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)


@given(st.tuples(finite, finite), st.tuples(finite, finite))
def test_iou_bounded_and_symmetric(a, b):
    x, y = float(temporal_iou(a, b)), float(temporal_iou(b, a))
    assert 0.0 <= x <= 1.0
    assert x == pytest.approx(y)


@given(finite, st.floats(min_value=1e-3, max_value=1e3))
def test_iou_of_a_span_with_itself_is_one(start, length):
    assert float(temporal_iou((start, start + length), (start, start + length))) == pytest.approx(1.0)
