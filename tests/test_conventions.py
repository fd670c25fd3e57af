"""Peers' grounding conventions, as cases built from their evaluation scripts' rules (not their code)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from tempsamp.evaluation import score_cli
from tempsamp.evaluation.conventions import get_convention, parse_timezero, parse_vtimellm, query_iou


def _cli(argv, capsys):
    parser = argparse.ArgumentParser()
    score_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code = args.func(args)
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


def _files(tmp_path, gts, preds):
    """gts: [(duration, [s, e])]; preds: {index: line without qid} (absent index: no line)."""
    from tempsamp.data.readers import load_examples

    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(json.dumps({"video": f"v{i}.mp4", "duration": d, "query": f"q{i}", "spans": [span]}) + "\n"
                          for i, (d, span) in enumerate(gts)))
    qids = [ex.qid for ex in load_examples(gt, "jsonl")]
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"qid": qids[i], **line}) + "\n" for i, line in preds.items()))
    return ["--pred", str(pred), "--gt", str(gt)]


# ------------------------------------------------------------------------------------------ parsers

@pytest.mark.parametrize("text, span", [
    ("<think>first 1 to 2</think><answer>3.5 to 7</answer> or rather 8 to 9", (8.0, 9.0)),  # last, anywhere
    ("<think>it starts 3 to 9</think><answer>unsure</answer>", (3.0, 9.0)),  # inside <think> counts
    ("-3 to 5", (3.0, 5.0)),  # the minus sign is not part of a number
    ("from 3 and 4.25", (3.0, 4.25)),
    ("12.54 to 17.83.", (12.54, 17.83)),
    (".5 to 2", (5.0, 2.0)),  # no leading-dot numbers: ".5" reads 5
    ("3.5to 7", None), ("3.5  to 7", None), ("3 - 7", None), ("00:03 to 00:07", (3.0, 0.0)),  # reads "03 to 00"
    ("3s to 7s", None), (None, None),
])
def test_timezero_parser(text, span):
    assert parse_timezero(text) == span


@pytest.mark.parametrize("text, span", [
    ("The man jumps from 05 to 17.", (0.05, 0.17)),
    ("from 10 to 20, no, 30 to 40", (0.10, 0.20)),  # the first match
    ("from 105 to 170", (0.05, 0.17)),  # two digits wherever they start
    ("from 5 to 17", None), ("from 10 and 99", (0.10, 0.99)), ("", None),
])
def test_vtimellm_parser(text, span):
    assert parse_vtimellm(text) == span


# ------------------------------------------------------------------------------------------ IoU rules

def test_vtimellm_rounds_with_python_round_on_spans_divided_by_the_duration():
    conv = get_convention("vtimellm", parser="tempsamp")
    # 0.295, 0.495, 0.695 are stored just below the half: Python's round gives 0.29, 0.49, 0.69
    # (numpy's round, on x * 100, gives 0.30, 0.50, 0.70).
    got = [query_iou(conv, (0.0, x), (0.0, 1.0), 1.0) for x in (0.295, 0.495, 0.695)]
    assert got == [0.29, 0.49, 0.69]
    assert list(np.round([0.295, 0.495, 0.695], 2)) == [0.3, 0.5, 0.7]
    # The same spans in seconds and as fractions of a 17.1-s video: 0.6250000000000001 vs 0.625.
    pred, gt, d = (0.5, 8.05), (2.3, 9.7), 17.1
    assert round(((8.05 - 2.3) / (9.7 - 0.5)), 2) == 0.63
    assert query_iou(conv, (pred[0] / d, pred[1] / d), gt, d) == 0.62


def test_cli_vtimellm_versus_project_rounding(tmp_path, capsys):
    gts = [(100.0, [0.0, 100.0])] * 3
    answers = {i: {"answer": f"<answer>0 to {x}</answer>"} for i, x in enumerate((29.5, 49.5, 69.5))}
    args = _files(tmp_path, gts, answers)
    code, vt = _cli(["score", "grounding", *args, "--convention", "vtimellm", "--parser", "tempsamp"], capsys)
    assert code == 0
    assert (vt["R1@0.3"], vt["R1@0.5"], vt["R1@0.7"], vt["mIoU"]) == (66.67, 33.33, 0.0, 49.0)
    assert vt["convention"]["name"] == "vtimellm+parser=tempsamp" and "round(iou, 2)" in vt["convention"]["iou"]
    code, ours = _cli(["score", "grounding", *args, "--round-iou", "2"], capsys)
    assert (ours["R1@0.3"], ours["R1@0.5"], ours["R1@0.7"]) == (100.0, 66.67, 33.33)


def test_cli_vtimellm_reads_hundredths_of_the_video(tmp_path, capsys):
    # GT 10-30 s of 100 s = 0.10-0.30; "15 to 35" = 0.15-0.35: IoU 0.15 / 0.25, rounded 0.6.
    # GT 0-50 of 50 s; "from 00 to 99" = 0-49.5 s: 0.99. Third: "5 to 9" has no two-digit pair: 0.
    args = _files(tmp_path, [(100.0, [10.0, 30.0]), (50.0, [0.0, 50.0]), (20.0, [0.0, 5.0])],
                  {0: {"answer": "from 15 to 35"}, 1: {"answer": "from 00 to 99."}, 2: {"answer": "5 to 9"}})
    code, m = _cli(["score", "grounding", *args, "--convention", "vtimellm"], capsys)
    assert code == 0
    assert (m["R1@0.5"], m["R1@0.7"], m["mIoU"], m["n"], m["n_unparsed"]) == (66.67, 33.33, 53.0, 3, 1)


# ------------------------------------------------------------------------------------------ missing queries

def _four_kinds(tmp_path):
    gts = [(30.0, [0.0, 10.0])] * 4
    preds = {0: {"answer": "<answer>0 to 10</answer>"},  # exact
             1: {"answer": "I cannot tell"},  # unparsable: IoU 0 everywhere
             2: {"answer": None, "pred_span": None}}  # inference failed; query 3 has no line at all
    return _files(tmp_path, gts, preds)


def test_peers_drop_missing_and_failed_queries_and_say_how_many(tmp_path, capsys):
    args = _four_kinds(tmp_path)
    for name in ("timezero", "vtimellm"):
        code, m = _cli(["score", "grounding", *args, "--convention", name], capsys)
        assert code == 0
        assert (m["n"], m["n_queries"], m["n_missing"], m["n_failed"], m["n_dropped"]) == (2, 4, 1, 1, 2)
        assert m["convention"]["missing_and_failed"] == "dropped from the denominator"
        assert m["counts"].startswith("2 of 4 queries in the denominator")
    code, m = _cli(["score", "grounding", *args, "--convention", "timezero"], capsys)
    assert (m["R1@0.3"], m["mIoU"], m["n_unparsed"]) == (50.0, 50.0, 1)
    code, m = _cli(["score", "grounding", *args, "--convention", "vtimellm"], capsys)
    assert (m["mIoU"], m["n_unparsed"]) == (0.0, 2)  # "0 to 10" is not two two-digit numbers
    code, err = _cli(["score", "grounding", *args], capsys)  # the default refuses
    assert code == 2 and "1 of 4 ground-truth queries have no prediction" in err
    code, m = _cli(["score", "grounding", *args, "--allow-missing"], capsys)
    assert (m["R1@0.3"], m["n"], m["n_dropped"]) == (25.0, 4, 0)
    code, m = _cli(["score", "grounding", *args, "--convention", "timezero", "--missing", "miss"], capsys)
    assert (m["R1@0.3"], m["n"]) == (25.0, 4) and m["convention"]["name"] == "timezero+missing=miss"


def test_timezero_reads_the_think_block_where_the_project_does_not(tmp_path, capsys):
    args = _files(tmp_path, [(30.0, [3.0, 9.0])], {0: {"answer": "<think>3 to 9</think><answer>unsure</answer>",
                                                        "pred_span": None}})
    code, tz = _cli(["score", "grounding", *args, "--convention", "timezero"], capsys)
    code, ours = _cli(["score", "grounding", *args], capsys)
    assert (tz["mIoU"], tz["n_unparsed"]) == (100.0, 0)
    assert (ours["mIoU"], ours["n_unparsed"]) == (0.0, 1)


def test_peer_conventions_need_raw_answers_and_refuse_project_switches(tmp_path, capsys):
    args = _files(tmp_path, [(30.0, [3.0, 9.0])], {0: {"pred_span": [3.0, 9.0]}})
    code, err = _cli(["score", "grounding", *args, "--convention", "timezero"], capsys)
    assert code == 2 and "pred.jsonl:1: field 'answer': missing; the timezero parser reads the raw answer" in err
    code, err = _cli(["score", "grounding", *args, "--convention", "vtimellm", "--round-iou", "2"], capsys)
    assert code == 2 and "belong to the tempsamp convention" in err
    code, m = _cli(["score", "grounding", *args], capsys)
    assert m["mIoU"] == 100.0 and m["convention"]["name"] == "tempsamp"


def test_project_convention_can_drop_missing_queries_and_keep_its_switches(tmp_path, capsys):
    args = _four_kinds(tmp_path)
    code, m = _cli(["score", "grounding", *args, "--missing", "drop", "--round-iou", "2"], capsys)
    assert code == 0, m
    assert (m["R1@0.3"], m["n"], m["n_dropped"]) == (50.0, 2, 2)
    assert m["convention"]["name"] == "tempsamp+missing=drop" and m["convention"]["iou_decimals"] == 2
