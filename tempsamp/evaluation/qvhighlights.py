"""QVHighlights moment retrieval and highlight detection, computed exactly as the official evaluator.

The official evaluator is moment_detr's ``standalone_eval/eval.py``. It loops over queries (with a
process pool); this module computes the same numbers with numpy over all queries at once, and
returns the same structure with the same key names (``sample_val_preds_metrics_raw.json``).

Moment retrieval (MR)
- Only the first 10 predicted windows ``[start, end, score]`` of a line are kept (list order), then
  sorted by score, descending; tied scores keep list order (the official stable ``list.sort``).
- IoU = intersection / (len1 + len2 - intersection). At each threshold 0.50, 0.55, ..., 0.95 the
  predictions are matched greedily in score order: a prediction takes the still unmatched GT window
  of highest IoU when that IoU >= threshold (between GT windows of equal IoU, the later one, the
  order the official ``argsort()[::-1]`` walks), else it is a false positive.
- AP: all-point interpolated precision envelope, recall over the query's number of GT windows.
  mAP@t = mean over queries; "average" = mean over the 10 thresholds.
- R1@t: the top-1 prediction is ``pred_relevant_windows[0]`` (list order, not the highest score),
  compared with the GT window of highest IoU to it (the first on ties); counts IoU >= t.
- Splits by GT window length: short (0, 10], middle (10, 30], long (30, 150]. A query enters a split
  with only its GT windows in that range, and is left out when it has none; "full" keeps all.
- Every number is ``float(f"{100 * x:.2f}")``, as in the official code.

Highlight detection (HL), at three levels: a clip is positive for an annotator when their score is
>= 2 (Fair), >= 3 (Good) or >= 4 (VeryGood).
- A video has int(duration / 2) clips; relevant clips carry their 3 annotators' 0-4 scores, others 0.
- HL-mAP, per query and per annotator: the predicted saliency list truncated or zero-padded to the
  clip count, then the official ``get_ap``: a precision-recall curve over the distinct predicted
  scores (tied clips enter together), precision made monotone toward higher recall, and AP = the
  *plain mean* of that precision at each threshold where recall rises (not weighted by the recall
  step: a tie group holding several positives counts once). Labels all 1 score 1, all 0 score 0.
  Mean over queries x 3 annotators.
- HIT@1: the clip with the highest predicted score (the first on ties, over the full untruncated
  list) counts when any annotator marks it positive; an index past the video's clips is a miss.

Where this module departs from the official code, only for inputs that code cannot score:
- A line with an empty window list scores AP 0 and R1 0 and stays in the means (the official code
  drops it from mAP and crashes in R1). An empty saliency list is zero-padded for HL-mAP as the
  official code pads short lists, and is a HIT@1 miss (the official argmax crashes).
- A zero union (degenerate windows) gives IoU 0 (the official code gets NaN, which it matches).
- A split no query falls in gives None (the official code: NaN, not valid JSON).
- Query ids are compared as strings: 2579 and "2579" are the same query.
- ``allow_missing=True``: a ground-truth query without a prediction line scores 0 on every metric
  (AP, R1, HL-AP, HIT@1) and stays in every mean. Predictions for queries absent from the ground
  truth, and duplicate prediction lines, are always refused.
"""

from __future__ import annotations

import numpy as np

IOU_THRESHOLDS = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))
R1_THRESHOLDS = IOU_THRESHOLDS
LENGTH_RANGES = {"short": (0, 10), "middle": (10, 30), "long": (30, 150), "full": (0, 150)}
SALIENCY_LEVELS = {"Fair": 2, "Good": 3, "VeryGood": 4}
MAX_PRED_WINDOWS = 10
CLIP_SECONDS = 2
N_ANNOTATORS = 3


def _percent(fraction) -> float:
    return float(f"{100 * fraction:.2f}")


def _percent_or_none(values: np.ndarray):
    return _percent(values.mean()) if values.size else None


# --------------------------------------------------------------------------------------------------
# Input checks: one aligned list of prediction lines and GT lines (same queries, same order)
# --------------------------------------------------------------------------------------------------

def _qid_key(qid) -> str:
    return str(qid)


