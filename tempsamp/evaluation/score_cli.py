"""`tempsamp score grounding|qvhighlights`: prediction file + annotation file -> metrics JSON.

Grounding prediction format (JSONL, one object per query; ``tempsamp eval`` writes it)::

    {"qid": "3MSZA#0", "vid": "3MSZA", "pred_span": [24.0, 30.5], "answer": "<answer>24 to 30.5</answer>"}

- ``qid`` (required): the query id of the ground truth as ``tempsamp.data.readers`` gives it
  (``"{video_id}#{index}"`` for Charades-STA / ActivityNet, index counting the file's queries from 0).
- ``pred_span``: ``[start, end]`` in seconds, or ``null`` when the answer did not parse (IoU 0).
  When the key is absent, ``answer`` is parsed with ``tempsamp.spans.parse_span``.
- ``vid`` (optional; ``video_id`` is accepted too): checked against the ground truth's video id.
- ``answer`` (optional): the raw model output, kept for reading.

QVHighlights: the official submission format (``qid, query, vid, pred_relevant_windows,
pred_saliency_scores``) against the official ground-truth JSONL; the output has the official key names.

Query sets must match; otherwise the command stops with how many differ and a few ids, unless
``--allow-missing``: then ground-truth queries without a prediction score as misses (IoU 0 / AP 0),
and the output counts them (``n_missing``). Predictions for queries not in the ground truth are
always refused (wrong file).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def read_jsonl(path) -> tuple[list[dict], list[str]]:
    """Objects of a JSONL file and their "file:line" sources; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    rows, sources = [], []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
        sources.append(where)
    return rows, sources


def _prediction_span(row: dict, where: str):
    """(start, end) or None from one grounding prediction line."""
    from tempsamp.spans import parse_span

    if "pred_span" not in row:
        if "answer" not in row:
            raise ValueError(f"{where}: field 'pred_span': missing (and no 'answer' to parse)")
        return parse_span(row["answer"])
    span = row["pred_span"]
    if span is None:
        return None
    if (not isinstance(span, (list, tuple)) or len(span) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in span)):
        raise ValueError(f"{where}: field 'pred_span': expected [start, end] (finite numbers) or null, got {span!r}")
    return float(span[0]), float(span[1])


def _refuse_differences(pred_keys, gt_keys, allow_missing: bool) -> list[str]:
    gt_set = set(gt_keys)
    extra = [k for k in pred_keys if k not in gt_set]
    if extra:
        raise ValueError(f"{len(extra)} predicted queries are not in the ground truth (e.g. {', '.join(extra[:5])}): "
                         "wrong prediction or ground-truth file?")
    pred_set = set(pred_keys)
    missing = [k for k in gt_keys if k not in pred_set]
    if missing and not allow_missing:
        raise ValueError(f"{len(missing)} of {len(gt_keys)} ground-truth queries have no prediction "
                         f"(e.g. {', '.join(missing[:5])}); pass --allow-missing to score them as misses")
    return missing


def score_grounding(pred_path, gt_path, dataset: str | None = None, *, durations=None, strict: bool = False,
                    clip_gt: bool = False, iou_decimals: int | None = None, allow_missing: bool = False) -> dict:
    """R1@{0.3,0.5,0.7} and mIoU (percent) of a grounding prediction file, with counts and the convention."""
    import numpy as np

    from tempsamp.data.readers import load_examples
    from tempsamp.evaluation.grounding import grounding_metrics

    examples = load_examples(gt_path, dataset, durations=durations)
    if not examples:
        raise ValueError(f"{gt_path}: no queries")
    rows, sources = read_jsonl(pred_path)
    predictions: dict[str, tuple] = {}
    for row, where in zip(rows, sources):
        if "qid" not in row:
            raise ValueError(f"{where}: field 'qid': missing")
        key = str(row["qid"])
        if key in predictions:
            raise ValueError(f"{where}: field 'qid': query {key!r} already predicted at {predictions[key][2]}")
        predictions[key] = (_prediction_span(row, where), row.get("vid", row.get("video_id")), where)
    gt_by_key = {}
    for ex in examples:
        if not ex.spans:
            raise ValueError(f"{ex.source}: query {ex.qid!r} has no ground-truth span (unlabelled data cannot be scored)")
        gt_by_key[str(ex.qid)] = ex
    missing = _refuse_differences(list(predictions), list(gt_by_key), allow_missing)

    pred = np.full((len(examples), 2), np.nan)
    for i, ex in enumerate(examples):
        if str(ex.qid) not in predictions:
            continue
        span, vid, where = predictions[str(ex.qid)]
        if vid is not None and str(vid) != str(ex.video_id):
            raise ValueError(f"{where}: field 'vid': {vid!r}, but query {ex.qid!r} is about video {ex.video_id!r}")
        if span is not None:
            pred[i] = span
    gt = np.array([ex.span for ex in examples], dtype=np.float64)
    metrics = grounding_metrics(pred, gt, strict=strict, durations=[ex.duration for ex in examples],
                                clip_gt=clip_gt, iou_decimals=iou_decimals)
    metrics["n_missing"] = len(missing)
    metrics["n_unparsed"] = int(sum(1 for span, _, _ in predictions.values() if span is None))
    metrics["convention"] = {"threshold": "iou > m" if strict else "iou >= m", "clip_gt": clip_gt,
                             "iou_decimals": iou_decimals, "missing_and_unparsed": "IoU 0, in the denominator"}
    return metrics


