"""Seeded subsets of examples: few-shot selection and train/val/test splits with disjoint videos.

Both keep the input's order in their output (the trainer shuffles on its own, per epoch) and are
pure functions of (examples, parameters, seed): same input and seed, same subset.

few_shot ("stratified by video", the paper's 10% experiment). Decision: the strata are the videos.
With ``unit="query"`` (default) each video contributes its share of queries, ``fraction x its
query count``, rounded up or down so the total is exactly ``round(fraction x N)`` (systematic
rounding over a seeded order of videos; at least one query). On Charades-STA (~2.3 queries per
video) a 10% subset thus holds ~1 query from each of ~10x more videos than picking whole videos
would: the fewest queries covering the most visual variety, and no video over-represented.
``unit="video"`` instead keeps whole videos (all their queries), picked in a seeded order until
the fraction of queries is reached; use it when the subset must share no video with the rest.
"""

from __future__ import annotations

import numpy as np

from tempsamp.data.example import Example


def few_shot(examples: list[Example], fraction: float, seed: int = 0, *, unit: str = "query") -> list[Example]:
    """A seeded ``fraction`` of the examples, stratified by video (see the module docstring)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"few_shot: fraction must be in (0, 1], got {fraction}")
    if unit not in ("query", "video"):
        raise ValueError(f"few_shot: unit must be 'query' or 'video', got {unit!r}")
    if fraction == 1.0 or not examples:
        return list(examples)
    groups = list(_by_video(examples).values())
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(groups))
    sizes = np.array([len(groups[g]) for g in order])
    target = max(1, int(np.floor(fraction * len(examples) + 0.5)))
    chosen: list[int] = []
    if unit == "video":
        # whole videos in the seeded order until the target is reached
        n_videos = int(np.searchsorted(np.cumsum(sizes), target)) + 1
        for g in order[:n_videos]:
            chosen += groups[g]
    else:
        # systematic rounding: each video takes floor or ceil of fraction x size, totals exact
        edges = np.floor(np.concatenate([[0.0], np.cumsum(fraction * sizes)]) + 0.5).astype(int)
        take = np.diff(edges)
        _settle(take, sizes, target)
        for g, k in zip(order, take):
            if k > 0:
                members = groups[g]
                chosen += [members[i] for i in rng.choice(len(members), size=int(k), replace=False)]
    return [examples[i] for i in sorted(chosen)]


def split_by_video(examples: list[Example], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> tuple[list[Example], ...]:
    """Split into len(fractions) parts (train, val, test by default) that share no video.

    ``fractions`` are shares of *videos* (a video's queries stay together); they must sum to 1.
    Video counts use largest-remainder rounding, and each non-zero fraction gets at least one
    video when there are enough videos.
    """
    fractions = np.asarray(fractions, dtype=float)
    if fractions.ndim != 1 or fractions.size == 0 or (fractions < 0).any() or abs(fractions.sum() - 1.0) > 1e-6:
        raise ValueError(f"split_by_video: fractions must be non-negative and sum to 1, got {fractions.tolist()}")
    groups = list(_by_video(examples).values())
    counts = _allocate(len(groups), fractions)
    order = np.random.default_rng(seed).permutation(len(groups))
    parts, start = [], 0
    for count in counts:
        members = sorted(i for g in order[start:start + count] for i in groups[g])
        parts.append([examples[i] for i in members])
        start += count
    return tuple(parts)


def _settle(take: np.ndarray, sizes: np.ndarray, target: int) -> None:
    """Make take sum to target (it can be off by one: target is at least 1, float rounding)."""
    for g in range(len(take)):
        if take.sum() == target:
            return
        if take.sum() < target and take[g] < sizes[g]:
            take[g] += 1
        elif take.sum() > target and take[g] > 0:
            take[g] -= 1


def _allocate(n: int, fractions: np.ndarray) -> list[int]:
    """Integer counts summing to n, close to n x fractions, at least 1 per non-zero share if possible."""
    exact = n * fractions
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero((fractions > 0) & (counts == 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts.tolist()


def _by_video(examples: list[Example]) -> dict[str, list[int]]:
    """video id -> indices of its examples, videos in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.video_id, []).append(i)
    return groups
