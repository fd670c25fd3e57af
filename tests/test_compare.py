"""`tempsamp compare`: paired bootstrap over queries (and seeds) for grounding and QVHighlights."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tempsamp.evaluation import compare as cmp
from tempsamp.evaluation.compare import paired_bootstrap
from tempsamp.evaluation.qvhighlights import eval_submission, per_query_metrics

SHARED = Path(__file__).resolve().parents[2] / "shared"
QVH = SHARED / "annotations" / "qvhighlights"


def test_identical_sides_differ_by_nothing():
    a = np.random.default_rng(1).integers(0, 2, 40) * 100.0
    r = paired_bootstrap(a[None], a[None], n_boot=2000)
    assert (r["diff"], r["ci95"], r["p"], r["significant"]) == (0.0, [0.0, 0.0], 1.0, False)


def test_pairing_removes_the_spread_between_queries():
    a = np.random.default_rng(2).uniform(0, 100, 50)
    r = paired_bootstrap(a[None], (a + 1.0)[None], n_boot=2000)  # B is 1 point better on every query
    assert r["diff"] == pytest.approx(1.0) and r["ci95"] == pytest.approx([1.0, 1.0])
    assert r["significant"] and r["p"] == pytest.approx(2 / 2001)  # no replicate at or below 0


def test_interval_and_p_match_the_normal_approximation():
    # per-query differences +1 (60 queries) and -1 (40): mean 0.2, standard error sqrt(0.96 / 100) = 0.098
    b = np.r_[np.ones(60), np.zeros(40)]
    a = np.r_[np.zeros(60), np.ones(40)] * 1.0
    b, a = b * 1.0, a * 1.0  # B - A per query is +1 or -1
    r = paired_bootstrap(a[None], b[None], n_boot=20000, seed=3)
    assert r["diff"] == pytest.approx(0.2)
    assert r["ci95"][0] == pytest.approx(0.2 - 1.96 * 0.098, abs=0.03)
    assert r["ci95"][1] == pytest.approx(0.2 + 1.96 * 0.098, abs=0.03)
    assert 0.02 < r["p"] < 0.07  # two-sided normal p for z = 2.04 is 0.041


def test_seeds_widen_the_interval_when_runs_disagree():
    base = np.random.default_rng(4).uniform(0, 100, 200)
    a = np.stack([base - 10, base + 10])  # two seeds of A, 20 points apart
    b = np.stack([base + 1, base + 1])
    one_seed = paired_bootstrap(a[:1] + 10, b[:1], n_boot=4000)  # one seed each: a clear 1-point gain
    assert one_seed["significant"]
    both = paired_bootstrap(a, b, n_boot=4000)
    assert both["diff"] == pytest.approx(1.0) and not both["significant"]
    assert both["ci95"][0] < -5 and both["ci95"][1] > 5


def _cli(argv, capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cmp.register(sub)
    args = parser.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr()


def test_cli_grounding_with_seeds_per_side(tmp_path, capsys):
    from tempsamp.data.readers import load_examples

    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(json.dumps({"video": f"v{i}.mp4", "duration": 30.0, "query": "q", "spans": [[0, 10]]}) + "\n"
                          for i in range(30)))
    qids = [ex.qid for ex in load_examples(gt, "jsonl")]
    rng = np.random.default_rng(5)

    def write(name, good):  # `good` queries exact, the rest a third off
        rows = [{"qid": q, "pred_span": [0, 10] if i < good else [0, 5]} for i, q in enumerate(qids)]
        rows = [rows[i] for i in rng.permutation(len(rows))]  # line order does not matter
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    a = [write("a0.jsonl", 10), write("a1.jsonl", 12)]
    b = [write("b0.jsonl", 25), write("b1.jsonl", 24)]
    out = tmp_path / "c.json"
    code, io = _cli(["compare", ",".join(a), str(tmp_path / "b*.jsonl"), "--gt", str(gt), "--n-boot", "2000",
                     "--out", str(out)], capsys)
    assert code == 0, io.err
    result = json.loads(out.read_text())
    assert result["seeds"] == [2, 2] and result["n_queries"] == 30
    r = result["metrics"]["R1@0.7"]
    assert r["a"] == pytest.approx(100 * 22 / 60) and r["b"] == pytest.approx(100 * 49 / 60)
    assert r["significant"] and r["p"] < 0.01
    assert result["metrics"]["R1@0.3"]["diff"] == 0.0  # IoU 0.5 and 1 both pass 0.3
    assert "R1@0.7" in io.out and "95% interval" in io.out
    code, io = _cli(["compare", a[0], str(tmp_path / "none*.jsonl"), "--gt", str(gt)], capsys)
    assert code == 2 and "no file matches" in io.err
    code, io = _cli(["compare", a[0], b[0]], capsys)  # no --gt and no queries.jsonl beside the files
    assert code == 2 and "--gt is needed" in io.err


def test_cli_reads_the_ground_truth_of_an_eval_folder(tmp_path, capsys):
    folder = tmp_path / "eval"
    folder.mkdir()
    queries = [{"qid": f"x#{i}", "vid": "x", "video_path": None, "duration": 10.0, "query": "q", "spans": [[0, 4]],
                "task": "grounding"} for i in range(4)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for name, span in (("a.jsonl", [0, 2]), ("b.jsonl", [0, 4])):
        (folder / name).write_text("".join(json.dumps({"qid": q["qid"], "pred_span": span}) + "\n" for q in queries))
    code, io = _cli(["compare", str(folder / "a.jsonl"), str(folder / "b.jsonl"), "--n-boot", "500"], capsys)
    assert code == 0, io.err
    assert re.search(r"mIoU\s+50\.00\s+100\.00\s+\+50\.00", io.out)


def _gt(qid, windows, clips, saliency, duration=20):
    return {"qid": qid, "query": "q", "vid": f"v{qid}", "duration": duration, "relevant_windows": windows,
            "relevant_clip_ids": clips, "saliency_scores": saliency}


def test_qvhighlights_per_query_values_average_to_the_official_numbers():
    rng = np.random.default_rng(6)
    gts, preds = [], []
    for q in range(12):
        start = int(rng.integers(0, 8)) * 2
        gts.append(_gt(q, [[start, start + 4], [start + 8, start + 10]][: 1 + q % 2],
                       [start // 2, start // 2 + 1], [[4, 3, 4], [1, 4, 2]]))
        windows = [[float(s), float(s + rng.integers(2, 8)), float(rng.uniform())] for s in rng.integers(0, 14, 3)]
        preds.append({"qid": q, "pred_relevant_windows": windows, "pred_saliency_scores": rng.uniform(size=10).tolist()})
    official = eval_submission(preds, gts)["brief"]
    values = per_query_metrics(preds, gts)
    for key in cmp.QVH_METRICS:
        assert float(f"{100 * values[key].mean():.2f}") == official[key], key


@pytest.mark.skipif(not QVH.is_dir(), reason=f"{QVH} not present")
def test_qvhighlights_sample_file_against_itself(tmp_path, capsys):
    sample = QVH / "sample_val_preds.jsonl"
    code, io = _cli(["compare", str(sample), str(sample), "--gt", str(QVH / "highlight_val_release.jsonl"),
                     "--n-boot", "500"], capsys)
    assert code == 0 and "MR-full-mAP" in io.out and "+0.00" in io.out


def test_several_metrics_share_one_set_of_replicates():
    rng = np.random.default_rng(7)
    a, b = rng.uniform(0, 100, (3, 2, 60)), rng.uniform(0, 100, (3, 3, 60))  # 3 metrics, 2 vs 3 seeds
    together = paired_bootstrap(a, b, n_boot=1500, seed=9)
    alone = [paired_bootstrap(a[m], b[m], n_boot=1500, seed=9) for m in range(3)]
    # The same replicates: equal up to the last bits of the vectorised means (numpy's summation order
    # over a [3, ...] array differs from one metric at a time on some CPUs); other replicates would
    # move the interval by a whole point.
    for one, shared in zip(alone, together):
        assert one.keys() == shared.keys() and one["significant"] == shared["significant"]
        for key in ("a", "b", "diff", "p"):
            assert one[key] == pytest.approx(shared[key], rel=1e-12, abs=1e-12)
        assert one["ci95"] == pytest.approx(shared["ci95"], rel=1e-12, abs=1e-12)


def test_p_value_agrees_with_the_interval():
    """p < 0.05 exactly when the 95% percentile interval excludes 0 (up to one replicate), also on
    skewed replicates, where a p from the zero-shifted distribution disagreed with the interval."""
    rng = np.random.default_rng(5)
    n_boot = 2000
    for case in range(30):
        a = rng.uniform(0, 100, (1, 50))
        b = a + rng.exponential(4.0, (1, 50)) * rng.choice([-1.0, 1.0], (1, 50), p=[0.35, 0.65])  # skewed gaps
        r = paired_bootstrap(a, b, n_boot=n_boot, seed=case)
        slack = 2 / (n_boot + 1)
        if r["significant"]:
            assert r["p"] <= 0.05 + slack, (case, r)
        else:
            assert r["p"] >= 0.05 - slack, (case, r)


def test_cli_prints_small_p_values_as_such_and_the_star_legend_only_with_stars(tmp_path, capsys):
    from tempsamp.cli import main

    folder = tmp_path / "eval"
    folder.mkdir()
    queries = [{"qid": f"x#{i}", "vid": "x", "video_path": None, "duration": 10.0, "query": "q", "spans": [[0, 4]],
                "task": "grounding"} for i in range(40)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for name, span in (("a.jsonl", [0, 2]), ("b.jsonl", [0, 4])):
        (folder / name).write_text("".join(json.dumps({"qid": q["qid"], "pred_span": span}) + "\n" for q in queries))
    a, b = str(folder / "a.jsonl"), str(folder / "b.jsonl")
    assert main(["compare", a, b, "--n-boot", "2000"]) == 0
    out = capsys.readouterr().out
    miou = next(line for line in out.splitlines() if line.startswith("mIoU"))
    assert miou.endswith("< 0.001  *") and "0.000" not in out
    assert out.strip().splitlines()[-1] == "* the 95% interval excludes 0"
    assert main(["compare", a, a, "--n-boot", "200"]) == 0  # nothing differs: no star, no legend
    out = capsys.readouterr().out
    assert "*" not in out and "1.000" in out

    for bad, shown in (("0", "0"), ("-5", "-5")):
        with pytest.raises(SystemExit) as exit:
            main(["compare", a, b, "--n-boot", bad])
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1] == f"tempsamp compare: error: argument --n-boot: must be >= 1, got {shown}"
