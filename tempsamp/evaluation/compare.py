"""`tempsamp compare A B --gt GT`: is B better than A, or is the gap noise? (docs/evaluation.md, "compare")

Every reported metric is a mean over queries of a per-query value (R1@m: 100 x [IoU >= m]; mIoU:
100 x IoU; QVHighlights: each query's AP, top-1 hit, HL-AP, HIT@1), so the difference B - A is
resampled with a **paired bootstrap over queries**: each replicate draws the N queries with
replacement, the same draw for both sides, and recomputes both means.

With several files per side (seeds), each replicate also draws that side's seeds with replacement
(independently per side: seed k of A and seed k of B are different runs) and averages them, so the
interval covers seed-to-seed and query-to-query variation together (a two-level bootstrap).

- Interval: the 2.5 and 97.5 percentiles of the replicate differences (percentile bootstrap).
- p-value (two-sided), the test that goes with the percentile interval: twice the smaller share of
  replicates on either side of 0, p = min(1, 2 (1 + min(#{d* <= 0}, #{d* >= 0})) / (B + 1)). So
  p < 0.05 and "the 95% interval excludes 0" agree (up to one replicate); the earlier p from the
  zero-shifted distribution could disagree with the interval when the replicates were skewed
  (the demo report showed an interval excluding 0 beside p = 0.062).
- "significant" = the 95% interval excludes 0.
Replicates are seeded (``seed``), so a report is reproducible.
"""

from __future__ import annotations

import glob
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tempsamp.errors import nonnegative_int, positive_int

GROUNDING_METRICS = ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")
QVH_METRICS = ("MR-full-mAP", "MR-full-mAP@0.5", "MR-full-mAP@0.75", "MR-full-R1@0.5", "MR-full-R1@0.7",
               "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1")


@dataclass
class PerQuery:
    """Per-query values of one prediction file: values[metric] is [N] over ``qids`` (percent scale)."""

    qids: list[str]
    values: dict[str, np.ndarray]


def grounding_per_query(pred_path, gt_path=None, dataset=None, *, durations=None, convention="tempsamp",
                        allow_missing=False, examples=None) -> PerQuery:
    """Per-query R1@m hits and IoU (x100) of a grounding prediction file; queries a convention drops are left out."""
    from tempsamp.evaluation.score_cli import grounding_queries

    q = grounding_queries(pred_path, gt_path, dataset, durations=durations, convention=convention,
                          missing="miss" if allow_missing and convention == "tempsamp" else None, examples=examples)
    kept = q.kept
    iou = q.iou[kept]
    values = {f"R1@{m:g}": 100.0 * (iou >= m) for m in (0.3, 0.5, 0.7)}
    values["mIoU"] = 100.0 * iou
    return PerQuery([str(ex.qid) for ex, k in zip(q.examples, kept) if k], values)


