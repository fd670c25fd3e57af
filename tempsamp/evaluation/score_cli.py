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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tempsamp.errors import nonnegative_int, require_file
from tempsamp.evaluation.conventions import CONVENTIONS, MISSING, PARSERS, Convention


def read_jsonl(path) -> tuple[list[dict], list[str]]:
    """Objects of a JSONL file and their "file:line" sources; blank lines are skipped."""
    path = Path(path)
    require_file(path, "a JSONL file")
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


@dataclass
class GroundingQueries:
    """Per ground-truth query: what a prediction file says and how it scores under a convention."""

    examples: list  # tempsamp.data.example.Example, in ground-truth order
    iou: np.ndarray  # [N] float; NaN where the convention drops the query from the denominator
    status: list[str]  # per query: "ok" | "unparsed" | "missing" (no line) | "failed" (no answer) | "dropped"
    spans: np.ndarray  # [N, 2] predicted span in seconds as the convention reads it (NaN: none)
    answers: list  # raw answer text or None
    convention: Convention

    @property
    def kept(self) -> np.ndarray:
        return ~np.isnan(self.iou)


def read_grounding_predictions(pred_path) -> dict[str, dict]:
    """{qid: {"span", "answer", "vid", "failed", "where"}} of a grounding prediction file (checked)."""
    rows, sources = read_jsonl(pred_path)
    predictions: dict[str, dict] = {}
    for row, where in zip(rows, sources):
        if "qid" not in row:
            raise ValueError(f"{where}: field 'qid': missing")
        key = str(row["qid"])
        if key in predictions:
            raise ValueError(f"{where}: field 'qid': query {key!r} already predicted at {predictions[key]['where']}")
        answer = row.get("answer")
        if answer is not None and not isinstance(answer, str):
            raise ValueError(f"{where}: field 'answer': expected text or null, got {type(answer).__name__}")
        span = _prediction_span(row, where)
        # inference failed (unreadable video, error): no answer at all, as `tempsamp eval` writes it
        failed = bool(row.get("error")) or ("answer" in row and answer is None and span is None)
        predictions[key] = {"span": span, "answer": answer, "has_answer_key": "answer" in row,
                            "vid": row.get("vid", row.get("video_id")), "failed": failed, "where": where}
    return predictions


def grounding_queries(pred_path, gt_path, dataset: str | None = None, *, durations=None, convention="tempsamp",
                      parser: str | None = None, missing: str | None = None, clip_gt: bool = False,
                      iou_decimals: int | None = None, examples=None) -> GroundingQueries:
    """Every ground-truth query of ``gt_path`` scored from ``pred_path`` under a convention (per query)."""
    from tempsamp.data.readers import load_examples
    from tempsamp.evaluation.conventions import get_convention, query_iou, read_span
    from tempsamp.evaluation.grounding import grounding_ious

    conv = convention if isinstance(convention, Convention) else get_convention(convention, parser=parser, missing=missing)
    project = conv.base == "tempsamp"  # the project's convention (possibly with its parser or missing rule swapped)
    if not project and (clip_gt or iou_decimals is not None):
        raise ValueError(f"--clip-gt / --round-iou belong to the tempsamp convention; {conv.name} fixes its own")
    if examples is None:
        examples = load_examples(gt_path, dataset, durations=durations)
    if not examples:
        raise ValueError(f"{gt_path}: no queries")
    predictions = read_grounding_predictions(pred_path)
    gt_by_key = {}
    for ex in examples:
        if not ex.spans:
            raise ValueError(f"{ex.source}: query {ex.qid!r} has no ground-truth span (unlabelled data cannot be scored)")
        gt_by_key[str(ex.qid)] = ex
    _refuse_differences(list(predictions), list(gt_by_key), conv.missing != "refuse")

    n = len(examples)
    spans, status, answers = np.full((n, 2), np.nan), [], []
    raw = []  # the convention's reading, per query
    for i, ex in enumerate(examples):
        pred = predictions.get(str(ex.qid))
        if pred is None:
            status.append("missing")
            answers.append(None)
            raw.append(None)
            continue
        if pred["vid"] is not None and str(pred["vid"]) != str(ex.video_id):
            raise ValueError(f"{pred['where']}: field 'vid': {pred['vid']!r}, but query {ex.qid!r} is about video {ex.video_id!r}")
        answers.append(pred["answer"])
        if pred["failed"]:
            status.append("failed")
            raw.append(None)
            continue
        if conv.parser != "tempsamp" and not pred["has_answer_key"]:
            raise ValueError(f"{pred['where']}: field 'answer': missing; the {conv.parser} parser reads the raw answer")
        span = read_span(conv, pred["answer"], pred["span"], ex.duration)
        raw.append(span)
        status.append("ok" if span is not None else "unparsed")
        if span is not None:
            relative = conv.parser == "vtimellm" or conv.iou == "round2-relative"  # read as fractions of the video
            scale = ex.duration if relative else 1.0
            spans[i] = (span[0] * scale, span[1] * scale)

    gt = np.array([ex.span for ex in examples], dtype=np.float64)
    if project:
        iou = grounding_ious(spans, gt, durations=[ex.duration for ex in examples], clip_gt=clip_gt,
                             iou_decimals=iou_decimals)
    else:
        iou = np.array([0.0 if st in ("missing", "failed") else query_iou(conv, span, gt[i], ex.duration)
                        for i, (ex, st, span) in enumerate(zip(examples, status, raw))], dtype=object)
        status = [("dropped" if value is None else st) for st, value in zip(status, iou)]
        iou = np.array([np.nan if value is None else value for value in iou], dtype=np.float64)
    if conv.missing == "drop":
        iou[[st in ("missing", "failed") for st in status]] = np.nan
    return GroundingQueries(examples, iou, status, spans, answers, conv)


