"""`tempsamp data check`: what an annotation file holds and what is wrong with it.

The report counts queries and videos, summarises durations and span lengths, and lists problems:
malformed rows (file:line and field; skipped and counted), spans that end past the video's duration
or start past it, spans with start >= end or a negative start, videos whose rows disagree on the
duration, duplicate query ids, unlabelled queries, and missing video files (when paths are known).
Spans past the duration and start >= end are reported, not repaired: the readers keep spans as
annotated (see tempsamp.data.readers).
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from tempsamp.data.example import Example
from tempsamp.data.readers import Problem, detect_dataset, load_examples_report

EXAMPLES_SHOWN = 5  # sources listed per problem class (the count is always complete)


def check_annotations(path, dataset: str | None = None, *, durations=None, videos=None) -> dict:
    """Read a file leniently (every malformed row counted, not fatal) and summarise it."""
    dataset = dataset or detect_dataset(path)
    examples, problems = load_examples_report(path, dataset, durations=durations, videos=videos, lenient=True)
    report = {"file": str(path), "dataset": dataset}
    report.update(summarize(examples, problems))
    return report


def summarize(examples: list[Example], problems: list[Problem] = ()) -> dict:
    """Counts, statistics and problems of a list of examples, as a JSON-ready dict."""
    n = len(examples)
    video_durations: dict[str, float] = {}
    inconsistent: list[str] = []
    for ex in examples:
        first = video_durations.setdefault(ex.video_id, ex.duration)
        if first != ex.duration and ex.video_id not in inconsistent:
            inconsistent.append(ex.video_id)

    spans_per_query = np.array([len(ex.spans) for ex in examples], dtype=int)
    spans = np.array([s for ex in examples for s in ex.spans], dtype=float).reshape(-1, 2)
    owner = np.repeat(np.arange(n), spans_per_query)  # span -> index of its example
    duration_of_span = np.array([ex.duration for ex in examples], dtype=float)[owner]
    start, end = spans[:, 0], spans[:, 1]

    def where(mask: np.ndarray) -> dict:
        rows = owner[np.flatnonzero(mask)]
        shown = [f"{examples[i].source} ({examples[i].qid})" for i in rows[:EXAMPLES_SHOWN]]
        return {"count": int(mask.sum()), "examples": shown}

    qid_counts = Counter(ex.qid for ex in examples)
    duplicates = [qid for qid, count in qid_counts.items() if count > 1]
    return {
        "queries": n,
        "videos": len(video_durations),
        "tasks": dict(Counter(ex.task for ex in examples)),
        "duration_s": stats(np.array(list(video_durations.values()), dtype=float)),
        "spans": int(len(spans)),
        "queries_with_several_spans": int((spans_per_query > 1).sum()),
        "span_length_s": stats(end - start),
        "unlabelled_queries": int((spans_per_query == 0).sum()),
        "ends_past_duration": where(end > duration_of_span),
        "starts_past_duration": where(start >= duration_of_span),
        "start_ge_end": where(start >= end),
        "negative_starts": where(start < 0),
        "inconsistent_durations": {"count": len(inconsistent), "examples": inconsistent[:EXAMPLES_SHOWN]},
        "duplicate_qids": {"count": len(duplicates), "examples": duplicates[:EXAMPLES_SHOWN]},
        "malformed": {"count": len(problems), "skipped_queries": sum(p.skipped for p in problems),
                      "problems": [str(p) for p in problems]},
        "missing_videos": missing_videos(examples),
    }


def stats(values: np.ndarray) -> dict | None:
    """min / median / mean / max, rounded to 2 decimals; None for no values."""
    if values.size == 0:
        return None
    return {name: round(float(fn(values)), 2) for name, fn in
            (("min", np.min), ("median", np.median), ("mean", np.mean), ("max", np.max))}


def missing_videos(examples: list[Example]) -> dict:
    """Videos whose file does not exist; only checked when the examples carry paths."""
    paths = {ex.video_id: ex.video_path for ex in examples if ex.video_path is not None}
    if not paths:
        return {"checked": False, "count": 0, "examples": []}
    missing = sorted(path for path in paths.values() if not os.path.exists(path))
    return {"checked": True, "count": len(missing), "examples": missing[:EXAMPLES_SHOWN]}


def format_report(report: dict, max_problems: int = 20) -> str:
    """The report as aligned text lines (what `tempsamp data check` prints without --json)."""
    def fmt_stats(s):
        return "-" if s is None else f"min {s['min']:g}  median {s['median']:g}  mean {s['mean']:g}  max {s['max']:g}"

    def fmt_where(entry):
        return f"{entry['count']}" + (f"   e.g. {', '.join(entry['examples'])}" if entry["count"] else "")

    mv = report["missing_videos"]
    malformed = report["malformed"]
    lines = [
        f"file                        {report['file']}",
        f"dataset                     {report['dataset']}",
        f"queries                     {report['queries']}",
        f"videos                      {report['videos']}",
        f"tasks                       {', '.join(f'{k} {v}' for k, v in report['tasks'].items()) or '-'}",
        f"video duration (s)          {fmt_stats(report['duration_s'])}",
        f"spans                       {report['spans']} ({report['queries_with_several_spans']} queries with several)",
        f"span length (s)             {fmt_stats(report['span_length_s'])}",
        f"unlabelled queries          {report['unlabelled_queries']}",
        f"ends past the duration      {fmt_where(report['ends_past_duration'])}",
        f"starts past the duration    {fmt_where(report['starts_past_duration'])}",
        f"start >= end                {fmt_where(report['start_ge_end'])}",
        f"negative starts             {fmt_where(report['negative_starts'])}",
        f"inconsistent durations      {fmt_where(report['inconsistent_durations'])}",
        f"duplicate query ids         {fmt_where(report['duplicate_qids'])}",
        f"malformed rows              {malformed['count']} ({malformed['skipped_queries']} queries skipped)",
    ]
    lines += [f"  {p}" for p in malformed["problems"][:max_problems]]
    if malformed["count"] > max_problems:
        lines.append(f"  ... and {malformed['count'] - max_problems} more (--json lists them all)")
    checked = fmt_where(mv) if mv["checked"] else "not checked (no video paths; pass --videos)"
    lines.append(f"missing videos              {checked}")
    return "\n".join(lines)
