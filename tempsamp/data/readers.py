"""Annotation files -> Example records, for the three benchmarks and the project's own JSONL.

Formats (``dataset`` names in brackets; ``None`` detects the format from the file name and content):

* Charades-STA original text [charades, ``.txt``]: ``3MSZA 24.3 30.4##person turn a light on.``
  (video id, start, end in seconds, ``##``, sentence). Durations come from the Charades_v1 CSV
  (``durations=``: a CSV with at least the columns ``id`` and ``length``).
* The MLLM JSON layout [charades or activitynet, ``.json``]:
  ``{vid: {"duration": d, "timestamps": [[s, e], ...], "sentences": [...]}}``, used for Charades-STA
  and ActivityNet Captions (``train.json``, ``val_1.json``, ``val_2.json``). Sentences are stripped
  (ActivityNet's start with a space).
* QVHighlights [qvhighlights, ``highlight_*.jsonl``]: one object per line with ``qid, query, duration,
  vid, relevant_windows, relevant_clip_ids, saliency_scores``. The unlabelled test release has no
  ``relevant_*``/``saliency_scores`` keys: its examples carry no spans (``spans == ()``). The raw
  ground-truth object is kept in ``extra["raw"]`` for the official evaluator.
* The project's generic JSONL [jsonl], for users' own data; one object per line::

      {"video": "clips/v0.mp4", "duration": 16.0, "query": "when does the red square appear?",
       "spans": [[2.0, 6.0]]}

  required: ``video`` (a path; relative paths resolve against ``videos`` when given, else against
  the annotation file's folder), ``duration`` (seconds), ``query``, ``spans`` (one or more
  ``[start, end]`` in seconds; ``[]`` allowed only for unlabelled data). Optional: ``qid`` (default
  ``"{video_id}#{index}"``), ``video_id`` (default: the video file's stem), ``task``
  (``"grounding"`` | ``"highlights"``), ``clip_ids`` and ``saliency`` (QVHighlights-style: relevant
  2-s clip ids and, per clip, the annotators' 0-4 scores).

* TimeLens-100K [timelens, ``timelens-100k.jsonl``]: one video per line,
  ``{"video_path": "cosmo_cap/x.mp4", "duration": d, "source": "...", "events": [{"query": q, "span": [s, e]}, ...]}``
  (``span`` may also be a list of ``[s, e]``); ``video_path`` resolves against ``videos`` (TimeLens'
  ``data/TimeLens-100K/videos``), else the file's folder. One query per event, ``qid =
  "{video_path}#{event index}"`` (stems repeat across sources), the source kept in ``extra["source"]``.
* TimeLens-Bench [timelens-bench, ``charades-timelens.json``, ``activitynet-timelens.json``,
  ``qvhighlights-timelens.json``]: ``{vid: {"duration": d, "spans": [[s, e], ...], "queries": [...]}}``,
  video ``{videos}/{vid}.mp4``, ids as the other grounding sets.
  TimeLens' queries are normalised as TimeLens reads them: runs of whitespace made one space, ends
  stripped of spaces and full stops (the benchmarks' numbers were made with those queries).

Ids: grounding sets get ``qid = "{video_id}#{index}"`` where index counts the file's queries from 0
in file order (so it is unique and stable; predictions join back on it).
Video paths: with ``videos`` given, ``{videos}/{video_id}.mp4`` (or the first of .mkv .webm .avi
.mov that exists); a path that does not exist is kept, so a missing video is reported later and
never dropped here. Without ``videos`` the path is None (except JSONL, whose rows name it).

What a reader refuses (a *malformed* row): invalid JSON, a missing or wrongly typed field, a time or
duration that is not a finite number, a non-positive duration, a span that is not ``[start, end]``,
a Charades video absent from the durations CSV. Strict mode (``lenient=False``) raises
``ValueError("file:line: field 'name': ...")`` on the first one; lenient mode skips the row and
counts it (``load_examples_report`` returns the problems). Spans past the duration and
start >= end are *kept as annotated* (562 Charades-STA test ends lie past the duration and MLLM
papers keep them); ``tempsamp data check`` reports them. For the JSON layout, whose objects span many
lines (or one), the line is the one where the video's entry starts and the message names the video.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tempsamp.errors import require_file
from tempsamp.data.example import GROUNDING, HIGHLIGHTS, TASKS, Example

DATASETS = ("charades", "activitynet", "qvhighlights", "jsonl", "timelens", "timelens-bench")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


@dataclass(frozen=True)
class Problem:
    """One malformed row: where, which field, what is wrong, how many queries it cost."""

    source: str  # "file:line"
    field: str
    message: str
    skipped: int = 1  # queries dropped because of it (a JSON video entry can hold several)

    def __str__(self) -> str:
        return f"{self.source}: field '{self.field}': {self.message}"


class _Collector:
    """Raises on the first problem (strict) or records it (lenient)."""

    def __init__(self, lenient: bool):
        self.lenient = lenient
        self.problems: list[Problem] = []

    def __call__(self, source: str, field: str, message: str, skipped: int = 1) -> None:
        problem = Problem(source, field, message, skipped)
        if not self.lenient:
            raise ValueError(str(problem))
        self.problems.append(problem)


class _Bad(Exception):
    """A row is malformed; carries the field name and message to the collector."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


