"""Rewards of TempSamp-R1: IoU (grounding), timestamp reward (highlights), format (CoT stage).

All functions are vectorised over a batch of completions; they take parsed spans / clip arrays
(parsing is string work and happens once, in ``tempsamp.spans``) and return float64 numpy arrays.
"""

from __future__ import annotations

import re

import numpy as np

from tempsamp.spans import parse_span, temporal_iou

CLIP_SECONDS = 2.0  # QVHighlights clips are 2 s long, numbered from 0
MAX_SALIENCY = 4.0  # annotator scores are 0..4


def iou_reward(pred_spans, gt_spans) -> np.ndarray:
    """R_IoU = IoU(predicted span, ground-truth span); a NaN row (no parsable answer) scores 0.

    pred_spans, gt_spans: [N, 2] arrays (see ``tempsamp.spans.spans_to_array``).
    """
    return temporal_iou(pred_spans, gt_spans)


_FORMAT_RE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_TAG_RE = re.compile(r"</?(?:think|answer)>")
_WORD_RE = re.compile(r"[^\W_]")  # a letter or a digit


def format_reward(texts: list[str]) -> np.ndarray:
    """1 for exactly one ``<think>...</think>`` followed by exactly one ``<answer>...</answer>``
    whose content parses as a span, and nothing else around them; else 0.

    Tags are lower case (as in the public code the paper builds on). The think part must hold
    reasoning: at least one letter or digit. Whitespace, and the prompts' placeholder "..." (or any
    punctuation alone), earn nothing: a policy must not be paid for copying the prompt's example.
    """
    out = np.zeros(len(texts))
    for i, text in enumerate(texts):
        match = _FORMAT_RE.fullmatch(text or "")
        if match is None or len(_TAG_RE.findall(text)) != 4:
            continue
        thinking, answer = match.groups()
        if _WORD_RE.search(thinking) and parse_span(f"<answer>{answer}</answer>") is not None:
            out[i] = 1.0
    return out


def clips_from_windows(windows, n_clips: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip (relevant mask, score in [0, 1]) from scored windows [(start, end, score 0..4), ...].

    A clip counts as predicted relevant when its centre lies in a window (start <= centre <= end);
    its predicted score is the highest score among the windows covering it, divided by 4.
    """
    centres = (np.arange(n_clips) + 0.5) * CLIP_SECONDS
    w = np.asarray(windows, dtype=np.float64).reshape(-1, 3)
    inside = (w[:, None, 0] <= centres[None]) & (centres[None] <= w[:, None, 1])  # [W, C]
    scores = np.where(inside, np.clip(w[:, None, 2], 0.0, MAX_SALIENCY) / MAX_SALIENCY, 0.0)
    return inside.any(axis=0), scores.max(axis=0, initial=0.0)


def window_f2(pred_windows, gt_windows, beta: float = 2.0) -> float:
    """Soft F-beta of predicted windows against the annotated windows (one answer).

    Windows are matched one to one, greedily by IoU (highest first; ties in order of appearance).
    Soft precision = sum of matched IoUs / number of predicted windows, soft recall = the same sum /
    number of annotated windows, F = (1 + beta^2) P R / (beta^2 P + R); 0 when nothing overlaps or
    nothing is predicted. A window predicted exactly counts 1, a near miss its IoU, and one window
    over the whole video matches a single annotated window at a small IoU: covering everything is
    not recall here (it is under the clip reading, which is why that reading is not the default).
    """
    pred = np.asarray([w[:2] for w in pred_windows], dtype=np.float64).reshape(-1, 2)
    gt = np.asarray([w[:2] for w in gt_windows], dtype=np.float64).reshape(-1, 2)
    if len(pred) == 0 or len(gt) == 0:
        return 0.0
    iou = temporal_iou(pred[:, None, :], gt[None, :, :])  # [P, G]
    matched = 0.0
    for _ in range(min(iou.shape)):
        p, g = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[p, g] <= 0:
            break
        matched += iou[p, g]
        iou[p, :] = -1.0
        iou[:, g] = -1.0
    precision, recall = matched / len(pred), matched / len(gt)
    denom = beta**2 * precision + recall
    return float((1 + beta**2) * precision * recall / denom) if denom > 0 else 0.0


def timestamp_reward(
    pred_mask,
    pred_scores,
    gt_mask,
    gt_saliency,
    valid=None,
    *,
    f2=None,
    lambda_rec: float = 0.5,
    lambda_score: float = 0.5,
    beta: float = 2.0,
) -> np.ndarray:
    """Highlight-detection reward R_ts = lambda_rec * F2 + lambda_score / (1 + WMSE), per row.

    All inputs are [N, C] over 2-s clips (pad shorter videos and mark real clips in ``valid``).
      pred_mask:   bool, clips the answer marks relevant (``clips_from_windows``).
      pred_scores: predicted saliency per clip in [0, 1] (0 where not predicted).
      gt_mask:     bool, the annotated relevant clips (QVHighlights ``relevant_clip_ids``).
      gt_saliency: ground-truth saliency in [0, 1]: mean of the 3 annotators' 0-4 scores / 4,
                   0 for clips outside ``relevant_clip_ids``.
      f2:          optional [N] F2 per row computed elsewhere (``window_f2``, the default reading in
                   training); None computes F2 over clips (below).

    A row that predicts nothing inside the video (empty or unparsable answer) scores 0: it
    localised nothing, whatever its saliency error would be.
    F2 over clips (recall-weighted F-score, beta = 2):
        P = |pred ∩ gt| / |pred|, R = |pred ∩ gt| / |gt|, F2 = 5 P R / (4 P + R); 0 when nothing overlaps.
    WMSE (saliency-weighted mean squared error over every clip of the video):
        w_c = 1 + 4 * gt_saliency_c  (a clip every annotator scored 4 weighs 5x a background clip),
        WMSE = sum_c w_c (pred_scores_c - gt_saliency_c)^2 / sum_c w_c,  in [0, 1].
    The paper gives only R_ts's outer formula; these definitions are the project's (docs/decisions.md,
    with hand-computed cases: the whole-video answer scores below a partly correct one).
    lambda_rec = lambda_score = 0.5 keeps R_ts in [0, 1] like IoU, so reward shaping's tau = 0.8
    means the same on both tasks.
    """
    pred_mask = np.asarray(pred_mask, dtype=bool)
    gt_mask = np.asarray(gt_mask, dtype=bool)
    valid = np.ones_like(gt_mask) if valid is None else np.asarray(valid, dtype=bool)
    pred_mask, gt_mask = pred_mask & valid, gt_mask & valid
    pred_scores = np.nan_to_num(np.asarray(pred_scores, dtype=np.float64), nan=0.0)
    gt_saliency = np.asarray(gt_saliency, dtype=np.float64)

    if f2 is None:
        hits = (pred_mask & gt_mask).sum(-1)
        n_pred, n_gt = pred_mask.sum(-1), gt_mask.sum(-1)
        precision = hits / np.maximum(n_pred, 1)
        recall = hits / np.maximum(n_gt, 1)
        denom = beta**2 * precision + recall
        f2 = np.where(denom > 0, (1 + beta**2) * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    f2 = np.asarray(f2, dtype=np.float64)

    weights = (1.0 + MAX_SALIENCY * gt_saliency) * valid
    wmse = (weights * (pred_scores - gt_saliency) ** 2).sum(-1) / np.maximum(weights.sum(-1), 1e-12)
    reward = lambda_rec * f2 + lambda_score / (1.0 + wmse)
    return np.where(pred_mask.any(-1), reward, 0.0)
