"""Temporal grounding metrics: R1@m and mIoU, with the convention behind published MLLM numbers.

Default convention (docs/evaluation.md, TimeZero-style):
  - IoU = max(0, min(e, ê) - max(s, ŝ)) / (max(e, ê) - min(s, ŝ))  (``tempsamp.spans.temporal_iou``);
    a prediction with start > end is not swapped (it scores 0); nothing is clipped.
  - R1@m counts IoU >= m, for m in {0.3, 0.5, 0.7}; mIoU is the mean top-1 IoU over *all* queries.
  - A NaN prediction row (unparsable answer, missing video, missing prediction) scores IoU 0 and stays
    in the denominator.
  - Percent, rounded to 2 decimals (as the official QVHighlights evaluator rounds).

Other evaluators' conventions, each a keyword (and a ``tempsamp score grounding`` flag):
  - ``strict=True``: R1@m counts IoU > m (an IoU exactly at the threshold is a miss).
  - ``clip_gt=True``: ground-truth spans are clipped to [0, duration] first (needs ``durations``);
    562 of the 3720 Charades-STA test ends lie past the video's end.
  - ``iou_decimals=2``: IoU rounded to 2 decimals (numpy's round-half-even on the binary float)
    before thresholds and the mean.
Peers' conventions as a whole (their parser, rounding and treatment of missing queries):
``tempsamp.evaluation.conventions`` (``tempsamp score grounding --convention timezero|vtimellm``).
"""

from __future__ import annotations

import numpy as np

from tempsamp.spans import temporal_iou

THRESHOLDS = (0.3, 0.5, 0.7)


def _as_spans(name: str, spans) -> np.ndarray:
    array = np.asarray(spans, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name}: expected an [N, 2] array of (start, end) spans, got shape {array.shape}")
    return array


def grounding_ious(pred, gt, *, durations=None, clip_gt: bool = False, iou_decimals: int | None = None) -> np.ndarray:
    """Per-query IoU [N] of predicted vs ground-truth spans under the chosen convention.

    pred: [N, 2] float, NaN rows for queries without a usable prediction (IoU 0).
    gt:   [N, 2] float, finite. durations: [N] seconds, needed only for ``clip_gt``.
    """
    pred = _as_spans("pred", pred)
    gt = _as_spans("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred has {len(pred)} spans but gt has {len(gt)}: one prediction row per query is needed")
    bad = ~np.isfinite(gt).all(axis=1)
    if bad.any():
        raise ValueError(f"gt: {int(bad.sum())} ground-truth spans are not finite (first at row {int(np.argmax(bad))})")
    if clip_gt:
        if durations is None:
            raise ValueError("clip_gt needs the videos' durations (durations=[N] seconds)")
        durations = np.asarray(durations, dtype=np.float64).reshape(-1)
        if durations.shape != (len(gt),) or not (np.isfinite(durations).all() and (durations > 0).all()):
            raise ValueError(f"durations: expected {len(gt)} positive finite numbers")
        gt = np.clip(gt, 0.0, durations[:, None])
    iou = temporal_iou(pred, gt)
    if iou_decimals is not None:
        iou = np.round(iou, iou_decimals)
    return iou


def grounding_metrics(pred, gt, *, thresholds=THRESHOLDS, strict: bool = False, durations=None,
                      clip_gt: bool = False, iou_decimals: int | None = None, decimals: int | None = 2) -> dict:
    """{"R1@0.3", "R1@0.5", "R1@0.7", "mIoU"} in percent over all N queries, plus "n".
    With no queries at all the metrics are None (undefined), never 0.

    See the module docstring for the default convention and the keyword switches; ``decimals=None``
    keeps full precision.
    """
    iou = grounding_ious(pred, gt, durations=durations, clip_gt=clip_gt, iou_decimals=iou_decimals)
    return metrics_from_ious(iou, thresholds=thresholds, strict=strict, decimals=decimals)


def metrics_from_ious(iou, *, thresholds=THRESHOLDS, strict: bool = False, decimals: int | None = 2) -> dict:
    """{"R1@m"..., "mIoU", "n"} in percent from per-query IoUs (every entry is in the denominator)."""
    iou = np.asarray(iou, dtype=np.float64).reshape(-1)
    n = len(iou)

    def percent(fraction: float) -> float:
        value = 100.0 * fraction
        return round(value, decimals) if decimals is not None else value

    metrics = {}
    for m in thresholds:
        hits = iou > m if strict else iou >= m
        metrics[f"R1@{m:g}"] = percent(float(hits.mean())) if n else None
    metrics["mIoU"] = percent(float(iou.mean())) if n else None
    metrics["n"] = n
    return metrics