# ---------------------------------------------------------------- public entry points


def load_examples(path, dataset: str | None = None, *, durations=None, videos=None,
                  lenient: bool = False) -> list[Example]:
    """Read an annotation file into Examples (see the module docstring for formats and errors)."""
    examples, _ = load_examples_report(path, dataset, durations=durations, videos=videos, lenient=lenient)
    return examples


def load_examples_report(path, dataset: str | None = None, *, durations=None, videos=None,
                         lenient: bool = False) -> tuple[list[Example], list[Problem]]:
    """Like load_examples, and also returns the skipped rows' problems (empty unless lenient).

    A file that cannot be read at all (missing, not JSON where JSON is expected, unknown format)
    raises ValueError/FileNotFoundError in both modes.
    """
    path = Path(path)
    require_file(path, "an annotation file")
    check_utf8(path)
    dataset = detect_dataset(path) if dataset is None else dataset.lower()
    if dataset not in DATASETS:
        raise ValueError(f"{path}: unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    collect = _Collector(lenient)
    videos = Path(videos) if videos is not None else None
    if dataset == "qvhighlights":
        examples = read_qvhighlights(path, videos, collect)
    elif dataset == "jsonl":
        examples = read_jsonl(path, videos, collect)
    elif dataset == "timelens":
        examples = read_timelens100k(path, videos, collect)
    elif dataset == "timelens-bench":
        examples = read_mllm_json(path, videos, collect, spans_key="spans", queries_key="queries",
                                  normalize=timelens_query)
    elif dataset == "charades" and not _looks_like_json(path):
        if durations is None:
            raise ValueError(f"{path}: Charades-STA text needs the video durations: pass durations= "
                             "(--durations), the Charades_v1 CSV with 'id' and 'length' columns")
        examples = read_charades_text(path, read_durations(durations, collect), videos, collect)
    else:  # charades or activitynet in the {vid: {duration, timestamps, sentences}} layout
        examples = read_mllm_json(path, videos, collect)
    return examples, collect.problems


def detect_dataset(path) -> str:
    """Guess the format: .txt -> charades; .json -> activitynet/charades; .jsonl -> by its first row."""
    path = Path(path)
    require_file(path, "an annotation file")
    check_utf8(path)
    name = path.name.lower()
    if _looks_like_json(path):
        if "timelens" in name:
            return "timelens-bench"
        return "charades" if "charades" in name else "activitynet"
    first = _first_nonblank_line(path)
    if first.startswith("{"):
        try:
            row = json.loads(first)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:1: cannot detect the format, first row is not JSON ({err.msg})") from None
        if isinstance(row, dict) and "vid" in row and "qid" in row:
            return "qvhighlights"
        if isinstance(row, dict) and "video" in row:
            return "jsonl"
        if isinstance(row, dict) and "events" in row and "video_path" in row:
            return "timelens"
        raise ValueError(f"{path}: cannot detect the format from the first row's keys {sorted(row)}; pass dataset=")
    if "##" in first:
        return "charades"
    raise ValueError(f"{path}: cannot detect the annotation format; pass dataset= (one of {', '.join(DATASETS)})")


def check_utf8(path) -> None:
    """A ValueError naming file and line when the file is not UTF-8 text (e.g. Latin-1 or binary)."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#04x}); save the file as UTF-8") from None


def video_path_for(videos: Path | None, video_id: str) -> str | None:
    """``{videos}/{video_id}.mp4``, or the first existing other extension; None without a folder."""
    if videos is None:
        return None
    for ext in VIDEO_EXTENSIONS:
        candidate = videos / f"{video_id}{ext}"
        if candidate.exists():
            return str(candidate)
    return str(videos / f"{video_id}.mp4")  # kept even though missing: reported later, not dropped


def _video_path_lookup(videos: Path | None):
    """video_path_for with one file-system look-up per video (a video has many queries)."""
    cache: dict[str, str | None] = {}

    def lookup(video_id: str) -> str | None:
        if video_id not in cache:
            cache[video_id] = video_path_for(videos, video_id)
        return cache[video_id]

    return lookup


# ---------------------------------------------------------------- Charades-STA text + durations CSV


def read_durations(csv_path, collect=None) -> dict[str, float]:
    """{video id: length in seconds} from a Charades_v1 CSV (needs 'id' and 'length' columns)."""
    collect = collect or _Collector(lenient=False)
    csv_path = Path(csv_path)
    require_file(csv_path, "a durations CSV")
    check_utf8(csv_path)
    name = csv_path.name
    durations: dict[str, float] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("id", "length") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{name}:1: missing column(s) {missing}; found {reader.fieldnames}")
        for row in reader:
            source = f"{name}:{reader.line_num}"
            vid = (row["id"] or "").strip()
            if not vid:
                collect(source, "id", "empty video id")
                continue
            try:
                length = _positive_number(_parse_float(row["length"], "length"), "length")
            except _Bad as bad:
                collect(source, bad.field, bad.message)
                continue
            if vid in durations and durations[vid] != length:
                collect(source, "length", f"video {vid!r} listed again with a different length "
                                          f"({length} vs {durations[vid]})")
                continue
            durations[vid] = length
    return durations


def read_charades_text(path: Path, durations: dict[str, float], videos: Path | None, collect) -> list[Example]:
    name, examples, index = path.name, [], -1
    video_path = _video_path_lookup(videos)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            index += 1  # counts skipped lines too, so a lenient read keeps the strict read's ids
            source = f"{name}:{line_no}"
            try:
                head, sep, sentence = line.partition("##")
                if not sep:
                    raise _Bad("line", f"expected 'vid start end##sentence', got {line.strip()[:80]!r}")
                parts = head.split()
                if len(parts) != 3:
                    raise _Bad("line", f"expected 'vid start end' before '##', got {head.strip()!r}")
                vid = parts[0]
                span = _span([_parse_float(parts[1], "start"), _parse_float(parts[2], "end")], "timestamps")
                query = sentence.strip()
                if not query:
                    raise _Bad("sentence", "empty sentence")
                if vid not in durations:
                    raise _Bad("duration", f"video {vid!r} is not in the durations CSV")
            except _Bad as bad:
                collect(source, bad.field, bad.message)
                continue
            examples.append(Example(
                qid=f"{vid}#{index}", video_id=vid, video_path=video_path(vid),
                duration=durations[vid], query=query, spans=(span,), task=GROUNDING, source=source))
    return examples


# ---------------------------------------------------------------- {vid: {duration, timestamps, sentences}}


def read_mllm_json(path: Path, videos: Path | None, collect, *, spans_key: str = "timestamps",
                   queries_key: str = "sentences", normalize=str.strip) -> list[Example]:
    """The {vid: {duration, timestamps, sentences}} layout; TimeLens-Bench's names its lists spans, queries."""
    name = path.name
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{name}:1: expected an object {{video id: {{duration, {spans_key}, {queries_key}}}}}, "
                         f"got a {type(data).__name__}")
    examples: list[Example] = []
    index = 0  # the query's position in the file, skipped queries included (stable ids)
    for vid, entry, line_no in _entries_with_lines(text, data):
        source = f"{name}:{line_no}"
        where = f"video {vid!r}"
        try:
            if not isinstance(entry, dict):
                raise _Bad("entry", f"{where}: expected an object, got {type(entry).__name__}")
            for key in ("duration", spans_key, queries_key):
                if key not in entry:
                    raise _Bad(key, f"{where}: missing")
            duration = _positive_number(entry["duration"], "duration", where)
            stamps, sentences = entry[spans_key], entry[queries_key]
            if not isinstance(stamps, list):
                raise _Bad(spans_key, f"{where}: expected a list of [start, end], got {type(stamps).__name__}")
            if not isinstance(sentences, list):
                raise _Bad(queries_key, f"{where}: expected a list of strings, got {type(sentences).__name__}")
            if len(stamps) != len(sentences):
                raise _Bad(spans_key, f"{where}: {len(stamps)} {spans_key} but {len(sentences)} {queries_key}")
        except _Bad as bad:
            sentences = entry.get(queries_key) if isinstance(entry, dict) else None
            skipped = max(1, len(sentences)) if isinstance(sentences, list) else 1
            collect(source, bad.field, bad.message, skipped=skipped)  # the whole video's queries
            index += skipped
            continue
        video_path = video_path_for(videos, vid)
        for k, (stamp, sentence) in enumerate(zip(stamps, sentences)):
            qid, index = f"{vid}#{index}", index + 1
            where_k = f"{where} query {k}"
            try:
                span = _span(stamp, spans_key, where_k)
                if not isinstance(sentence, str) or not normalize(sentence):
                    raise _Bad(queries_key, f"{where_k}: expected a non-empty string, got {sentence!r}")
            except _Bad as bad:
                collect(source, bad.field, bad.message)
                continue
            examples.append(Example(
                qid=qid, video_id=vid, video_path=video_path, duration=duration,
                query=normalize(sentence), spans=(span,), task=GROUNDING, source=source))
    return examples


