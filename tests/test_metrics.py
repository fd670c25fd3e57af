"""Metrics identical to the references: grounding R1/mIoU, the QVHighlights evaluator, `tempsamp score`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from tempsamp.evaluation import score_cli
from tempsamp.evaluation.grounding import grounding_metrics
from tempsamp.evaluation.qvhighlights import eval_submission, saliency_average_precision

SHARED = Path(__file__).resolve().parents[2] / "shared"
QVH = SHARED / "annotations" / "qvhighlights"
NAN = float("nan")


# ------------------------------------------------------------------------------------------ grounding

def test_grounding_hand_computed_with_unparsable_in_the_denominator():
    pred = [[0, 10], [5, 15], [NAN, NAN], [10, 5]]  # exact, 1/3, unparsable, start > end
    gt = [[0, 10], [0, 10], [0, 10], [5, 10]]
    m = grounding_metrics(pred, gt)
    assert m == {"R1@0.3": 50.0, "R1@0.5": 25.0, "R1@0.7": 25.0, "mIoU": 33.33, "n": 4}


def test_grounding_strict_threshold_at_exactly_the_threshold():
    gt = [[0, 10]] * 3
    pred = [[0, 3], [0, 5], [0, 7]]  # IoU exactly 0.3, 0.5, 0.7
    assert grounding_metrics(pred, gt, decimals=None)["R1@0.5"] == pytest.approx(200 / 3)
    loose = grounding_metrics(pred, gt)
    strict = grounding_metrics(pred, gt, strict=True)
    assert (loose["R1@0.3"], loose["R1@0.5"], loose["R1@0.7"]) == (100.0, 66.67, 33.33)
    assert (strict["R1@0.3"], strict["R1@0.5"], strict["R1@0.7"]) == (66.67, 33.33, 0.0)
    assert loose["mIoU"] == strict["mIoU"] == 50.0


def test_grounding_clipped_ground_truth_and_rounded_iou():
    pred, gt, durations = [[20, 30]], [[20, 40]], [30.0]  # the GT end lies past the video's end
    assert grounding_metrics(pred, gt)["mIoU"] == 50.0
    assert grounding_metrics(pred, gt, clip_gt=True, durations=durations)["mIoU"] == 100.0
    with pytest.raises(ValueError, match="durations"):
        grounding_metrics(pred, gt, clip_gt=True)
    near = [[0, 4.96]]  # IoU 0.496: a miss at 0.5, a hit once rounded to 0.50
    assert grounding_metrics(near, [[0, 10]])["R1@0.5"] == 0.0
    assert grounding_metrics(near, [[0, 10]], iou_decimals=2)["R1@0.5"] == 100.0


def test_grounding_refuses_bad_shapes_and_gt():
    with pytest.raises(ValueError, match="2 spans but gt has 1"):
        grounding_metrics([[0, 1], [0, 1]], [[0, 1]])
    with pytest.raises(ValueError, match="not finite"):
        grounding_metrics([[0, 1]], [[0, NAN]])
    assert grounding_metrics(np.zeros((0, 2)), np.zeros((0, 2)))["mIoU"] is None


# -------------------------------------------------------------------------------- QVHighlights: MR

def _gt(qid, windows, duration=150, clips=(), saliency=()):
    return {"qid": qid, "query": "q", "vid": f"v{qid}", "duration": duration, "relevant_windows": windows,
            "relevant_clip_ids": list(clips), "saliency_scores": [list(s) for s in saliency]}


def _mr(qid, windows):
    return {"qid": qid, "pred_relevant_windows": windows}


def test_mr_perfect_and_score_order():
    gt = [_gt(1, [[0, 10], [20, 30]])]
    perfect = eval_submission([_mr(1, [[0, 10, 0.9], [20, 30, 0.8]])], gt)
    assert perfect["full"]["MR-mAP"]["average"] == 100.0 and perfect["full"]["MR-R1"]["0.5"] == 100.0
    # AP ranks by score; R1 takes the first listed window, whatever its score.
    out = eval_submission([_mr(1, [[0, 10, 0.1], [50, 60, 0.9]])], [_gt(1, [[0, 10]])])
    assert out["full"]["MR-mAP"]["0.5"] == 50.0  # a false positive, then the hit: precision 1/2 at recall 1
    assert out["full"]["MR-R1"]["0.5"] == 100.0
    out = eval_submission([_mr(1, [[50, 60, 0.1], [0, 10, 0.9]])], [_gt(1, [[0, 10]])])
    assert out["full"]["MR-mAP"]["0.5"] == 100.0 and out["full"]["MR-R1"]["0.5"] == 0.0


def test_mr_only_ten_windows_count_and_each_gt_matches_once():
    wrong = [[100, 110, 0.5]] * 10
    gt = [_gt(1, [[0, 10]])]
    assert eval_submission([_mr(1, wrong + [[0, 10, 0.99]])], gt)["full"]["MR-mAP"]["average"] == 0.0
    assert eval_submission([_mr(1, [[0, 10, 0.99]] + wrong)], gt)["full"]["MR-mAP"]["average"] == 100.0
    # Two predictions on one GT window: the second is a false positive; the other GT window is never found.
    two = [_gt(1, [[0, 10], [20, 30]])]
    out = eval_submission([_mr(1, [[0, 10, 0.9], [0, 10, 0.8]])], two)
    assert out["full"]["MR-mAP"]["0.5"] == 50.0


def test_mr_iou_thresholds_and_length_splits():
    # IoU 0.8 with the 20-s window: a hit up to threshold 0.8, a miss above.
    gt = [_gt(1, [[0, 4], [10, 30]]), _gt(2, [[0, 60]])]
    sub = [_mr(1, [[10, 26, 0.9]]), _mr(2, [[0, 60, 0.9]])]
    out = eval_submission(sub, gt)
    full = out["full"]["MR-mAP"]
    assert full["0.8"] == 75.0 and full["0.85"] == 50.0  # query 1: AP 1/2 (one of two windows), then 0
    assert out["middle"]["MR-mAP"]["0.8"] == 100.0 and out["middle"]["MR-mAP"]["0.85"] == 0.0
    assert out["short"]["MR-mAP"]["average"] == 0.0  # query 1 alone, with its 4-s window only
    assert out["long"]["MR-mAP"]["average"] == 100.0  # query 2 alone
    assert out["middle"]["MR-R1"]["0.8"] == 100.0 and out["full"]["MR-R1"]["0.8"] == 100.0
    assert out["brief"]["MR-long-mAP"] == 100.0


def test_mr_empty_split_is_none_and_empty_window_list_is_a_miss():
    out = eval_submission([_mr(1, [])], [_gt(1, [[0, 60]])])
    assert out["short"]["MR-mAP"]["average"] is None
    assert out["full"]["MR-mAP"]["average"] == 0.0 and out["full"]["MR-R1"]["0.5"] == 0.0


# -------------------------------------------------------------------------------- QVHighlights: HL

def test_hl_ap_plain_mean_over_recall_rises_with_tied_scores():
    # 4 clips; positives 0, 1 (tied at 0.9) and 3. Thresholds: {0,1} precision 1, {2} no new recall,
    # {3} precision 3/4. Official AP = mean(1, 3/4) = 0.875 (not the step-weighted 0.9167).
    labels = np.array([[[1, 1, 0, 1]]], dtype=float)
    ap = saliency_average_precision(labels, np.array([[0.9, 0.9, 0.5, 0.1]]), np.ones((1, 4), dtype=bool))
    assert ap[0, 0] == pytest.approx(0.875)
    # A negative ranked first: precision 1/2 then 2/3, made monotone: mean(2/3, 2/3).
    labels = np.array([[[0, 1, 1, 0, 0]]], dtype=float)
    ap = saliency_average_precision(labels, np.array([[0.9, 0.8, 0.5, 0.3, 0.2]]), np.ones((1, 5), dtype=bool))
    assert ap[0, 0] == pytest.approx(2 / 3)


def test_hl_levels_hit_and_degenerate_annotators():
    # 10-s video: 5 clips; clip 1 scores (4, 4, 2), clip 2 scores (2, 4, 2).
    gt = [_gt(1, [[2, 6]], duration=10, clips=[1, 2], saliency=[[4, 4, 2], [2, 4, 2]])]
    sub = [{"qid": 1, "pred_saliency_scores": [0.1, 0.9, 0.5, 0.3, 0.2]}]
    out = eval_submission(sub, gt)
    assert set(out) == {"brief", "HL-min-Fair", "HL-min-Good", "HL-min-VeryGood"}
    assert out["HL-min-Fair"] == {"HL-mAP": 100.0, "HL-Hit1": 100.0}
    # VeryGood: annotators 0 and 1 find clip 1 first (AP 1), annotator 2 has no positive (AP 0).
    assert out["HL-min-VeryGood"] == {"HL-mAP": 66.67, "HL-Hit1": 100.0}
    # The top clip past the video's 5 clips is a HIT@1 miss; the AP sees only the first 5 scores.
    longer = [{"qid": 1, "pred_saliency_scores": [0.1, 0.9, 0.5, 0.3, 0.2, 5.0]}]
    out = eval_submission(longer, gt)
    assert out["HL-min-Fair"] == {"HL-mAP": 100.0, "HL-Hit1": 0.0}
    # An annotator whose every clip is positive scores AP 1 whatever the ranking.
    full = [_gt(1, [[0, 4]], duration=4, clips=[0, 1], saliency=[[4, 0, 0], [4, 0, 0]])]
    out = eval_submission([{"qid": 1, "pred_saliency_scores": [0.0, 1.0]}], full)
    assert out["HL-min-VeryGood"]["HL-mAP"] == 33.33


def test_hl_short_prediction_is_zero_padded():
    gt = [_gt(1, [[6, 8]], duration=8, clips=[3], saliency=[[4, 4, 4]])]  # 4 clips, clip 3 positive
    # Scores for 2 of 4 clips: clips 2 and 3 are padded with 0 and tie; that threshold holds all
    # 4 clips and the one positive: precision 1/4.
    out = eval_submission([{"qid": 1, "pred_saliency_scores": [0.5, 0.4]}], gt)
    assert out["HL-min-VeryGood"] == {"HL-mAP": 25.0, "HL-Hit1": 0.0}
    out = eval_submission([{"qid": 1, "pred_saliency_scores": [0.5, 0.4, 0.0, 0.1]}], gt)
    assert out["HL-min-VeryGood"]["HL-mAP"] == 33.33


# ---------------------------------------------------------------------- query sets and qid matching

def test_query_sets_refused_allowed_and_matched_as_strings():
    gt = [_gt(1, [[0, 10]], duration=20, clips=[0], saliency=[[4, 4, 4]]),
          _gt(2, [[0, 10]], duration=20, clips=[0], saliency=[[4, 4, 4]])]
    one = [{"qid": "1", "pred_relevant_windows": [[0, 10, 1.0]], "pred_saliency_scores": [1.0] + [0.0] * 9}]
    with pytest.raises(ValueError, match=r"1 of 2 ground-truth queries have no prediction \(e.g. 2\)"):
        eval_submission(one, gt)
    out = eval_submission(one, gt, allow_missing=True)
    assert out["brief"]["MR-full-mAP"] == 50.0 and out["brief"]["MR-full-R1@0.5"] == 50.0
    assert out["HL-min-VeryGood"] == {"HL-mAP": 50.0, "HL-Hit1": 50.0}
    extra = one + [dict(one[0], qid=3)]
    with pytest.raises(ValueError, match="1 predicted queries are not in the ground truth"):
        eval_submission(extra, gt, allow_missing=True)
    with pytest.raises(ValueError, match="already predicted"):
        eval_submission(one + one, gt, allow_missing=True)


def test_malformed_prediction_names_the_line():
    gt = [_gt(1, [[0, 10]])]
    with pytest.raises(ValueError, match=r"p.jsonl:3: field 'pred_relevant_windows'"):
        eval_submission([_mr(1, [[0, "x", 0.5]])], gt, submission_sources=["p.jsonl:3"])
    with pytest.raises(ValueError, match=r"ground_truth\[0\]: field 'relevant_clip_ids'"):
        eval_submission([{"qid": 1, "pred_saliency_scores": [1.0]}], [_gt(1, [[0, 2]], 4, [2], [[4, 4, 4]])])
    # Extra columns are ignored (the official code reads w[0], w[1], w[2]), never reshaped into rows.
    windows = [[0, 10, 0.9, 7], [50, 60, 0.5, 7], [70, 80, 0.4, 7]]
    assert eval_submission([_mr(1, windows)], gt)["full"]["MR-mAP"]["0.5"] == 100.0


# ------------------------------------------------------------------------- the official sample file

def _flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def qvh_val():
    if not QVH.is_dir():
        pytest.skip(f"{QVH} not present")
    return _read(QVH / "sample_val_preds.jsonl"), _read(QVH / "highlight_val_release.jsonl")


def test_official_sample_predictions_reproduce_every_number(qvh_val):
    submission, ground_truth = qvh_val
    expected = json.loads((QVH / "sample_val_preds_metrics_raw.json").read_text())
    got = eval_submission(submission, ground_truth)
    assert list(got) == list(expected) and list(got["brief"]) == list(expected["brief"])
    want, have = dict(_flatten(expected)), dict(_flatten(got))
    assert set(want) == set(have)
    wrong = {k: (have[k], v) for k, v in want.items() if round(have[k], 2) != round(v, 2)}
    assert not wrong
    assert got["brief"]["MR-full-mAP"] == 32.2 and got["brief"]["HL-min-VeryGood-mAP"] == 35.65


def test_first_gt_window_alone_gives_78_86_map(qvh_val):
    _, ground_truth = qvh_val
    single = [{"qid": g["qid"], "pred_relevant_windows": [g["relevant_windows"][0] + [1.0]]} for g in ground_truth]
    out = eval_submission(single, ground_truth)
    assert out["brief"]["MR-full-mAP"] == 78.86
    assert out["brief"]["MR-full-R1@0.7"] == 100.0


# ------------------------------------------------------------------------------------------- the CLI

def _cli(argv):
    parser = argparse.ArgumentParser()
    score_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def grounding_files(tmp_path):
    gt = _write_jsonl(tmp_path / "gt.jsonl", [
        {"video": "a.mp4", "duration": 30.0, "query": "first", "spans": [[0, 10]]},
        {"video": "a.mp4", "duration": 30.0, "query": "second", "spans": [[20, 40]]},
        {"video": "b.mp4", "duration": 20.0, "query": "third", "spans": [[5, 15]]},
    ])
    from tempsamp.data.readers import load_examples

    qids = [ex.qid for ex in load_examples(gt, "jsonl")]
    return tmp_path, gt, qids


def test_cli_grounding_round_trip(grounding_files, capsys):
    tmp, gt, qids = grounding_files
    pred = _write_jsonl(tmp / "pred.jsonl", [
        {"qid": qids[0], "vid": "a", "pred_span": [0, 5], "answer": "0 to 5"},  # IoU 0.5
        {"qid": qids[1], "vid": "a", "pred_span": [20, 30], "answer": "20 to 30"},  # 0.5; 1.0 with the GT clipped
        {"qid": qids[2], "vid": "b", "pred_span": None, "answer": "no idea"},  # unparsable: 0
    ])
    out = tmp / "m.json"
    assert _cli(["score", "grounding", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert (printed["R1@0.5"], printed["mIoU"], printed["n"], printed["n_unparsed"]) == (66.67, 33.33, 3, 1)
    assert _cli(["score", "grounding", "--pred", str(pred), "--gt", str(gt), "--strict"]) == 0
    assert json.loads(capsys.readouterr().out)["R1@0.5"] == 0.0
    assert _cli(["score", "grounding", "--pred", str(pred), "--gt", str(gt), "--clip-gt"]) == 0
    assert json.loads(capsys.readouterr().out)["mIoU"] == 50.0


def test_cli_grounding_answer_only_lines_are_parsed(grounding_files, capsys):
    tmp, gt, qids = grounding_files
    pred = _write_jsonl(tmp / "pred.jsonl", [{"qid": q, "answer": "<answer>0 to 10</answer>"} for q in qids])
    assert _cli(["score", "grounding", "--pred", str(pred), "--gt", str(gt)]) == 0
    assert json.loads(capsys.readouterr().out)["R1@0.3"] == 66.67  # IoU 1, 0, 1/3


def test_cli_grounding_refuses_differing_sets_unless_allowed(grounding_files, capsys):
    tmp, gt, qids = grounding_files
    pred = _write_jsonl(tmp / "pred.jsonl", [{"qid": qids[0], "pred_span": [0, 10]}])
    assert _cli(["score", "grounding", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    assert "2 of 3 ground-truth queries have no prediction" in err and qids[1] in err
    assert _cli(["score", "grounding", "--pred", str(pred), "--gt", str(gt), "--allow-missing"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert (m["R1@0.7"], m["mIoU"], m["n"], m["n_missing"]) == (33.33, 33.33, 3, 2)
    stray = _write_jsonl(tmp / "stray.jsonl", [{"qid": "zzz#9", "pred_span": [0, 1]}])
    assert _cli(["score", "grounding", "--pred", str(stray), "--gt", str(gt), "--allow-missing"]) == 2
    assert "not in the ground truth (e.g. zzz#9)" in capsys.readouterr().err


def test_cli_grounding_bad_line_and_wrong_video_are_named(grounding_files, capsys):
    tmp, gt, qids = grounding_files
    bad = _write_jsonl(tmp / "bad.jsonl", [{"qid": qids[0], "pred_span": [0, 1]}, {"qid": qids[1], "pred_span": [1]}])
    assert _cli(["score", "grounding", "--pred", str(bad), "--gt", str(gt), "--allow-missing"]) == 2
    assert "bad.jsonl:2: field 'pred_span'" in capsys.readouterr().err
    other = _write_jsonl(tmp / "other.jsonl", [{"qid": qids[0], "vid": "b", "pred_span": [0, 1]}])
    assert _cli(["score", "grounding", "--pred", str(other), "--gt", str(gt), "--allow-missing"]) == 2
    assert "other.jsonl:1: field 'vid'" in capsys.readouterr().err


def test_cli_qvhighlights_round_trip_and_missing(tmp_path, capsys):
    gt = _write_jsonl(tmp_path / "gt.jsonl", [_gt(1, [[0, 10]], duration=20, clips=[0], saliency=[[4, 4, 4]]),
                                              _gt(2, [[4, 8]], duration=20, clips=[2], saliency=[[4, 4, 4]])])
    rows = [{"qid": 1, "query": "q", "vid": "v1", "pred_relevant_windows": [[0, 10, 0.9]],
             "pred_saliency_scores": [1.0] + [0.0] * 9},
            {"qid": 2, "query": "q", "vid": "v2", "pred_relevant_windows": [[4, 8, 0.9]],
             "pred_saliency_scores": [0.0, 0.0, 1.0] + [0.0] * 7}]
    pred = _write_jsonl(tmp_path / "pred.jsonl", rows)
    out = tmp_path / "m.json"
    assert _cli(["score", "qvhighlights", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m == json.loads(out.read_text())
    assert m["brief"]["MR-full-mAP"] == 100.0 and m["brief"]["HL-min-VeryGood-Hit1"] == 100.0
    assert (m["n_queries"], m["n_missing"]) == (2, 0)
    half = _write_jsonl(tmp_path / "half.jsonl", rows[:1])
    assert _cli(["score", "qvhighlights", "--pred", str(half), "--gt", str(gt)]) == 2
    assert "1 of 2 ground-truth queries have no prediction (e.g. 2)" in capsys.readouterr().err
    assert _cli(["score", "qvhighlights", "--pred", str(half), "--gt", str(gt), "--allow-missing"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["brief"]["MR-full-mAP"] == 50.0 and m["n_missing"] == 1


def test_cli_qvhighlights_on_the_sample_file(qvh_val, tmp_path, capsys):
    out = tmp_path / "m.json"
    argv = ["score", "qvhighlights", "--pred", str(QVH / "sample_val_preds.jsonl"),
            "--gt", str(QVH / "highlight_val_release.jsonl"), "--out", str(out)]
    assert _cli(argv) == 0
    capsys.readouterr()
    expected = json.loads((QVH / "sample_val_preds_metrics_raw.json").read_text())
    assert json.loads(out.read_text())["brief"] == expected["brief"]
