"""Spans in seconds: reading them out of model answers, and comparing them.

Parsing rules (decisions where the paper is silent; see docs/decisions.md):
- If the text has an ``<answer>`` tag, only the answer block is read: the content of the last
  complete ``<answer>...</answer>``, or, for output truncated before ``</answer>``, everything after
  the last ``<answer>``.
- Without an ``<answer>`` tag, complete ``<think>...</think>`` blocks are removed first and an
  unterminated ``<think>`` drops everything after it: reasoning is not an answer, and a CoT output
  cut off before its answer must not be credited with a number from its reasoning.
- A span is two times joined by ``to``, ``-``, ``–``, ``—``, ``~``, ``,``, ``and``, ``until``,
  ``till`` or ``through``. A time is seconds (``12.5``, ``12.5s``, ``12.5 seconds``) or a clock
  time ``mm:ss`` / ``hh:mm:ss`` (fractions allowed: ``01:02.5``).
- ``parse_span`` returns the *last* span of the block (models restate and correct themselves;
  the last statement is the answer). ``parse_spans`` returns every span, in order.
- Values are returned exactly as written: a span with start > end is returned as such (it scores 0
  under the IoU convention), nothing is swapped, clipped or rounded.
"""

from __future__ import annotations

import re

import numpy as np

_UNIT = r"(?:\s*(?:seconds?|secs?|s)\b)?"
# hh:mm:ss / mm:ss first, so that "01:02" is one time and not "01" then "02".
_TIME = r"(\d+(?::\d{1,2}){1,2}(?:\.\d+)?|\d+\.\d+|\d+|\.\d+)"
_SEP = r"\s*(?:to|until|till|through|and|-|–|—|~|,)\s*"
# Lookarounds keep numbers inside identifiers ("Qwen2.5", "clip3") from being read as times.
_SPAN_RE = re.compile(
    r"(?<![\w.:])" + _TIME + _UNIT + _SEP + _TIME + _UNIT + r"(?![\w:]|\.\d)",
    re.IGNORECASE,
)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)


def _to_seconds(token: str) -> float:
    parts = token.split(":")
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60.0 + float(part)
    return seconds


def answer_block(text: str) -> str:
    """The part of a model output that holds the answer (rules in the module docstring)."""
    blocks = _ANSWER_BLOCK.findall(text)
    if blocks:
        return blocks[-1]
    opens = list(_ANSWER_OPEN.finditer(text))
    if opens:  # truncated inside the answer block
        return text[opens[-1].end():]
    without_thinking = _THINK_BLOCK.sub(" ", text)
    unterminated = _THINK_OPEN.search(without_thinking)
    if unterminated:
        return without_thinking[: unterminated.start()]
    return without_thinking


def parse_spans(text: str | None) -> list[tuple[float, float]]:
    """Every (start, end) span in the answer block of ``text``, in order of appearance."""
    if not text:
        return []
    block = answer_block(text)
    return [(_to_seconds(m.group(1)), _to_seconds(m.group(2))) for m in _SPAN_RE.finditer(block)]


_SCORE_RE = re.compile(r"\s*\(?\s*score\s*[:=]?\s*(\d+(?:\.\d+)?)\s*\)?", re.IGNORECASE)


def parse_scored_spans(text: str | None, default_score: float = 4.0) -> list[tuple[float, float, float]]:
    """Highlight answers: every "start to end (score x)" window as (start, end, score).

    A window written without a score gets ``default_score`` (4, the top of the 0-4 scale: a window
    the model names without qualification is a window it claims is relevant).
    """
    if not text:
        return []
    block = answer_block(text)
    out = []
    for m in _SPAN_RE.finditer(block):
        score = _SCORE_RE.match(block, m.end())
        value = float(score.group(1)) if score else default_score
        out.append((_to_seconds(m.group(1)), _to_seconds(m.group(2)), value))
    return out


def parse_span(text: str | None) -> tuple[float, float] | None:
    """The last (start, end) span in the answer block of ``text``, or None if there is none."""
    spans = parse_spans(text)
    return spans[-1] if spans else None


def temporal_iou(pred, gt) -> np.ndarray:
    """Element-wise temporal IoU of spans; the last axis is (start, end), leading axes broadcast.

    IoU = max(0, min(e, ê) - max(s, ŝ)) / (max(e, ê) - min(s, ŝ)), the convention behind published
    MLLM grounding numbers (docs/evaluation.md). A span with start > end is not swapped: it scores 0.
    Nothing is clipped to the video. Non-finite inputs (a NaN for "no parsable answer") and a zero
    union score 0, never NaN.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    s, e = pred[..., 0], pred[..., 1]
    gs, ge = gt[..., 0], gt[..., 1]
    inter = np.minimum(e, ge) - np.maximum(s, gs)
    union = np.maximum(e, ge) - np.minimum(s, gs)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, np.maximum(inter, 0.0) / np.where(union > 0, union, 1.0), 0.0)
    return np.where(np.isfinite(iou), iou, 0.0)


def spans_to_array(spans: list[tuple[float, float] | None]) -> np.ndarray:
    """[N, 2] float array of spans, NaN rows where a span is missing (these score IoU 0)."""
    out = np.full((len(spans), 2), np.nan)
    for i, span in enumerate(spans):
        if span is not None:
            out[i] = span
    return out