def _numbers(value, width: int, field: str, where: str) -> np.ndarray:
    """``value`` as a float array of its first ``width`` numbers (finite), or a ValueError naming the place."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 1 or len(array) < width:
        raise ValueError(f"{where}: field {field!r}: expected a list of {width} numbers, got {value!r}")
    array = array[:width]
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: field {field!r}: values must be finite, got {value!r}")
    return array


def _windows(value: list, width: int, field: str, where: str) -> np.ndarray:
    """A list of windows -> [n, width] float array (extra columns ignored), checked."""
    if not value:
        return np.zeros((0, width))
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 2 or array.shape[1] < width or not np.isfinite(array[:, :width]).all():
        for window in value:  # find the offending window for the message
            _numbers(window, width, field, where)
        raise ValueError(f"{where}: field {field!r}: expected a list of windows of {width} numbers, got {value!r}")
    return array[:, :width]


def _list_field(line: dict, field: str, where: str) -> list:
    value = line.get(field)
    if not isinstance(value, list):
        raise ValueError(f"{where}: field {field!r}: expected a list, got {value!r}")
    return value


def align(submission: list[dict], ground_truth: list[dict], *, allow_missing: bool = False,
          submission_sources=None, ground_truth_sources=None) -> tuple[list[dict | None], list[str]]:
    """The prediction line of each GT query, in GT order (None where missing and allowed).

    Refuses duplicate or unknown prediction qids and, unless ``allow_missing``, missing ones; the
    message names how many and the first few ids. Returns (aligned lines, their sources).
    """
    submission_sources = submission_sources or [f"submission[{i}]" for i in range(len(submission))]
    ground_truth_sources = ground_truth_sources or [f"ground_truth[{i}]" for i in range(len(ground_truth))]
    by_qid: dict[str, int] = {}
    for i, line in enumerate(submission):
        if not isinstance(line, dict) or "qid" not in line:
            raise ValueError(f"{submission_sources[i]}: field 'qid': every prediction line needs a query id")
        key = _qid_key(line["qid"])
        if key in by_qid:
            raise ValueError(f"{submission_sources[i]}: field 'qid': query {line['qid']!r} already predicted at "
                             f"{submission_sources[by_qid[key]]}")
        by_qid[key] = i
    gt_keys = []
    for i, line in enumerate(ground_truth):
        if not isinstance(line, dict) or "qid" not in line:
            raise ValueError(f"{ground_truth_sources[i]}: field 'qid': every ground-truth line needs a query id")
        gt_keys.append(_qid_key(line["qid"]))
    if len(set(gt_keys)) != len(gt_keys):
        raise ValueError("ground truth: duplicate query ids")
    gt_key_set = set(gt_keys)
    extra = [k for k in by_qid if k not in gt_key_set]
    missing = [k for k in gt_keys if k not in by_qid]
    if extra:
        raise ValueError(f"{len(extra)} predicted queries are not in the ground truth (e.g. {', '.join(extra[:5])}): "
                         "wrong prediction or ground-truth file?")
    if missing and not allow_missing:
        raise ValueError(f"{len(missing)} of {len(gt_keys)} ground-truth queries have no prediction "
                         f"(e.g. {', '.join(missing[:5])}); pass allow_missing (--allow-missing) to score them as misses")
    lines = [submission[by_qid[k]] if k in by_qid else None for k in gt_keys]
    sources = [submission_sources[by_qid[k]] if k in by_qid else "missing" for k in gt_keys]
    return lines, sources


def _flat_ragged(rows: list[list], columns: int | None, field: str, sources: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-query lists -> (all values in one float array: [N] or [N, columns]; per-query lengths [Q]).

    One numpy conversion for the whole file; only when it fails is each row converted on its own,
    so that the error names the line and field.
    """
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    tail = () if columns is None else (columns,)
    flat = [value for row in rows for value in row]
    try:
        values = np.asarray(flat, dtype=np.float64) if flat else np.zeros((0,) + tail)
        ok = values.shape[1:] == tail and bool(np.isfinite(values).all())
    except (TypeError, ValueError):
        ok = False
    if not ok:  # ragged, extra columns, or a bad value: row by row (raises with the place, if bad)
        if columns is None:
            parts = [_numbers(row, len(row), field, where) for row, where in zip(rows, sources)]
        else:
            parts = [_windows(row, columns, field, where) for row, where in zip(rows, sources)]
        values = np.concatenate(parts).reshape((-1,) + tail) if parts else np.zeros((0,) + tail)
    return values, lengths