def score_qvhighlights(pred_path, gt_path, *, allow_missing: bool = False) -> dict:
    """The official QVHighlights metrics of a submission file, plus n_queries and n_missing."""
    from tempsamp.evaluation.qvhighlights import eval_submission

    submission, sub_sources = read_jsonl(pred_path)
    ground_truth, gt_sources = read_jsonl(gt_path)
    metrics = eval_submission(submission, ground_truth, allow_missing=allow_missing,
                              submission_sources=sub_sources, ground_truth_sources=gt_sources)
    predicted = {str(row.get("qid")) for row in submission}
    metrics["n_queries"] = len(ground_truth)
    metrics["n_missing"] = sum(1 for row in ground_truth if str(row.get("qid")) not in predicted)
    return metrics


def _emit(metrics: dict, out) -> None:
    text = json.dumps(metrics, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def run_grounding(args) -> int:
    try:
        metrics = score_grounding(args.pred, args.gt, args.dataset, durations=args.durations, strict=args.strict,
                                  clip_gt=args.clip_gt, iou_decimals=args.round_iou, allow_missing=args.allow_missing)
    except (ValueError, FileNotFoundError) as err:
        print(f"tempsamp score grounding: {err}", file=sys.stderr)
        return 2
    _emit(metrics, args.out)
    return 0


def run_qvhighlights(args) -> int:
    try:
        metrics = score_qvhighlights(args.pred, args.gt, allow_missing=args.allow_missing)
    except (ValueError, FileNotFoundError) as err:
        print(f"tempsamp score qvhighlights: {err}", file=sys.stderr)
        return 2
    _emit(metrics, args.out)
    return 0


def register(sub) -> None:
    p = sub.add_parser("score", help="score a prediction file against annotations (metrics JSON)")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)

    g = tasks.add_parser("grounding", help="R1@0.3/0.5/0.7 and mIoU (percent), the MLLM convention by default")
    g.add_argument("--pred", required=True, help="predictions JSONL: {qid, vid, pred_span: [s, e] | null, answer}")
    g.add_argument("--gt", required=True, help="annotation file (Charades-STA txt/json, ActivityNet json, jsonl)")
    g.add_argument("--dataset", default=None, help="charades | activitynet | qvhighlights | jsonl (default: detect)")
    g.add_argument("--durations", default=None, help="Charades-STA text: the CSV with video lengths")
    g.add_argument("--strict", action="store_true", help="count IoU > m instead of IoU >= m")
    g.add_argument("--clip-gt", action="store_true", help="clip ground-truth spans to [0, duration] first")
    g.add_argument("--round-iou", type=int, default=None, metavar="N", help="round IoU to N decimals first")
    g.add_argument("--allow-missing", action="store_true", help="score queries without a prediction as misses")
    g.add_argument("--out", default=None, help="also write the metrics JSON here")
    g.set_defaults(func=run_grounding)

    q = tasks.add_parser("qvhighlights", help="moment retrieval + highlight detection, as the official evaluator")
    q.add_argument("--pred", required=True, help="submission JSONL in the official format")
    q.add_argument("--gt", required=True, help="ground-truth JSONL in the official format (e.g. highlight_val_release.jsonl)")
    q.add_argument("--allow-missing", action="store_true", help="score queries without a prediction as misses")
    q.add_argument("--out", default=None, help="also write the metrics JSON here")
    q.set_defaults(func=run_qvhighlights)
