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


class QueryStream:
    """The data order as a cursor over ``step_queries``' sequence (per-epoch seeded permutations).

    Without skips, step s takes exactly ``step_queries(n, s, queries_per_step, seed)``. Online
    filtering passes over some queries and dynamic sampling takes more than queries_per_step, so
    the run keeps the cursor (saved in each checkpoint: a resumed run continues exactly). Every
    process holds the same stream and takes the same queries (the skips are decided on values all
    processes share), then keeps its shard.
    """

    def __init__(self, n_examples: int, seed: int, cursor: int = 0):
        if n_examples == 0:
            raise ValueError("no training examples")
        self.n, self.seed, self.cursor = n_examples, seed, int(cursor)
        self._epoch, self._perm = None, None

    def index_at(self, k: int) -> int:
        epoch, pos = divmod(k, self.n)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return int(self._perm[pos])

    def take(self, count: int, skip=None) -> tuple[list[int], list[int]]:
        """(the next ``count`` indices, the indices passed over because ``skip(index)`` said so).

        After n_examples skips in one call the rest are taken anyway: a filter that drops every
        query cannot stall the run."""
        taken, skipped = [], []
        while len(taken) < count:
            index = self.index_at(self.cursor)
            self.cursor += 1
            if skip is not None and len(skipped) < self.n and skip(index):
                skipped.append(index)
                continue
            taken.append(index)
        return taken, skipped


def shard(items: list, rank: int, world: int) -> list:
    """This process's share: items rank, rank + world, ... (groups stay whole)."""
    return items[rank::world]


def sample_seed(seed: int, step: int, slot: int) -> int:
    """Seed of the generation RNG for one query of one step: independent of process layout."""
    digest = hashlib.sha256(f"{seed}:{step}:{slot}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
