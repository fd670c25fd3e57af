"""Peers' grounding conventions, reproducible from raw answers (docs/evaluation.md, "Conventions").

A convention is three choices that move published numbers by points:

- the parser: which span is read out of the model's raw answer;
- the IoU: exact, or (VTimeLLM) Python's ``round(iou, 2)`` on spans divided by the video's duration;
- missing queries (no prediction line, or inference failed: ``answer`` null): refused / scored as
  misses (the project), or dropped from the denominator (every peer; the report counts them).

Rules, read from each peer's evaluation code (written here as rules, not copied):

- ``tempsamp`` (default): ``tempsamp.spans.parse_span`` (the answer block, the last span); exact IoU;
  R1 counts IoU >= m; a missing query is refused (``--allow-missing``: IoU 0 in the denominator); an
  unparsable answer and a failed video are IoU 0 in the denominator.
- ``timezero`` (TimeZero ``evaluate.py``; VideoChat-R1 ``src_eval/evaluate_grounding.py`` is the same):
  the *last* match of ``(\\d+\\.?\\d*) (to|and) (\\d+\\.?\\d*)`` anywhere in the output (inside
  ``<think>`` or after ``</answer>`` too; exactly one space on each side; a minus sign is not part of
  the number, so "-3 to 5" reads 3 to 5). IoU = (min(e, ê) - max(s, ŝ)) / (max(e, ê) - min(s, ŝ)),
  mIoU on max(IoU, 0), R1 counts IoU >= m. Unparsable: IoU 0, kept. A missing video or failed
  inference (an exception, which includes a zero union) is dropped.
- ``vtimellm`` (VTimeLLM ``vtimellm/eval/eval.py`` + ``metric.py``): the *first* match of
  ``(\\d{2}) (to|and) (\\d{2})``, read as hundredths of the video (VTimeLLM's 100 frame slots);
  the ground truth is divided by the duration; IoU = max(0, inter) / union, then Python
  ``round(iou, 2)``; R1 counts rounded IoU >= m, mIoU is the mean of rounded IoUs. Unparsable:
  IoU 0, kept. A missing video is dropped.

The parser of a convention can be swapped (``parser=``) to score a model that answers in seconds
with a peer's rounding and counting; the report then names both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tempsamp.spans import parse_span

PARSERS = ("tempsamp", "timezero", "vtimellm")
MISSING = ("refuse", "miss", "drop")

_TIMEZERO_SPAN = re.compile(r"(\d+\.?\d*) (to|and) (\d+\.?\d*)")
_VTIMELLM_SPAN = re.compile(r"(\d{2}) (to|and) (\d{2})")


@dataclass(frozen=True)
class Convention:
    name: str
    parser: str  # tempsamp | timezero | vtimellm
    iou: str  # "exact" | "round2-relative" (Python round(iou, 2) on spans / duration)
    missing: str  # refuse | miss | drop
    source: str  # where the rules were read

    @property
    def base(self) -> str:
        """The named convention this one starts from ("vtimellm" for "vtimellm+parser=tempsamp")."""
        return self.name.split("+")[0]

    def describe(self) -> dict:
        return {"name": self.name, "parser": self.parser,
                "iou": {"exact": "exact", "round2-relative": "Python round(iou, 2) on spans / duration"}[self.iou],
                "threshold": "iou >= m",
                "missing_and_failed": {"refuse": "refused", "miss": "IoU 0, in the denominator",
                                       "drop": "dropped from the denominator"}[self.missing],
                "unparsed": "IoU 0, in the denominator", "source": self.source}


CONVENTIONS = {
    "tempsamp": Convention("tempsamp", "tempsamp", "exact", "refuse", "docs/evaluation.md"),
    "timezero": Convention("timezero", "timezero", "exact", "drop",
                           "TimeZero evaluate.py (VideoChat-R1 src_eval/evaluate_grounding.py is identical)"),
    "vtimellm": Convention("vtimellm", "vtimellm", "round2-relative", "drop", "VTimeLLM vtimellm/eval/eval.py, metric.py"),
}


def get_convention(name: str, *, parser: str | None = None, missing: str | None = None) -> Convention:
    """A named convention, with its parser or missing-query rule optionally replaced."""
    if name not in CONVENTIONS:
        raise ValueError(f"convention {name!r} is not one of {', '.join(CONVENTIONS)}")
    conv = CONVENTIONS[name]
    if parser is not None and parser not in PARSERS:
        raise ValueError(f"parser {parser!r} is not one of {', '.join(PARSERS)}")
    if missing is not None and missing not in MISSING:
        raise ValueError(f"missing {missing!r} is not one of {', '.join(MISSING)}")
    if (parser or conv.parser) != conv.parser or (missing or conv.missing) != conv.missing:
        label = conv.name + "".join(f"+{k}={v}" for k, v in (("parser", parser), ("missing", missing))
                                    if v is not None and v != getattr(conv, k))
        conv = Convention(label, parser or conv.parser, conv.iou, missing or conv.missing, conv.source)
    return conv


def parse_timezero(text: str | None) -> tuple[float, float] | None:
    """TimeZero's / VideoChat-R1's reading: the last "a to b" (or "a and b") anywhere in the output."""
    matches = _TIMEZERO_SPAN.findall(text or "")
    if not matches:
        return None
    start, _, end = matches[-1]
    return float(start), float(end)


def parse_vtimellm(text: str | None) -> tuple[float, float] | None:
    """VTimeLLM's reading: the first "NN to NN" (two digits each), as fractions of the video (NN / 100)."""
    match = _VTIMELLM_SPAN.search(text or "")
    if not match:
        return None
    return float(match.group(1)) / 100, float(match.group(3)) / 100


def read_span(conv: Convention, answer: str | None, pred_span, duration: float):
    """The span a convention reads, in its own unit: seconds, or fractions of the video for vtimellm.

    ``pred_span`` (seconds) is used only by the tempsamp parser when present (the stored parse);
    the peers' parsers always read the raw ``answer``.
    """
    if conv.parser == "vtimellm":
        return parse_vtimellm(answer)
    if conv.parser == "timezero":
        span = parse_timezero(answer)
    else:
        span = tuple(pred_span) if pred_span is not None else (parse_span(answer) if answer is not None else None)
    if span is not None and conv.iou == "round2-relative":
        return span[0] / duration, span[1] / duration
    return span


def query_iou(conv: Convention, span, gt: tuple[float, float], duration: float) -> float | None:
    """IoU of one query under ``conv``: a float, or None when the peer's script would drop the query.

    ``span`` is what ``read_span`` returned (None: unparsable, IoU 0).
    """
    if span is None:
        return 0.0
    sp, ep = float(span[0]), float(span[1])
    s, e = float(gt[0]), float(gt[1])
    if conv.iou == "round2-relative":
        s, e = s / duration, e / duration
        union = max(ep, e) - min(sp, s)
        if union == 0:  # VTimeLLM divides by zero here (its run stops); scored as a miss
            return 0.0
        return round(max(0.0, min(ep, e) - max(sp, s)) / union, 2)
    union = max(e, ep) - min(s, sp)
    if union == 0:  # TimeZero: a ZeroDivisionError inside its try, so the query is skipped
        return None if conv.missing == "drop" else 0.0
    return max((min(e, ep) - max(s, sp)) / union, 0.0)
