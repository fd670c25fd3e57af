"""The one record every reader produces and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

GROUNDING = "grounding"
HIGHLIGHTS = "highlights"
TASKS = (GROUNDING, HIGHLIGHTS)


@dataclass(frozen=True)
class Example:
    """One query about one video.

    qid:        unique query id (QVHighlights' integer qid as a string; for grounding sets
                ``"{video_id}#{index}"`` in file order, so predictions can be joined back).
    video_id:   the dataset's video id.
    video_path: where the video file is, or None when only annotations were read.
    duration:   video length in seconds, as the annotation states it (never re-measured).
    query:      the natural-language query, stripped.
    spans:      ground-truth (start, end) spans in seconds, as annotated (nothing clipped).
    task:       "grounding" or "highlights".
    clip_ids:   QVHighlights only: the relevant 2-s clip ids.
    saliency:   QVHighlights only: per relevant clip, the 3 annotators' scores (0-4).
    source:     "file:line" the record came from, for error messages.
    """

    qid: str
    video_id: str
    video_path: str | None
    duration: float
    query: str
    spans: tuple[tuple[float, float], ...]
    task: str = GROUNDING
    clip_ids: tuple[int, ...] = ()
    saliency: tuple[tuple[int, ...], ...] = ()
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def span(self) -> tuple[float, float]:
        """The first ground-truth span (grounding sets have exactly one)."""
        return self.spans[0]