def _scatter(values: np.ndarray, lengths: np.ndarray, width: int, fill: float, keep=None) -> np.ndarray:
    """Flat ragged values -> [Q, width, ...] array, row q holding its values from position 0.

    ``keep`` ([Q]) keeps only the first keep[q] values of row q (the rest must fit in ``width``).
    """
    out = np.full((len(lengths), max(width, 1)) + values.shape[1:], fill)
    query = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    if keep is not None:
        kept = position < keep[query]
        query, position, values = query[kept], position[kept], values[kept]
    out[query, position] = values
    return out


# --------------------------------------------------------------------------------------------------
# Moment retrieval
# --------------------------------------------------------------------------------------------------

def cross_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """[Q, K, 2] x [Q, G, 2] -> [Q, K, G] IoU with the official union len1 + len2 - inter (0 if union <= 0)."""
    len_pred = pred[..., 1] - pred[..., 0]
    len_gt = gt[..., 1] - gt[..., 0]
    left = np.maximum(pred[:, :, None, 0], gt[:, None, :, 0])
    right = np.minimum(pred[:, :, None, 1], gt[:, None, :, 1])
    inter = np.clip(right - left, 0, None)
    union = len_pred[:, :, None] + len_gt[:, None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return np.nan_to_num(iou, nan=0.0)


def _greedy_true_positives(iou: np.ndarray, pred_valid: np.ndarray, gt_valid: np.ndarray, thresholds) -> np.ndarray:
    """[Q, T, K] true positives of score-sorted predictions, matched greedily as the official code does."""
    n_queries, n_preds, n_gt = iou.shape
    thresholds = np.asarray(thresholds, dtype=np.float64)[None, :, None]
    matched = np.zeros((n_queries, len(thresholds[0]), n_gt), dtype=bool)
    tp = np.zeros((n_queries, matched.shape[1], n_preds), dtype=bool)
    rows = np.arange(n_queries)[:, None]
    cols = np.arange(matched.shape[1])[None, :]
    for k in range(n_preds):  # at most 10 ranks, each vectorised over queries x thresholds x GT windows
        iou_k = iou[:, None, k, :]
        candidate = (iou_k >= thresholds) & ~matched & gt_valid[:, None, :] & pred_valid[:, k, None, None]
        key = np.where(candidate, iou_k, -np.inf)
        best = n_gt - 1 - np.argmax(key[..., ::-1], axis=-1)  # highest IoU, the later window on ties
        hit = candidate.any(axis=-1)
        tp[:, :, k] = hit
        matched[rows, cols, best] |= hit
    return tp


def _interpolated_ap(tp: np.ndarray, pred_valid: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """[Q, T] all-point interpolated AP (the official interpolated_precision_recall, vectorised)."""
    fp = pred_valid[:, None, :] & ~tp
    tp_cum = np.cumsum(tp, axis=-1, dtype=np.float64)
    fp_cum = np.cumsum(fp, axis=-1, dtype=np.float64)
    recall = tp_cum / np.maximum(n_gt, 1)[:, None, None]
    seen = tp_cum + fp_cum
    precision = np.divide(tp_cum, seen, out=np.zeros_like(tp_cum), where=seen > 0)
    # Padded ranks repeat the last cumulative counts: they add no recall step and no new precision.
    shape = tp.shape[:2] + (1,)
    mrecall = np.concatenate([np.zeros(shape), recall, np.ones(shape)], axis=-1)
    mprecision = np.concatenate([np.zeros(shape), precision, np.zeros(shape)], axis=-1)
    envelope = np.maximum.accumulate(mprecision[..., ::-1], axis=-1)[..., ::-1]
    return np.sum(np.diff(mrecall, axis=-1) * envelope[..., 1:], axis=-1)


def _pack_moments(lines: list[dict | None], sources: list[str], ground_truth: list[dict], gt_sources: list[str]):
    pred_rows = [[] if line is None else _list_field(line, "pred_relevant_windows", where)[:MAX_PRED_WINDOWS]
                 for line, where in zip(lines, sources)]
    gt_rows = [_list_field(gt, "relevant_windows", where) for gt, where in zip(ground_truth, gt_sources)]
    for row, where in zip(gt_rows, gt_sources):
        if not row:
            raise ValueError(f"{where}: field 'relevant_windows': a query needs at least one ground-truth window")
    values, n_pred = _flat_ragged(pred_rows, 3, "pred_relevant_windows", sources)
    pred = _scatter(values, n_pred, int(n_pred.max(initial=0)), np.nan)
    values, n_gt = _flat_ragged(gt_rows, 2, "relevant_windows", gt_sources)
    gt = _scatter(values, n_gt, int(n_gt.max(initial=0)), np.nan)
    pred_valid = np.arange(pred.shape[1])[None, :] < n_pred[:, None]
    gt_valid = np.arange(gt.shape[1])[None, :] < n_gt[:, None]
    top1 = pred[:, 0, :2].copy()  # list order, before sorting by score; NaN when there is none
    # Sort by score, descending; stable, so tied scores keep list order. Padding sorts last.
    order = np.argsort(np.where(pred_valid, -pred[..., 2], np.inf), axis=1, kind="stable")
    pred = np.take_along_axis(pred, order[..., None], axis=1)
    pred_valid = np.take_along_axis(pred_valid, order, axis=1)
    return pred, pred_valid, top1, gt, gt_valid


def _split_true_positives(iou: np.ndarray, pred_valid: np.ndarray, in_range: np.ndarray) -> np.ndarray:
    """[Q, T, K] true positives against each query's in-range GT windows only.

    The in-range windows move to the front (stably: the tie rule depends on their order), and queries
    are matched in buckets of similar window counts, so one query with 25 windows widens no other.
    """
    order = np.argsort(~in_range, axis=1, kind="stable")
    iou = np.take_along_axis(iou, order[:, None, :], axis=2)
    n_gt = in_range.sum(axis=1)
    gt_valid = np.arange(in_range.shape[1])[None, :] < n_gt[:, None]
    bucket = 2 ** np.ceil(np.log2(np.maximum(n_gt, 1))).astype(np.int64)
    tp = np.zeros((len(iou), len(IOU_THRESHOLDS), iou.shape[1]), dtype=bool)
    for width in np.unique(bucket):
        rows = bucket == width
        tp[rows] = _greedy_true_positives(iou[rows][:, :, :width], pred_valid[rows], gt_valid[rows][:, :width],
                                          IOU_THRESHOLDS)
    return tp


def _top1_iou(top1: np.ndarray, gt: np.ndarray, gt_valid: np.ndarray) -> np.ndarray:
    """[Q] IoU of the first listed window with the GT window closest to it (official compute_mr_r1)."""
    if len(top1) == 0:
        return np.zeros(0)
    to_each = np.where(gt_valid, cross_iou(top1[:, None, :], gt)[:, 0, :], -np.inf)
    chosen = gt[np.arange(len(gt)), np.argmax(to_each, axis=1)]  # the first on ties
    inter = np.maximum(0, np.minimum(top1[:, 1], chosen[:, 1]) - np.maximum(top1[:, 0], chosen[:, 0]))
    union = np.maximum(top1[:, 1], chosen[:, 1]) - np.minimum(top1[:, 0], chosen[:, 0])
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)
    return np.nan_to_num(iou, nan=0.0)


def eval_moment_retrieval(lines: list[dict | None], ground_truth: list[dict], *, sources=None, gt_sources=None) -> dict:
    """{"short"|"middle"|"long"|"full": {"MR-mAP": {...}, "MR-R1": {...}}} for aligned lines (None = missing)."""
    sources = sources or [f"submission[{i}]" for i in range(len(lines))]
    gt_sources = gt_sources or [f"ground_truth[{i}]" for i in range(len(ground_truth))]
    pred, pred_valid, top1, gt, gt_valid = _pack_moments(lines, sources, ground_truth, gt_sources)
    iou = cross_iou(pred, gt)
    gt_length = gt[..., 1] - gt[..., 0]
    results = {}
    for name, (low, high) in LENGTH_RANGES.items():
        in_range = gt_valid if name == "full" else gt_valid & (gt_length > low) & (gt_length <= high)
        queries = in_range.any(axis=1)
        tp = _split_true_positives(iou[queries], pred_valid[queries], in_range[queries])
        ap = _interpolated_ap(tp, pred_valid[queries], in_range[queries].sum(axis=1))  # [Q, T]
        map_at = {str(t): _percent_or_none(ap[:, i]) for i, t in enumerate(IOU_THRESHOLDS)}
        map_at["average"] = _percent(ap.mean(axis=0).mean()) if ap.size else None
        top_iou = _top1_iou(top1[queries], gt[queries], in_range[queries])
        r1 = {str(t): _percent_or_none(top_iou >= t) for t in R1_THRESHOLDS}
        results[name] = {"MR-mAP": map_at, "MR-R1": r1}
    return results


# --------------------------------------------------------------------------------------------------
# Highlight detection
# --------------------------------------------------------------------------------------------------

def _pack_highlights(lines: list[dict | None], sources: list[str], ground_truth: list[dict], gt_sources: list[str]):
    """(clips per video [Q], GT scores [Q, C, 3], AP input [Q, C], HIT@1 input [Q, L], saliency list lengths [Q])."""
    durations, _ = _flat_ragged([[gt.get("duration")] for gt in ground_truth], None, "duration", gt_sources)
    n_clips = (durations / CLIP_SECONDS).astype(np.int64)  # int(duration / 2), as the official code
    for count, duration, where in zip(n_clips, durations, gt_sources):
        if count < 1:
            raise ValueError(f"{where}: field 'duration': {duration} s holds no {CLIP_SECONDS}-s clip")
    width = int(n_clips.max(initial=1))
    id_rows = [_list_field(gt, "relevant_clip_ids", where) for gt, where in zip(ground_truth, gt_sources)]
    score_rows = [_list_field(gt, "saliency_scores", where) for gt, where in zip(ground_truth, gt_sources)]
    ids, n_ids = _flat_ragged(id_rows, None, "relevant_clip_ids", gt_sources)
    scores, n_scores = _flat_ragged(score_rows, N_ANNOTATORS, "saliency_scores", gt_sources)
    query = np.repeat(np.arange(len(ground_truth)), n_ids)
    bad = (n_ids != n_scores) | np.bincount(query, weights=(ids != np.round(ids)) | (ids < 0)
                                            | (ids >= n_clips[query]), minlength=len(ground_truth)).astype(bool)
    if bad.any():
        q = int(np.argmax(bad))
        raise ValueError(f"{gt_sources[q]}: field 'relevant_clip_ids': expected {len(score_rows[q])} clip ids in "
                         f"0..{n_clips[q] - 1} (one per saliency_scores row), got {id_rows[q]!r}")
    gt_scores = np.zeros((len(ground_truth), width, N_ANNOTATORS))
    gt_scores[query, ids.astype(np.int64)] = scores
    rows = [[] if line is None else _list_field(line, "pred_saliency_scores", where) for line, where in zip(lines, sources)]
    values, n_values = _flat_ragged(rows, None, "pred_saliency_scores", sources)
    for_ap = _scatter(values, n_values, width, 0.0, keep=n_clips)  # truncated or zero-padded to the clips
    for_hit = _scatter(values, n_values, int(n_values.max(initial=0)), -np.inf)  # the full list
    return n_clips, gt_scores, for_ap, for_hit, n_values


def saliency_average_precision(labels: np.ndarray, scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Official get_ap for many (query, annotator) rows at once.

    labels: [Q, A, C] 0/1; scores: [Q, C] predicted saliency (already truncated / zero-padded);
    valid: [Q, C] which clips exist. Returns [Q, A].
    """
    n_queries, width = scores.shape
    order = np.argsort(np.where(valid, -scores, np.inf), axis=1, kind="stable")  # descending, padding last
    ranked = np.take_along_axis(scores, order, axis=1)
    ranked_valid = np.take_along_axis(valid, order, axis=1)
    ranked_labels = np.take_along_axis(labels, order[:, None, :], axis=2)
    # A threshold sits at the last clip of each group of tied scores.
    same_as_next = np.zeros_like(ranked_valid)
    same_as_next[:, :-1] = ranked_valid[:, 1:] & (ranked[:, 1:] == ranked[:, :-1])
    group_end = ranked_valid & ~same_as_next
    position = np.arange(width)
    previous_end = np.full((n_queries, width), -1)
    previous_end[:, 1:] = np.maximum.accumulate(np.where(group_end, position, -1), axis=1)[:, :-1]
    tps = np.cumsum(ranked_labels, axis=2)
    tps_before = np.where(previous_end[:, None, :] >= 0,
                          np.take_along_axis(tps, np.maximum(previous_end, 0)[:, None, :], axis=2), 0.0)
    recall_rises = group_end[:, None, :] & (tps > tps_before)
    precision = np.where(group_end[:, None, :], tps / (position + 1), -np.inf)
    envelope = np.maximum.accumulate(precision[..., ::-1], axis=2)[..., ::-1]  # best precision at >= recall
    n_rises = recall_rises.sum(axis=2)
    ap = np.where(recall_rises, envelope, 0.0).sum(axis=2) / np.maximum(n_rises, 1)
    positives = (labels * valid[:, None, :]).sum(axis=2)
    n_valid = valid.sum(axis=1)[:, None]
    return np.where(positives == n_valid, 1.0, np.where(positives == 0, 0.0, ap))


def eval_highlight(lines: list[dict | None], ground_truth: list[dict], *, sources=None, gt_sources=None) -> dict:
    """{"HL-min-Fair"|"HL-min-Good"|"HL-min-VeryGood": {"HL-mAP", "HL-Hit1"}} for aligned lines."""
    ap, hit = _highlight_per_query(lines, ground_truth, sources=sources, gt_sources=gt_sources)
    return {f"HL-min-{name}": {"HL-mAP": _percent_or_none(ap[:, i]), "HL-Hit1": _percent_or_none(hit[:, i])}
            for i, name in enumerate(SALIENCY_LEVELS)}


def _highlight_per_query(lines, ground_truth, *, sources=None, gt_sources=None):
    """(AP [Q, level, annotator], HIT@1 [Q, level]) per query."""
    sources = sources or [f"submission[{i}]" for i in range(len(lines))]
    gt_sources = gt_sources or [f"ground_truth[{i}]" for i in range(len(ground_truth))]
    n_clips, gt_scores, for_ap, for_hit, n_values = _pack_highlights(lines, sources, ground_truth, gt_sources)
    n_queries, width = gt_scores.shape[:2]
    missing = np.array([line is None for line in lines], dtype=bool)
    valid = np.arange(width)[None, :] < n_clips[:, None]
    levels = list(SALIENCY_LEVELS.values())
    positive = gt_scores[:, None, :, :] >= np.array(levels)[None, :, None, None]  # [Q, level, C, A]
    labels = positive.transpose(0, 1, 3, 2).reshape(n_queries, -1, width).astype(np.float64)  # [Q, level x A, C]
    ap = saliency_average_precision(labels, for_ap, valid).reshape(n_queries, len(levels), N_ANNOTATORS)
    ap[missing] = 0.0
    top_clip = np.argmax(for_hit, axis=1)  # the first on ties
    top_in_video = (n_values > 0) & (top_clip < n_clips) & ~missing
    hit = positive[np.arange(n_queries), :, np.minimum(top_clip, width - 1), :].any(axis=-1) & top_in_video[:, None]
    return ap, hit


def per_query_metrics(lines: list[dict | None], ground_truth: list[dict], *, sources=None, gt_sources=None) -> dict:
    """Per-query values [Q] (fractions) whose means over queries are the brief's full-split metrics:
    MR-full-mAP (and @0.5, @0.75), MR-full-R1@0.5/0.7, HL-min-VeryGood-mAP / -Hit1. A query without a
    GT window is NaN in the moment metrics (the official mean leaves it out). Used by `tempsamp compare`."""
    sources = sources or [f"submission[{i}]" for i in range(len(lines))]
    gt_sources = gt_sources or [f"ground_truth[{i}]" for i in range(len(ground_truth))]
    present = [line for line in lines if line is not None]
    out = {}
    if any("pred_relevant_windows" in line for line in present):
        pred, pred_valid, top1, gt, gt_valid = _pack_moments(lines, sources, ground_truth, gt_sources)
        iou = cross_iou(pred, gt)
        queries = gt_valid.any(axis=1)
        tp = _split_true_positives(iou[queries], pred_valid[queries], gt_valid[queries])
        ap = _interpolated_ap(tp, pred_valid[queries], gt_valid[queries].sum(axis=1))  # [Q', T]
        top_iou = _top1_iou(top1[queries], gt[queries], gt_valid[queries])

        def full(values):
            column = np.full(len(lines), np.nan)
            column[queries] = values
            return column

        out["MR-full-mAP"] = full(ap.mean(axis=1))
        out["MR-full-mAP@0.5"] = full(ap[:, IOU_THRESHOLDS.index(0.5)])
        out["MR-full-mAP@0.75"] = full(ap[:, IOU_THRESHOLDS.index(0.75)])
        out["MR-full-R1@0.5"] = full((top_iou >= 0.5).astype(float))
        out["MR-full-R1@0.7"] = full((top_iou >= 0.7).astype(float))
    if any("pred_saliency_scores" in line for line in present):
        ap, hit = _highlight_per_query(lines, ground_truth, sources=sources, gt_sources=gt_sources)
        level = list(SALIENCY_LEVELS).index("VeryGood")
        out["HL-min-VeryGood-mAP"] = ap[:, level].mean(axis=1)
        out["HL-min-VeryGood-Hit1"] = hit[:, level].astype(float)
    return out


# --------------------------------------------------------------------------------------------------
# The official entry point
# --------------------------------------------------------------------------------------------------

def eval_submission(submission: list[dict], ground_truth: list[dict], *, allow_missing: bool = False,
                    submission_sources=None, ground_truth_sources=None) -> dict:
    """The official evaluator's metrics dict for submission lines vs ground-truth lines.

    Moment retrieval is scored when the prediction lines carry ``pred_relevant_windows``, highlight
    detection when they carry ``pred_saliency_scores`` (every line must then have it). Keys and
    their order are the official ones: "brief" first, then the sorted sections.
    """
    if not ground_truth:
        raise ValueError("ground truth: no queries")
    gt_sources = ground_truth_sources or [f"ground_truth[{i}]" for i in range(len(ground_truth))]
    lines, sources = align(submission, ground_truth, allow_missing=allow_missing,
                           submission_sources=submission_sources, ground_truth_sources=gt_sources)
    metrics, brief = {}, {}
    present = [line for line in lines if line is not None]
    if not any("pred_relevant_windows" in line or "pred_saliency_scores" in line for line in present):
        first = (submission_sources or ["submission line 1"])[0] if submission else "the submission"
        grounding = any("pred_span" in line for line in present)
        raise ValueError(f"{first}: no line has pred_relevant_windows or pred_saliency_scores, so nothing can be scored "
                         "as QVHighlights" + ("; these are grounding predictions (pred_span): score them with "
                                              "`tempsamp score grounding`" if grounding else ""))
    if any("pred_relevant_windows" in line for line in present):
        moments = eval_moment_retrieval(lines, ground_truth, sources=sources, gt_sources=gt_sources)
        metrics.update(moments)
        moment_brief = {
            "MR-full-mAP": moments["full"]["MR-mAP"]["average"],
            "MR-full-mAP@0.5": moments["full"]["MR-mAP"]["0.5"],
            "MR-full-mAP@0.75": moments["full"]["MR-mAP"]["0.75"],
            "MR-short-mAP": moments["short"]["MR-mAP"]["average"],
            "MR-middle-mAP": moments["middle"]["MR-mAP"]["average"],
            "MR-long-mAP": moments["long"]["MR-mAP"]["average"],
            "MR-full-R1@0.5": moments["full"]["MR-R1"]["0.5"],
            "MR-full-R1@0.7": moments["full"]["MR-R1"]["0.7"],
        }
        brief.update(sorted(moment_brief.items()))
    if any("pred_saliency_scores" in line for line in present):
        highlights = eval_highlight(lines, ground_truth, sources=sources, gt_sources=gt_sources)
        metrics.update(highlights)
        for level, values in highlights.items():
            for key, value in values.items():
                brief[f"{level}-{key.split('-')[1]}"] = value
    return {"brief": brief, **dict(sorted(metrics.items()))}