def _entries_with_lines(text: str, data: dict):
    """(key, value, line where the key appears) in file order; json keeps the file's key order."""
    cursor, line_no = 0, 1
    for key, value in data.items():
        pos = text.find(json.dumps(key, ensure_ascii=False), cursor)
        if pos >= 0:  # a key with unusual escapes may not be found verbatim: keep the last line
            line_no += text.count("\n", cursor, pos)
            cursor = pos
        yield key, value, line_no


# ---------------------------------------------------------------- QVHighlights and the generic JSONL


def read_qvhighlights(path: Path, videos: Path | None, collect) -> list[Example]:
    examples, video_path = [], _video_path_lookup(videos)
    for _, source, row in _jsonl_rows(path, collect):
        try:
            for key in ("qid", "query", "duration", "vid"):
                if key not in row:
                    raise _Bad(key, "missing")
            qid, vid = row["qid"], row["vid"]
            if not isinstance(qid, (int, str)) or isinstance(qid, bool):
                raise _Bad("qid", f"expected an integer or string, got {qid!r}")
            if not isinstance(vid, str) or not vid:
                raise _Bad("vid", f"expected a non-empty string, got {vid!r}")
            query = _query(row["query"], "query")
            duration = _positive_number(row["duration"], "duration")
            labelled = any(k in row for k in ("relevant_windows", "relevant_clip_ids", "saliency_scores"))
            spans, clip_ids, saliency = (), (), ()
            if labelled:
                for key in ("relevant_windows", "relevant_clip_ids", "saliency_scores"):
                    if key not in row:
                        raise _Bad(key, "missing (the row has other ground-truth fields)")
                spans = _spans(row["relevant_windows"], "relevant_windows", allow_empty=False)
                clip_ids, saliency = _clips(row["relevant_clip_ids"], row["saliency_scores"],
                                            "relevant_clip_ids", "saliency_scores")
        except _Bad as bad:
            collect(source, bad.field, bad.message)
            continue
        examples.append(Example(
            qid=str(qid), video_id=vid, video_path=video_path(vid), duration=duration,
            query=query, spans=spans, task=HIGHLIGHTS, clip_ids=clip_ids, saliency=saliency,
            source=source, extra={"raw": row} if labelled else {"raw": None, "unlabelled": True}))
    return examples


