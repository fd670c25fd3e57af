"""Which queries an optimizer step trains on: a pure function of (seed, step), so a resumed run
continues exactly, and processes split whole groups by index (never by position in a batch).
"""

from __future__ import annotations

import hashlib

import numpy as np


def step_queries(n_examples: int, step: int, queries_per_step: int, seed: int) -> list[int]:
    """Global example indices for ``step``: consecutive slices of per-epoch seeded permutations."""
    if n_examples == 0:
        raise ValueError("no training examples")
    out = []
    for k in range(step * queries_per_step, (step + 1) * queries_per_step):
        epoch, pos = divmod(k, n_examples)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n_examples)[pos]))
    return out


def shard(items: list, rank: int, world: int) -> list:
    """This process's share: items rank, rank + world, ... (groups stay whole)."""
    return items[rank::world]


def sample_seed(seed: int, step: int, slot: int) -> int:
    """Seed of the generation RNG for one query of one step: independent of process layout."""
    digest = hashlib.sha256(f"{seed}:{step}:{slot}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