def qvhighlights_per_query(pred_path, gt_path, *, allow_missing=False) -> PerQuery:
    """Per-query values (x100) whose means are the official QVHighlights metrics."""
    from tempsamp.evaluation.qvhighlights import align, per_query_metrics
    from tempsamp.evaluation.score_cli import read_jsonl

    submission, sub_sources = read_jsonl(pred_path)
    ground_truth, gt_sources = read_jsonl(gt_path)
    lines, sources = align(submission, ground_truth, allow_missing=allow_missing, submission_sources=sub_sources,
                           ground_truth_sources=gt_sources)
    values = per_query_metrics(lines, ground_truth, sources=sources, gt_sources=gt_sources)
    scored = np.all([np.isfinite(v) for v in values.values()], axis=0) if values else np.zeros(len(ground_truth), bool)
    return PerQuery([str(gt["qid"]) for gt, k in zip(ground_truth, scored) if k],
                    {k: 100.0 * v[scored] for k, v in values.items()})


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, n_boot: int = 10000, seed: int = 0):
    """Difference of means B - A with a paired (over queries) bootstrap, seeds resampled per side.

    a: [seeds_a, N], b: [seeds_b, N] per-query values on the same N queries (columns paired); or
    [M, seeds, N] for M metrics at once (one set of replicates shared by all metrics).
    Returns {"a", "b", "diff", "ci95": [lo, hi], "p", "significant"} (a list of M for 3-d input).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if int(n_boot) < 1:
        raise ValueError(f"n_boot: {n_boot} replicates; the bootstrap needs at least 1 (10000 is usual)")
    several = a.ndim == 3
    a, b = (a, b) if several else (np.atleast_2d(a)[None], np.atleast_2d(b)[None])
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2] or a.shape[2] == 0:
        raise ValueError(f"paired bootstrap needs the same queries on both sides, got {a.shape[2]} and {b.shape[2]}")
    n_metrics, seeds_a, n = a.shape
    seeds_b = b.shape[1]
    rng = np.random.default_rng(seed)
    diffs = np.empty((n_metrics, n_boot))
    chunk = max(1, min(n_boot, 4_000_000 // n))
    rows_a, rows_b = a.reshape(-1, n), b.reshape(-1, n)
    done = 0
    while done < n_boot:
        k = min(chunk, n_boot - done)
        draws = rng.integers(0, n, size=(k, n))  # the queries of k replicates, shared by A and B
        counts = np.bincount((draws + n * np.arange(k)[:, None]).ravel(), minlength=k * n).reshape(k, n)
        means_a = (rows_a @ counts.T / n).reshape(n_metrics, seeds_a, k)
        means_b = (rows_b @ counts.T / n).reshape(n_metrics, seeds_b, k)
        pick_a = rng.integers(0, seeds_a, size=(k, seeds_a))  # seeds drawn per side
        pick_b = rng.integers(0, seeds_b, size=(k, seeds_b))
        cols = np.arange(k)[:, None]
        diffs[:, done:done + k] = means_b[:, pick_b, cols].mean(axis=2) - means_a[:, pick_a, cols].mean(axis=2)
        done += k
    out = []
    for m in range(n_metrics):
        observed = float(b[m].mean() - a[m].mean())
        lo, hi = np.percentile(diffs[m], [2.5, 97.5])
        # the percentile bootstrap's own test, so that p < 0.05 goes with an interval excluding 0
        # (a p from the zero-shifted distribution disagreed with the interval on skewed replicates)
        tail = min(int(np.sum(diffs[m] <= 0)), int(np.sum(diffs[m] >= 0)))
        p = 2 * (1 + tail) / (n_boot + 1)
        out.append({"a": float(a[m].mean()), "b": float(b[m].mean()), "diff": observed, "ci95": [float(lo), float(hi)],
                    "p": float(min(1.0, p)), "significant": bool(lo > 0 or hi < 0)})
    return out if several else out[0]


def compare(files_a: list, files_b: list, gt_path=None, *, task: str | None = None, dataset=None, durations=None,
            convention: str = "tempsamp", allow_missing: bool = False, n_boot: int = 10000, seed: int = 0,
            examples=None) -> dict:
    """Per metric: A and B means, B - A, its 95% bootstrap interval and p-value, on the queries both sides score."""
    if not files_a or not files_b:
        raise ValueError("compare needs at least one prediction file per side")
    task = task or detect_task(files_a[0])
    if task == "qvhighlights":
        per_file = [qvhighlights_per_query(f, gt_path, allow_missing=allow_missing) for f in [*files_a, *files_b]]
        metrics = QVH_METRICS
    else:
        per_file = [grounding_per_query(f, gt_path, dataset, durations=durations, convention=convention,
                                        allow_missing=allow_missing, examples=examples) for f in [*files_a, *files_b]]
        metrics = GROUNDING_METRICS
    common = set(per_file[0].qids).intersection(*[p.qids for p in per_file[1:]])
    order = [q for q in per_file[0].qids if q in common]
    if not order:
        raise ValueError("the prediction files share no scored query")

    def matrix(side, metric):
        rows = []
        for p in side:
            index = {q: i for i, q in enumerate(p.qids)}
            rows.append(p.values[metric][[index[q] for q in order]])
        return np.array(rows)

    side_a, side_b = per_file[: len(files_a)], per_file[len(files_a):]
    present = [m for m in metrics if m in side_a[0].values]
    stats = paired_bootstrap(np.stack([matrix(side_a, m) for m in present]), np.stack([matrix(side_b, m) for m in present]),
                             n_boot=n_boot, seed=seed)
    results = dict(zip(present, stats))
    return {"task": task, "a": [str(f) for f in files_a], "b": [str(f) for f in files_b], "n_queries": len(order),
            "n_left_out": max(len(p.qids) for p in per_file) - len(order), "seeds": [len(files_a), len(files_b)],
            "bootstrap": {"replicates": n_boot, "seed": seed,
                          "resampled": "queries (paired)" + (", seeds per side" if max(len(files_a), len(files_b)) > 1 else "")},
            "convention": convention if task == "grounding" else "official QVHighlights", "metrics": results}


def examples_from_queries(path) -> list:
    """The Examples of an eval folder's queries.jsonl (written by `tempsamp eval`), with their own qids."""
    from tempsamp.data.example import Example
    from tempsamp.evaluation.score_cli import read_jsonl

    rows, sources = read_jsonl(path)
    out = []
    for row, where in zip(rows, sources):
        try:
            out.append(Example(qid=str(row["qid"]), video_id=str(row["vid"]), video_path=row.get("video_path"),
                               duration=float(row["duration"]), query=row.get("query", ""),
                               spans=tuple(tuple(float(v) for v in span) for span in row["spans"]),
                               task=row.get("task", "grounding"), source=where))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: not a queries.jsonl line ({err})") from None
    return out


