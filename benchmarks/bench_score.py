"""Scorer speed: the vectorised metrics vs a straightforward per-query Python loop, side by side.

1. Grounding on the full ActivityNet Captions val_2 (17,031 queries): predictions are the ground
   truth shifted and jittered by seeded random amounts, 5% of them unparsable (NaN).
2. QVHighlights val (1,550 queries): the official sample predictions, every metric of the official
   evaluator, against a per-query loop written the way the official code is (one query, one
   threshold, one prediction at a time).

Both paths must give the same numbers (asserted). Reads ../shared/annotations; without it, prints a
note and exits 0. Run: .venv/bin/python benchmarks/bench_score.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from tempsamp.evaluation.grounding import THRESHOLDS, grounding_metrics
from tempsamp.evaluation.qvhighlights import (IOU_THRESHOLDS, LENGTH_RANGES, MAX_PRED_WINDOWS, SALIENCY_LEVELS,
                                              eval_submission)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "annotations"


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


# ------------------------------------------------------------------------------ grounding, per query

def grounding_loop(pred: list, gt: list) -> dict:
    hits = {m: 0 for m in THRESHOLDS}
    total = 0.0
    for (s, e), (gs, ge) in zip(pred, gt):
        iou = 0.0
        if s == s and e == e:  # not NaN
            union = max(e, ge) - min(s, gs)
            iou = max(0.0, min(e, ge) - max(s, gs)) / union if union > 0 else 0.0
        total += iou
        for m in THRESHOLDS:
            hits[m] += iou >= m
    n = len(gt)
    out = {f"R1@{m:g}": round(100.0 * (hits[m] / n), 2) for m in THRESHOLDS}
    out["mIoU"] = round(100.0 * (total / n), 2)
    out["n"] = n
    return out


# --------------------------------------------------------------------------- QVHighlights, per query

def _iou(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def _interpolated_ap(tp: list[bool], n_gt: int) -> float:
    precision, recall, hits = [], [], 0
    for k, hit in enumerate(tp, start=1):
        hits += hit
        precision.append(hits / k)
        recall.append(hits / n_gt)
    mprecision = [0.0] + precision + [0.0]
    mrecall = [0.0] + recall + [1.0]
    for i in range(len(mprecision) - 2, -1, -1):
        mprecision[i] = max(mprecision[i], mprecision[i + 1])
    return sum((mrecall[i] - mrecall[i - 1]) * mprecision[i] for i in range(1, len(mrecall)) if mrecall[i] != mrecall[i - 1])


def _query_mr_ap(gt_windows: list, pred_windows: list) -> list[float]:
    preds = sorted(pred_windows[:MAX_PRED_WINDOWS], key=lambda w: -w[2])
    aps = []
    for threshold in IOU_THRESHOLDS:
        matched, tp = set(), []
        for p in preds:
            ious = [_iou(p, g) for g in gt_windows]
            hit = False
            for j in sorted(range(len(gt_windows)), key=lambda j: (ious[j], j), reverse=True):
                if ious[j] < threshold:
                    break
                if j not in matched:
                    matched.add(j)
                    hit = True
                    break
            tp.append(hit)
        aps.append(_interpolated_ap(tp, len(gt_windows)) if tp else 0.0)
    return aps


def _query_top1_iou(gt_windows: list, pred_windows: list) -> float:
    if not pred_windows:
        return 0.0
    top = pred_windows[0][:2]
    ious = [_iou(top, g) for g in gt_windows]
    g = gt_windows[ious.index(max(ious))]
    union = max(top[1], g[1]) - min(top[0], g[0])
    return max(0.0, min(top[1], g[1]) - max(top[0], g[0])) / union if union != 0 else 0.0


def _query_hl_ap(labels: list[float], scores: list[float]) -> float:
    if len(set(labels)) == 1:
        return float(labels[0])
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ends = []  # (precision, recall rises) at each distinct score
    hits = previous_hits = 0
    for rank, i in enumerate(order, start=1):
        hits += labels[i]
        if rank == len(order) or scores[order[rank]] != scores[i]:
            ends.append([hits / rank, hits > previous_hits])
            previous_hits = hits
    best = 0.0
    for end in reversed(ends):
        best = end[0] = max(best, end[0])
    return float(np.mean([p for p, rises in ends if rises]))


def qvhighlights_loop(submission: list[dict], ground_truth: list[dict]) -> dict:
    preds = {d["qid"]: d for d in submission}
    pct = lambda x: float(f"{100 * x:.2f}")  # noqa: E731 (the official rounding)
    metrics = {}
    for name, (low, high) in LENGTH_RANGES.items():
        aps, top_ious = [], []
        for gt in ground_truth:
            windows = [w for w in gt["relevant_windows"] if name == "full" or low < w[1] - w[0] <= high]
            if windows:
                pred_windows = preds[gt["qid"]]["pred_relevant_windows"]
                aps.append(_query_mr_ap(windows, pred_windows))
                top_ious.append(_query_top1_iou(windows, pred_windows))
        per_threshold = np.mean(aps, axis=0)
        mr_map = {str(t): pct(v) for t, v in zip(IOU_THRESHOLDS, per_threshold)}
        mr_map["average"] = pct(np.mean(per_threshold))
        mr_r1 = {str(t): pct(np.mean([iou >= t for iou in top_ious])) for t in IOU_THRESHOLDS}
        metrics[name] = {"MR-mAP": mr_map, "MR-R1": mr_r1}
    for level_name, level in SALIENCY_LEVELS.items():
        aps, hits = [], []
        for gt in ground_truth:
            n_clips = int(gt["duration"] / 2)
            full = [[0, 0, 0] for _ in range(n_clips)]
            for clip, row in zip(gt["relevant_clip_ids"], gt["saliency_scores"]):
                full[clip] = row
            scores = preds[gt["qid"]]["pred_saliency_scores"]
            padded = (list(scores) + [0.0] * n_clips)[:n_clips]
            for a in range(3):
                aps.append(_query_hl_ap([float(full[c][a] >= level) for c in range(n_clips)], padded))
            top = scores.index(max(scores))
            hits.append(top < n_clips and max(full[top]) >= level)
        metrics[f"HL-min-{level_name}"] = {"HL-mAP": pct(np.mean(aps)), "HL-Hit1": pct(np.mean(hits))}
    return metrics


def main() -> int:
    if not SHARED.is_dir():
        print(f"bench_score: {SHARED} not present; nothing to measure")
        return 0
    from tempsamp.data.readers import load_examples

    examples = load_examples(SHARED / "activitynet_captions" / "val_2.json", "activitynet")
    gt = np.array([ex.span for ex in examples])
    rng = np.random.default_rng(0)
    pred = gt + rng.uniform(-5, 5, size=(len(gt), 1)) + rng.normal(0, 2, size=gt.shape)
    pred[rng.random(len(gt)) < 0.05] = np.nan
    pred_list, gt_list = pred.tolist(), gt.tolist()
    t_vec, fast = best_of(lambda: grounding_metrics(pred, gt), 20)
    t_loop, slow = best_of(lambda: grounding_loop(pred_list, gt_list), 3)
    assert fast == slow, (fast, slow)
    print(f"grounding, ActivityNet val_2 ({len(gt)} queries): vectorised {t_vec * 1e3:.2f} ms, "
          f"per-query loop {t_loop * 1e3:.1f} ms, ratio {t_loop / t_vec:.0f}x   {fast}")

    qvh = SHARED / "qvhighlights"
    submission = [json.loads(line) for line in (qvh / "sample_val_preds.jsonl").read_text().splitlines() if line.strip()]
    ground_truth = [json.loads(line) for line in (qvh / "highlight_val_release.jsonl").read_text().splitlines() if line.strip()]
    t_vec, fast = best_of(lambda: eval_submission(submission, ground_truth), 5)
    t_loop, slow = best_of(lambda: qvhighlights_loop(submission, ground_truth), 1)
    fast_sections = {k: v for k, v in fast.items() if k != "brief"}
    assert fast_sections == slow, "vectorised and per-query QVHighlights metrics differ"
    print(f"QVHighlights val ({len(ground_truth)} queries, every official metric): vectorised {t_vec * 1e3:.0f} ms, "
          f"per-query loop {t_loop * 1e3:.0f} ms, ratio {t_loop / t_vec:.1f}x   brief {dict(fast['brief'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
