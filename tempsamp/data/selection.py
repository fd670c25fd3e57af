"""Which training queries to use, from a difficulty file (tempsamp.data.difficulty).

Offline, before training (``select`` in the recipe, ``tempsamp data select`` on the command line):
- ``stratified``: N queries spread evenly over ``select_bins`` equal-width bins of mean IoU
  (a bin with fewer queries than its share gives them all, the rest goes to the other bins), so
  every difficulty is represented whatever the start model's skew;
- ``gaussian``: N queries drawn without replacement with weight exp(-(m - mu)^2 / 2 sigma^2) of
  their mean IoU m (TimeLens' sampling around a target difficulty).
Both are seeded and return the queries in file order. Queries absent from the difficulty file (or
whose video failed there) are never selected; the count is said.

Online, during training (``online_filter_k``): a query whose last k visits were all *solved*
(mean on-policy IoU >= ``online_filter_iou``) is skipped the next ``online_filter_skip`` times the
data order reaches it (with a shuffled pass over the data per epoch: about that many epochs),
as Time-R1 drops what the policy already solves; then it comes back with a fresh history. The
filter's state is a plain dict, saved in every checkpoint, so a resumed run skips exactly the same.
"""

from __future__ import annotations

import numpy as np

from tempsamp.errors import UserError

METHODS = ("all", "stratified", "gaussian")


def stratified(means: dict[str, float], n: int, bins: int = 10, seed: int = 0) -> list[str]:
    """qids of N queries spread evenly over equal-width bins of mean IoU in [0, 1]."""
    rng = np.random.default_rng([seed, 1])
    qids = sorted(means)
    strata = [[] for _ in range(bins)]
    for q in qids:
        strata[min(bins - 1, max(0, int(float(means[q]) * bins)))].append(q)
    for s in strata:
        rng.shuffle(s)
    quota, target = [0] * bins, min(n, len(qids))
    order = [int(b) for b in rng.permutation(bins)]  # which bins get the odd ones out of the last round
    while sum(quota) < target:  # one query per non-exhausted bin per round: even shares, spill-over to the rest
        for b in order:
            if sum(quota) < target and quota[b] < len(strata[b]):
                quota[b] += 1
    return [q for b in range(bins) for q in strata[b][: quota[b]]]


def gaussian(means: dict[str, float], n: int, mu: float = 0.5, sigma: float = 0.15, seed: int = 0) -> list[str]:
    """qids of N queries drawn without replacement, weighted by a Gaussian of mean IoU around mu."""
    if sigma <= 0:
        raise UserError(f"select_sigma: {sigma} must be > 0")
    rng = np.random.default_rng([seed, 2])
    qids = sorted(means)
    m = np.array([float(means[q]) for q in qids])
    w = np.exp(-((m - mu) ** 2) / (2 * sigma**2)) + 1e-12  # never exactly 0: N can always be met
    k = min(n, len(qids))
    picked = rng.choice(len(qids), size=k, replace=False, p=w / w.sum()) if k else []
    return [qids[i] for i in sorted(picked)]


def select_examples(examples: list, difficulty: dict[str, dict], method: str, n: int, *, bins: int = 10,
                    mu: float = 0.5, sigma: float = 0.15, seed: int = 0, say=print) -> list:
    """The examples ``method`` keeps (file order); ``difficulty``: tempsamp.data.difficulty.read_difficulty."""
    if method not in METHODS:
        raise UserError(f"select: {method!r} is not one of {', '.join(METHODS)}")
    if method == "all":
        return list(examples)
    if n < 1:
        raise UserError(f"select_n: {n} queries; a selection needs select_n >= 1")
    means = {ex.qid: float(difficulty[ex.qid]["mean"]) for ex in examples if ex.qid in difficulty}
    missing = len(examples) - len(means)
    if not means:
        raise UserError("select: none of the training queries is in the difficulty file (another annotation file?)")
    qids = stratified(means, n, bins, seed) if method == "stratified" else gaussian(means, n, mu, sigma, seed)
    keep = set(qids)
    chosen = [ex for ex in examples if ex.qid in keep]
    say(f"select {method}: {len(chosen)} of {len(examples)} queries"
        + (f" ({missing} without difficulty figures left out)" if missing else "")
        + (f"; asked for {n}, only {len(means)} have figures" if n > len(means) else ""))
    return chosen


class OnlineFilter:
    """Time-R1-style filtering: skip a query solved in its last k visits, for its next ``skip`` turns."""

    def __init__(self, k: int, solved_iou: float = 0.7, skip: int = 1):
        self.k, self.solved_iou, self.skip_turns = int(k), float(solved_iou), int(skip)
        self.history: dict[str, list[int]] = {}  # qid -> last k visits, 1 = solved
        self.cooldown: dict[str, int] = {}  # qid -> turns still to skip
        self.dropped = 0  # skips so far (logged)

    @property
    def enabled(self) -> bool:
        return self.k > 0

    def skip(self, qid: str) -> bool:
        """Whether to pass over ``qid`` now (each call on a cooling query uses one of its turns)."""
        left = self.cooldown.get(qid, 0)
        if left <= 0:
            return False
        if left == 1:
            del self.cooldown[qid]
        else:
            self.cooldown[qid] = left - 1
        self.dropped += 1
        return True

    def visit(self, qid: str, onpolicy_ious) -> None:
        """Record one training visit: solved when the on-policy samples' mean IoU reaches solved_iou."""
        if not self.enabled:
            return
        solved = int(float(np.mean(onpolicy_ious)) >= self.solved_iou) if len(onpolicy_ious) else 0
        hist = (self.history.get(qid, []) + [solved])[-self.k:]
        if len(hist) == self.k and all(hist):
            self.cooldown[qid] = self.skip_turns
            self.history.pop(qid, None)
        else:
            self.history[qid] = hist

    def state_dict(self) -> dict:
        return {"history": self.history, "cooldown": self.cooldown, "dropped": self.dropped}

    def load_state_dict(self, state: dict) -> None:
        self.history = {str(k): list(v) for k, v in state.get("history", {}).items()}
        self.cooldown = {str(k): int(v) for k, v in state.get("cooldown", {}).items()}
        self.dropped = int(state.get("dropped", 0))