def score_grounding(pred_path, gt_path, dataset: str | None = None, *, durations=None, strict: bool = False,
                    clip_gt: bool = False, iou_decimals: int | None = None, allow_missing: bool = False,
                    convention: str = "tempsamp", parser: str | None = None, missing: str | None = None) -> dict:
    """R1@{0.3,0.5,0.7} and mIoU (percent) of a grounding prediction file, with counts and the convention."""
    from tempsamp.evaluation.grounding import metrics_from_ious

    if allow_missing and missing is None:
        missing = "miss"
    if strict and convention != "tempsamp":
        raise ValueError(f"--strict belongs to the tempsamp convention; {convention} counts iou >= m")
    q = grounding_queries(pred_path, gt_path, dataset, durations=durations, convention=convention, parser=parser,
                          missing=missing, clip_gt=clip_gt, iou_decimals=iou_decimals)
    metrics = metrics_from_ious(q.iou[q.kept], strict=strict)
    counts = {k: q.status.count(k) for k in ("ok", "unparsed", "missing", "failed", "dropped")}
    metrics["n_queries"] = len(q.examples)
    metrics["n_missing"] = counts["missing"]
    metrics["n_failed"] = counts["failed"]
    metrics["n_unparsed"] = counts["unparsed"]
    metrics["n_dropped"] = int((~q.kept).sum())
    description = q.convention.describe()
    if q.convention.base == "tempsamp":
        description.update(threshold="iou > m" if strict else "iou >= m", clip_gt=clip_gt, iou_decimals=iou_decimals)
    metrics["convention"] = description
    metrics["counts"] = (f"{metrics['n']} of {len(q.examples)} queries in the denominator; "
                         f"{counts['unparsed']} unparsable (IoU 0); {counts['missing']} without a prediction line and "
                         f"{counts['failed']} without an answer (inference failed): "
                         + ("dropped" if q.convention.missing == "drop" else "IoU 0")
                         + (f"; {counts['dropped']} dropped as the peer's script would (zero union)" if counts["dropped"] else ""))
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
                                  clip_gt=args.clip_gt, iou_decimals=args.round_iou, allow_missing=args.allow_missing,
                                  convention=args.convention, parser=args.parser, missing=args.missing)
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
    g.add_argument("--round-iou", type=nonnegative_int, default=None, metavar="N", help="round IoU to N decimals first")
    g.add_argument("--allow-missing", action="store_true", help="score queries without a prediction as misses")
    g.add_argument("--convention", choices=list(CONVENTIONS), default="tempsamp",
                   help="whose parser, IoU rounding and missing-query rule: tempsamp (default), timezero "
                        "(= VideoChat-R1), vtimellm (docs/evaluation.md)")
    g.add_argument("--parser", choices=PARSERS, default=None, help="replace the convention's parser")
    g.add_argument("--missing", choices=MISSING, default=None,
                   help="queries without a prediction or answer: refuse | miss (IoU 0) | drop (out of the denominator)")
    g.add_argument("--out", default=None, help="also write the metrics JSON here")
    g.set_defaults(func=run_grounding)

    q = tasks.add_parser("qvhighlights", help="moment retrieval + highlight detection, as the official evaluator")
    q.add_argument("--pred", required=True, help="submission JSONL in the official format")
    q.add_argument("--gt", required=True, help="ground-truth JSONL in the official format (e.g. highlight_val_release.jsonl)")
    q.add_argument("--allow-missing", action="store_true", help="score queries without a prediction as misses")
    q.add_argument("--out", default=None, help="also write the metrics JSON here")
    q.set_defaults(func=run_qvhighlights)