def read_jsonl(path: Path, videos: Path | None, collect) -> list[Example]:
    base = videos if videos is not None else path.parent
    examples = []
    for index, source, row in _jsonl_rows(path, collect):
        try:
            for key in ("video", "duration", "query", "spans"):
                if key not in row:
                    raise _Bad(key, "missing")
            video = row["video"]
            if not isinstance(video, str) or not video:
                raise _Bad("video", f"expected a path, got {video!r}")
            video_path = str(base / video)  # an absolute `video` stays as it is
            video_id = row.get("video_id", Path(video).stem)
            if not isinstance(video_id, str) or not video_id:
                raise _Bad("video_id", f"expected a non-empty string, got {video_id!r}")
            duration = _positive_number(row["duration"], "duration")
            query = _query(row["query"], "query")
            spans = _spans(row["spans"], "spans", allow_empty=True)
            task = row.get("task", HIGHLIGHTS if "saliency" in row else GROUNDING)
            if task not in TASKS:
                raise _Bad("task", f"expected one of {TASKS}, got {task!r}")
            clip_ids, saliency = _clips(row.get("clip_ids", []), row.get("saliency", []), "clip_ids", "saliency")
            qid = row.get("qid", f"{video_id}#{index}")
            if not isinstance(qid, (int, str)) or isinstance(qid, bool):
                raise _Bad("qid", f"expected an integer or string, got {qid!r}")
        except _Bad as bad:
            collect(source, bad.field, bad.message)
            continue
        examples.append(Example(
            qid=str(qid), video_id=video_id, video_path=video_path, duration=duration, query=query,
            spans=spans, task=task, clip_ids=clip_ids, saliency=saliency, source=source,
            extra={"raw": _qvh_raw(qid, query, duration, video_id, spans, clip_ids, saliency)}
            if task == HIGHLIGHTS else {}))
    return examples