def detect_task(pred_path) -> str:
    from tempsamp.evaluation.score_cli import read_jsonl

    rows, _ = read_jsonl(pred_path)
    first = rows[0] if rows else {}
    return "qvhighlights" if ("pred_relevant_windows" in first or "pred_saliency_scores" in first) else "grounding"


def format_table(result: dict, label_a: str = "A", label_b: str = "B") -> str:
    """A plain-text table of a compare result."""
    lines = [f"{result['task']}: {label_b} - {label_a} over {result['n_queries']} queries "
             f"(seeds {result['seeds'][0]} vs {result['seeds'][1]}; {result['bootstrap']['replicates']} paired "
             f"bootstrap replicates over {result['bootstrap']['resampled']})",
             f"{'metric':22s} {label_a[:10]:>10s} {label_b[:10]:>10s} {'B-A':>8s}  {'95% interval':>18s}  {'p':>7s}"]
    for metric, r in result["metrics"].items():
        lo, hi = r["ci95"]
        lines.append(f"{metric:22s} {r['a']:10.2f} {r['b']:10.2f} {r['diff']:+8.2f}  [{lo:+7.2f}, {hi:+7.2f}]  "
                     f"{format_p(r['p']):>7s}{'  *' if r['significant'] else ''}")
    if any(r["significant"] for r in result["metrics"].values()):
        lines.append("* the 95% interval excludes 0")
    return "\n".join(lines)


def format_p(p: float) -> str:
    """A p-value as printed: 3 decimals, or "< 0.001" (the bootstrap cannot show more, and 0.000 reads as impossible)."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_text(p: float) -> str:
    """"p = 0.062" or "p < 0.001"."""
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _expand(side: str) -> list[str]:
    """A side of the command line: comma-separated files or glob patterns (one per seed)."""
    files = []
    for part in [p for p in side.split(",") if p]:
        matched = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
        if not matched:
            raise ValueError(f"{part}: no file matches")
        files += matched
    return files


def run(args) -> int:
    try:
        files_a, files_b = _expand(args.a), _expand(args.b)
        examples = None
        if args.gt is None:  # the ground truth the eval folder was made on
            queries = Path(files_a[0]).parent / "queries.jsonl"
            if not queries.is_file():
                raise ValueError(f"--gt is needed: {queries} does not exist (not written by `tempsamp eval`)")
            if (args.task or detect_task(files_a[0])) == "qvhighlights":
                raise ValueError("QVHighlights: pass the official ground truth with --gt")
            examples = examples_from_queries(queries)
        result = compare(files_a, files_b, args.gt, task=args.task, dataset=args.dataset, durations=args.durations,
                         convention=args.convention, allow_missing=args.allow_missing, n_boot=args.n_boot, seed=args.seed,
                         examples=examples)
    except (ValueError, FileNotFoundError) as err:
        print(f"tempsamp compare: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def register(sub) -> None:
    from tempsamp.evaluation.conventions import CONVENTIONS

    p = sub.add_parser("compare", help="B - A per metric with a paired bootstrap 95%% interval and p-value")
    p.add_argument("a", help="predictions of A: a file, or several (seeds) comma-separated or as a quoted glob")
    p.add_argument("b", help="predictions of B, the same way")
    p.add_argument("--gt", default=None,
                   help="annotation file both were made on (default: queries.jsonl beside A's first file, as `tempsamp eval` writes it)")
    p.add_argument("--task", choices=["grounding", "qvhighlights"], default=None, help="default: from the prediction lines")
    p.add_argument("--dataset", default=None, help="grounding: charades | activitynet | jsonl (default: detect)")
    p.add_argument("--durations", default=None, help="Charades-STA text: the CSV with video lengths")
    p.add_argument("--convention", choices=list(CONVENTIONS), default="tempsamp", help="grounding: as in `tempsamp score`")
    p.add_argument("--allow-missing", action="store_true", help="queries without a prediction score as misses")
    p.add_argument("--n-boot", type=positive_int, default=10000, help="bootstrap replicates (default 10000)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the replicates")
    p.add_argument("--out", default=None, help="also write the result JSON here")
    p.set_defaults(func=run)
