"""Score one group's completions against its example: task reward, format reward, parse status.

Grounding: R = IoU(parse_span(answer), GT span). Highlights: R = timestamp_reward over 2-s clips.
CoT stages add the format reward (tempsamp.advantages.group_advantages takes it as ``bonus`` so
that shaping touches the task reward only). Unparsable answers score 0 and are counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tempsamp.data.example import HIGHLIGHTS, Example
from tempsamp.rewards import MAX_SALIENCY, clips_from_windows, format_reward, iou_reward, timestamp_reward, window_f2
from tempsamp.spans import parse_scored_spans, parse_span, spans_to_array, temporal_iou


@dataclass
class GroupScores:
    task: np.ndarray  # [G] IoU or R_ts, NaN-free
    format: np.ndarray  # [G] 0/1 (all zero in answer-only stages)
    parsed: np.ndarray  # [G] bool: an answer could be read
    iou: np.ndarray  # [G] IoU of the (first) predicted window with the (first) GT span
    nan_rewards: int  # rewards that came out non-finite and were set to 0


def gt_clip_arrays(example: Example) -> tuple[np.ndarray, np.ndarray]:
    """(relevant mask, saliency in [0, 1]) over the video's 2-s clips, from QVHighlights fields."""
    n_clips = max(1, math.ceil(example.duration / 2.0))
    mask = np.zeros(n_clips, bool)
    saliency = np.zeros(n_clips)
    for clip, scores in zip(example.clip_ids, example.saliency or [()] * len(example.clip_ids)):
        if 0 <= clip < n_clips:
            mask[clip] = True
            saliency[clip] = (np.mean(scores) if len(scores) else MAX_SALIENCY) / MAX_SALIENCY
    return mask, saliency


def score_group(example: Example, texts: list[str], cot: bool, *, lambda_rec: float = 0.5, lambda_score: float = 0.5,
                highlight_f2: str = "windows") -> GroupScores:
    """highlight_f2: "windows" (F2 of IoU-matched windows, ``rewards.window_f2``) or "clips" (F2 over clips)."""
    gt = np.asarray(example.spans[:1] or [(np.nan, np.nan)], dtype=np.float64)
    if example.task == HIGHLIGHTS:
        windows = [parse_scored_spans(t) for t in texts]
        gt_mask, gt_sal = gt_clip_arrays(example)
        pred = [clips_from_windows(w, len(gt_mask)) for w in windows]
        if highlight_f2 not in ("windows", "clips"):
            raise ValueError(f"highlight_f2 must be 'windows' or 'clips', not {highlight_f2!r}")
        f2 = np.array([window_f2(w, example.spans) for w in windows]) if highlight_f2 == "windows" else None
        task = timestamp_reward(
            np.stack([p[0] for p in pred]), np.stack([p[1] for p in pred]),
            np.broadcast_to(gt_mask, (len(texts), len(gt_mask))), np.broadcast_to(gt_sal, (len(texts), len(gt_sal))),
            f2=f2, lambda_rec=lambda_rec, lambda_score=lambda_score,
        )
        parsed = np.array([bool(w) for w in windows])
        first = spans_to_array([tuple(w[0][:2]) if w else None for w in windows])
        iou = temporal_iou(first, gt)
    else:
        spans = spans_to_array([parse_span(t) for t in texts])
        parsed = ~np.isnan(spans).any(-1)
        task = iou_reward(spans, gt)
        iou = task
    bad = ~np.isfinite(task)
    task = np.where(bad, 0.0, task)
    fmt = format_reward(texts) if cot else np.zeros(len(texts))
    return GroupScores(task=task, format=fmt, parsed=parsed, iou=iou, nan_rewards=int(bad.sum()))