def timelens_query(text: str) -> str:
    """A query as TimeLens reads it: whitespace runs made one space, spaces and full stops stripped off the ends."""
    import re

    return re.sub(r"\s+", " ", text).strip().strip(".").strip()


def read_timelens100k(path: Path, videos: Path | None, collect) -> list[Example]:
    """TimeLens-100K: one video per line with its events; one Example per event."""
    base = videos if videos is not None else path.parent
    examples = []
    for _, source, row in _jsonl_rows(path, collect):
        try:
            for key in ("video_path", "duration", "events"):
                if key not in row:
                    raise _Bad(key, "missing")
            rel = row["video_path"]
            if not isinstance(rel, str) or not rel:
                raise _Bad("video_path", f"expected a path, got {rel!r}")
            duration = _positive_number(row["duration"], "duration")
            if not isinstance(row["events"], list) or not row["events"]:
                raise _Bad("events", f"expected a non-empty list of {{query, span}}, got {row['events']!r}")
            events = []
            for k, event in enumerate(row["events"]):
                where = f"event {k}"
                if not isinstance(event, dict) or "query" not in event or "span" not in event:
                    raise _Bad("events", f"{where}: expected {{query, span}}, got {event!r}")
                span = event["span"]
                spans = (_spans(span, "span", allow_empty=False) if isinstance(span, list) and span and isinstance(span[0], (list, tuple))
                         else (_span(span, "span", where),))
                query = timelens_query(event["query"]) if isinstance(event["query"], str) else ""
                if not query:
                    raise _Bad("query", f"{where}: expected a non-empty string, got {event['query']!r}")
                events.append((k, query, spans))
        except _Bad as bad:
            collect(source, bad.field, bad.message)
            continue
        video_id = str(Path(rel).with_suffix(""))
        for k, query, spans in events:
            examples.append(Example(
                qid=f"{video_id}#{k}", video_id=video_id, video_path=str(base / rel), duration=duration, query=query,
                spans=spans, task=GROUNDING, source=source, extra={"source": row.get("source")}))
    return examples


def _qvh_raw(qid, query, duration, video_id, spans, clip_ids, saliency) -> dict:
    """A generic-JSONL highlight row in the official QVHighlights GT layout (for the evaluator)."""
    return {"qid": qid, "query": query, "duration": duration, "vid": video_id,
            "relevant_windows": [list(s) for s in spans], "relevant_clip_ids": list(clip_ids),
            "saliency_scores": [list(s) for s in saliency]}


def _jsonl_rows(path: Path, collect):
    """(row index, source, object) per non-blank line; undecodable lines and non-objects go to collect.

    The row index counts non-blank lines from 0, skipped ones included, so default ids do not shift.
    """
    name, index = path.name, -1
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            index += 1
            source = f"{name}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                collect(source, "line", f"not valid JSON ({err.msg} at column {err.colno})")
                continue
            if not isinstance(row, dict):
                collect(source, "line", f"expected a JSON object, got {type(row).__name__}")
                continue
            yield index, source, row


# ---------------------------------------------------------------- field validation (raise _Bad)


def _parse_float(text, field: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise _Bad(field, f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise _Bad(field, f"expected a finite number, got {text!r}")
    return value


def _number(value, field: str, where: str = "") -> float:
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(field, f"{prefix}expected a number, got {value!r}")
    if not math.isfinite(value):
        raise _Bad(field, f"{prefix}expected a finite number, got {value!r}")
    return float(value)


def _positive_number(value, field: str, where: str = "") -> float:
    value = _number(value, field, where)
    if value <= 0:
        raise _Bad(field, f"{where + ': ' if where else ''}expected a positive duration, got {value!r}")
    return value


def _span(value, field: str, where: str = "") -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _Bad(field, f"{where + ': ' if where else ''}expected [start, end], got {value!r}")
    return (_number(value[0], field, where), _number(value[1], field, where))


def _spans(value, field: str, allow_empty: bool) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise _Bad(field, f"expected a {'' if allow_empty else 'non-empty '}list of [start, end], got {value!r}")
    return tuple(_span(v, field) for v in value)


def _query(value, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(field, f"expected a non-empty string, got {value!r}")
    return value.strip()


def _clips(clip_ids, saliency, ids_field: str, saliency_field: str):
    """Relevant clip ids (non-negative ints) and, per clip, a row of scores (may be absent).

    Checked with numpy in one go: QVHighlights has ~30 clips x 3 scores per row.
    """
    ids = _array_or_bad(clip_ids, ids_field, "a list of non-negative integers")
    if ids.ndim != 1 or (ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0)):
        raise _Bad(ids_field, f"expected a list of non-negative integers, got {str(clip_ids)[:80]}")
    scores = _array_or_bad(saliency, saliency_field, "a list of equal-length score lists")
    if scores.size and (scores.ndim != 2 or scores.dtype.kind not in "iuf"):
        raise _Bad(saliency_field, f"expected a list of equal-length score lists, got {str(saliency)[:80]}")
    if saliency and len(saliency) != len(clip_ids):
        raise _Bad(saliency_field, f"{len(saliency)} score rows for {len(clip_ids)} clip ids")
    return tuple(clip_ids), tuple(map(tuple, saliency))


def _array_or_bad(value, field: str, expected: str) -> np.ndarray:
    if not isinstance(value, list):
        raise _Bad(field, f"expected {expected}, got {str(value)[:80]}")
    try:
        return np.asarray(value)
    except ValueError:  # ragged
        raise _Bad(field, f"expected {expected}, got {str(value)[:80]}") from None


def _looks_like_json(path: Path) -> bool:
    """The {vid: {...}} layout is one JSON document: a .json file (JSONL files are .jsonl)."""
    return path.suffix.lower() == ".json"


def _first_nonblank_line(path: Path) -> str:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return line.strip()
    raise ValueError(f"{path}: the annotation file is empty")
