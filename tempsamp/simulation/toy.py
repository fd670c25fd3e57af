"""A seconds-fast toy of TempSamp-R1: the project's own algorithm core on a task without a video model.

Why this toy is not a bandit (docs/design method.md, "What a toy can and cannot show"): a tabular
policy per query just memorises the GT row and every GT-guided strategy reaches 100 mIoU. Here the
policy must *read evidence* and *generalise*:

- A "video" is ``n_bins`` frames of ``feature_dim``-d features over a ``duration``-second axis.
  Each video holds one target event (5-30 s) of one concept and ``distractors`` events of other
  concepts (anywhere, overlaps allowed). A frame's feature is the sum over events of
  (fraction of the frame the event covers) x (the event's concept vector), plus Gaussian noise.
- The query is the target concept's vector. The answer is a deterministic function of the evidence
  (the span where the queried concept is present), but noisy and mixed with distractors.
- The policy (``SpanPolicy``) is shared over all queries: a per-frame MLP reads each frame against
  the query, then an MLP over the whole time line gives logits over the start bin and the end bin.
  Training queries come from a fixed pool; the reported greedy mIoU is on HELD-OUT videos.
- The search space is large: ``n_bins`` = 128 start bins x 128 end bins (8,256 valid spans, end >= start;
  a sampled end before its start is a span with start > end, which scores IoU 0 as everywhere else).
  The initial policy is close to uniform, so on-policy samples rarely reach a high IoU.

One step: sample G-1 (start, end) decisions per query from the policy and append the GT row (G for
``grpo``), reward = ``temporal_iou``, advantages = ``group_advantages`` (the strategy), loss =
``grpo_loss`` with the two decisions as two "tokens" of a completion. One update per rollout
(rho = 1, the paper's setting).

Decisions (docs/decisions.md, "Toy"):
- The end head is not conditioned on the sampled start (a factorised policy): the answer is a
  deterministic function of the evidence, so the optimal policy needs no correlation between the two.
- beta = 0 by default (no KL): the reference would be the near-uniform initial policy, and a KL to it
  only slows every strategy alike. ``beta > 0`` uses a frozen copy of the initial policy.
- The GT row is the GT span rounded to the nearest bin edges (the answer "as the policy writes it");
  its reward is its IoU with the exact GT, like every other row (slightly below 1).
- The last layer starts at 1% of its default scale: a near-uniform start policy.
- Per seed, the task (concepts, videos), the policy's initial weights and the order of training
  queries are identical for every strategy (paired comparison); only the sampled decisions differ.
- The learning rate is one value for every strategy (``ToyConfig.lr``), not tuned per strategy.
- ``"sft"`` is a reference line outside the paper's ablation: only the GT row, advantage 1, i.e.
  plain likelihood training on the annotation, through the same ``grpo_loss``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from tempsamp.advantages import STRATEGIES, group_advantages
from tempsamp.loss import grpo_loss
from tempsamp.spans import temporal_iou

REFERENCE = "sft"  # plain likelihood on the GT row: a reference line, not a TempSamp strategy
TOY_STRATEGIES = (*STRATEGIES, REFERENCE)


@dataclass(frozen=True)
class ToyConfig:
    """Every knob of the toy. The same values are used for every strategy."""

    # the task
    n_bins: int = 128  # start bins = end bins = frames: 128 * 129 / 2 = 8,256 valid spans
    duration: float = 100.0  # seconds
    min_len: float = 5.0
    max_len: float = 30.0
    n_concepts: int = 16
    feature_dim: int = 8
    distractors: int = 2
    noise: float = 0.5  # std of the per-frame Gaussian noise; concept vectors have norm 1
    n_train: int = 512
    n_test: int = 256
    # the policy
    frame_hidden: int = 32
    frame_channels: int = 4
    head: str = "conv"  # "conv": local, shared over time; "mlp": over the whole flattened time line
    head_hidden: int = 32
    head_kernel: int = 5
    # RL
    steps: int = 150
    queries_per_step: int = 16
    group_size: int = 8  # G: G-1 sampled + 1 GT for TempSamp strategies, G sampled for grpo
    lr: float = 3e-3
    beta: float = 0.0
    anchor_tied: str = "joint"  # anchoring's rule for groups whose on-policy rewards tie (advantages.py)
    eval_every: int = 15
    train_eval: int = 64  # training videos scored greedily at each curve point (a memorisation check)


# ---------------------------------------------------------------------------------------- task


@dataclass
class ToySplit:
    frames: torch.Tensor  # [N, n_bins, feature_dim]
    queries: torch.Tensor  # [N, feature_dim]
    spans: np.ndarray  # [N, 2] GT (start, end) in seconds


@dataclass
class ToyTask:
    train: ToySplit
    test: ToySplit
    bin_seconds: float


def _coverage(span: torch.Tensor, n_bins: int, bin_seconds: float) -> torch.Tensor:
    """[N, n_bins]: the fraction of each frame's time bin that the span [N, 2] (seconds) covers."""
    left = torch.arange(n_bins, dtype=torch.float32) * bin_seconds
    inter = torch.minimum(span[:, 1:2], left + bin_seconds) - torch.maximum(span[:, 0:1], left)
    return inter.clamp(min=0.0) / bin_seconds


def _random_spans(n: int, cfg: ToyConfig, gen: torch.Generator) -> torch.Tensor:
    length = cfg.min_len + (cfg.max_len - cfg.min_len) * torch.rand(n, generator=gen)
    start = (cfg.duration - length) * torch.rand(n, generator=gen)
    return torch.stack([start, start + length], -1)


def _make_split(n: int, concepts: torch.Tensor, cfg: ToyConfig, gen: torch.Generator) -> ToySplit:
    bin_seconds = cfg.duration / cfg.n_bins
    k = concepts.shape[0]
    target = torch.randint(k, (n,), generator=gen)
    target_span = _random_spans(n, cfg, gen)
    frames = _coverage(target_span, cfg.n_bins, bin_seconds)[..., None] * concepts[target][:, None]
    for _ in range(cfg.distractors):
        # a different concept than the target: the policy must match frames against the query
        other = (target + 1 + torch.randint(k - 1, (n,), generator=gen)) % k
        cover = _coverage(_random_spans(n, cfg, gen), cfg.n_bins, bin_seconds)
        frames = frames + cover[..., None] * concepts[other][:, None]
    frames = frames + cfg.noise * torch.randn(frames.shape, generator=gen)
    return ToySplit(frames=frames, queries=concepts[target].clone(), spans=target_span.double().numpy())


def make_task(cfg: ToyConfig, seed: int) -> ToyTask:
    """The synthetic grounding task of one seed: a training pool and held-out videos."""
    if cfg.n_concepts < 2:
        raise ValueError(f"n_concepts must be >= 2 (distractors are other concepts), got {cfg.n_concepts}")
    if not 0 < cfg.min_len <= cfg.max_len <= cfg.duration:
        raise ValueError(f"need 0 < min_len <= max_len <= duration, got {cfg.min_len}, {cfg.max_len}, {cfg.duration}")
    gen = torch.Generator().manual_seed(10_000 + seed)
    concepts = torch.nn.functional.normalize(torch.randn(cfg.n_concepts, cfg.feature_dim, generator=gen), dim=-1)
    return ToyTask(
        train=_make_split(cfg.n_train, concepts, cfg, gen),
        test=_make_split(cfg.n_test, concepts, cfg, gen),
        bin_seconds=cfg.duration / cfg.n_bins,
    )


def bins_to_seconds(start_bin, end_bin, bin_seconds: float) -> np.ndarray:
    """[..., 2] spans in seconds: from the left edge of the start bin to the right edge of the end bin."""
    start = np.asarray(start_bin, dtype=np.float64) * bin_seconds
    end = (np.asarray(end_bin, dtype=np.float64) + 1.0) * bin_seconds
    return np.stack([start, end], -1)


def gt_bins(spans: np.ndarray, bin_seconds: float, n_bins: int) -> torch.Tensor:
    """[N, 2] (start_bin, end_bin) of the GT spans rounded to the nearest bin edges (at least one bin)."""
    start = np.clip(np.rint(spans[:, 0] / bin_seconds), 0, n_bins - 1)
    end = np.clip(np.rint(spans[:, 1] / bin_seconds) - 1, start, n_bins - 1)
    return torch.as_tensor(np.stack([start, end], -1), dtype=torch.long)


# -------------------------------------------------------------------------------------- policy


class SpanPolicy(nn.Module):
    """Frames [B, T, d] and query [B, d] -> (start logits [B, T], end logits [B, T]).

    Per frame, an MLP reads [frame, frame * query] (shared over time: "is the queried thing here?").
    The head turns that time line of readings into start and end logits (it must learn what an edge
    of the queried event looks like):
      "conv"  two 1-D convolutions over time (kernel ``head_kernel``): the same detector at every
              position, as a video model's weights are shared over frames.
      "mlp"   an MLP over the whole flattened time line: a separate detector per position, slower
              to learn and able to memorise the training pool.
    """

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        if cfg.head not in ("conv", "mlp"):
            raise ValueError(f"head must be 'conv' or 'mlp', not {cfg.head!r}")
        self.n_bins, self.head_kind = cfg.n_bins, cfg.head
        self.frame = nn.Sequential(
            nn.Linear(2 * cfg.feature_dim, cfg.frame_hidden), nn.Tanh(), nn.Linear(cfg.frame_hidden, cfg.frame_channels)
        )
        if cfg.head == "conv":
            pad = cfg.head_kernel // 2
            self.head = nn.Sequential(
                nn.Conv1d(cfg.frame_channels, cfg.head_hidden, cfg.head_kernel, padding=pad), nn.Tanh(),
                nn.Conv1d(cfg.head_hidden, 2, cfg.head_kernel, padding=pad),
            )
        else:
            self.head = nn.Sequential(
                nn.Linear(cfg.n_bins * cfg.frame_channels, cfg.head_hidden), nn.Tanh(),
                nn.Linear(cfg.head_hidden, 2 * cfg.n_bins),
            )
        with torch.no_grad():  # near-uniform initial policy
            self.head[-1].weight.mul_(0.01)
            self.head[-1].bias.zero_()

    def forward(self, frames: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = query[:, None, :].expand_as(frames)
        readings = self.frame(torch.cat([frames, frames * q], -1))  # [B, T, C]
        if self.head_kind == "conv":
            logits = self.head(readings.transpose(1, 2))  # [B, 2, T]
            return logits[:, 0], logits[:, 1]
        logits = self.head(readings.flatten(1))
        return logits[:, : self.n_bins], logits[:, self.n_bins :]


def make_policy(cfg: ToyConfig, seed: int) -> SpanPolicy:
    """The initial policy of a seed (identical for every strategy); the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SpanPolicy(cfg)


def decision_logprobs(start_logits, end_logits, decisions: torch.Tensor) -> torch.Tensor:
    """[B, G, 2] log-probs of the (start, end) decisions [B, G, 2]: two "tokens" per completion."""
    start = torch.log_softmax(start_logits, -1).gather(-1, decisions[..., 0])
    end = torch.log_softmax(end_logits, -1).gather(-1, decisions[..., 1])
    return torch.stack([start, end], -1)


@torch.no_grad()
def greedy_miou(policy: SpanPolicy, split: ToySplit, bin_seconds: float) -> float:
    """Mean IoU of the argmax (start, end) on a split (an end before the start scores 0)."""
    start_logits, end_logits = policy(split.frames, split.queries)
    pred = bins_to_seconds(start_logits.argmax(-1).numpy(), end_logits.argmax(-1).numpy(), bin_seconds)
    return float(temporal_iou(pred, split.spans).mean())


# ------------------------------------------------------------------------------------ training


def train_step(policy, optimizer, frames, queries, spans, strategy: str, cfg: ToyConfig, sample_gen, reference=None) -> dict:
    """One rollout + one update on a batch of queries. Returns the step's tensors and statistics.

    rollout: G-1 sampled decisions + the GT row (``grpo``: G sampled; ``sft``: the GT row only)
    -> rewards (IoU) -> advantages (``group_advantages``) -> ``grpo_loss`` -> optimizer step.
    """
    if strategy not in TOY_STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(TOY_STRATEGIES)}")
    b, g = frames.shape[0], cfg.group_size
    n_sampled = g if strategy == "grpo" else (0 if strategy == REFERENCE else g - 1)
    start_logits, end_logits = policy(frames, queries)

    sampled = torch.zeros(b, 0, 2, dtype=torch.long)
    if n_sampled:
        with torch.no_grad():
            start = torch.multinomial(torch.softmax(start_logits, -1), n_sampled, replacement=True, generator=sample_gen)
            end = torch.multinomial(torch.softmax(end_logits, -1), n_sampled, replacement=True, generator=sample_gen)
        sampled = torch.stack([start, end], -1)
    offpolicy = torch.zeros(b, n_sampled, dtype=torch.bool)
    decisions = sampled
    if strategy != "grpo":  # append the GT row (never overwrite a sample)
        gt = gt_bins(spans, cfg.duration / cfg.n_bins, cfg.n_bins)[:, None]
        decisions = torch.cat([sampled, gt], 1)
        offpolicy = torch.cat([offpolicy, torch.ones(b, 1, dtype=torch.bool)], 1)

    pred = bins_to_seconds(decisions[..., 0].numpy(), decisions[..., 1].numpy(), cfg.duration / cfg.n_bins)
    rewards = torch.as_tensor(temporal_iou(pred, spans[:, None, :]))  # [B, G'] float64
    if strategy == REFERENCE:
        advantages = torch.ones_like(rewards)
    else:
        advantages = group_advantages(rewards, offpolicy, strategy, anchor_tied=cfg.anchor_tied)

    logp = decision_logprobs(start_logits, end_logits, decisions).flatten(0, 1)  # [B*G', 2]
    ref_logp = None
    if reference is not None and cfg.beta != 0.0:
        with torch.no_grad():
            ref_logp = decision_logprobs(*reference(frames, queries), decisions).flatten(0, 1)
    loss, stats = grpo_loss(logp, advantages.flatten(), torch.ones_like(logp), ref_logp=ref_logp, beta=cfg.beta)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

    on = ~offpolicy
    on_rewards = rewards[:, : n_sampled]
    return {
        "rewards": rewards,
        "offpolicy": offpolicy,
        "advantages": advantages,
        "loss": float(loss.detach()),
        "kl": stats.kl,
        # the paper's "top-1 IoU reward": the best on-policy sample of each group, averaged
        "top1_iou": float(on_rewards.max(-1).values.mean()) if n_sampled else float("nan"),
        "onpolicy_iou": float(on_rewards.mean()) if n_sampled else float("nan"),
        "n_onpolicy": int(on.sum()),
        # groups whose GT row gets advantage 0 (they teach nothing about the annotation)
        "frac_gt_adv_zero": float((advantages[offpolicy] == 0).double().mean()) if bool(offpolicy.any()) else float("nan"),
    }


def run_toy(strategy: str, seed: int, cfg: ToyConfig | None = None, *, on_step=None, **overrides) -> dict:
    """Train one strategy from one seed; returns the learning curve and the final held-out mIoU.

    curve: one entry per ``eval_every`` steps (and step 0): step, greedy mIoU on held-out and
    training videos, and the mean top-1 / mean on-policy IoU of the rollouts since the last entry
    (NaN at step 0 and for ``sft``, which samples nothing).
    on_step(step, info): optional callback with ``train_step``'s dict (tests use it).
    """
    cfg = replace(cfg or ToyConfig(), **overrides)
    task = make_task(cfg, seed)
    policy = make_policy(cfg, seed)
    reference = copy.deepcopy(policy).requires_grad_(False) if cfg.beta != 0.0 else None
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    order_gen = torch.Generator().manual_seed(20_000 + seed)  # same query order for every strategy
    sample_gen = torch.Generator().manual_seed(30_000 + seed)

    def entry(step, window):
        return {
            "step": step,
            "heldout_miou": greedy_miou(policy, task.test, task.bin_seconds),
            "train_miou": greedy_miou(policy, train_probe, task.bin_seconds),
            "top1_iou": float(np.mean([w["top1_iou"] for w in window])) if window else float("nan"),
            "onpolicy_iou": float(np.mean([w["onpolicy_iou"] for w in window])) if window else float("nan"),
            "frac_gt_adv_zero": float(np.mean([w["frac_gt_adv_zero"] for w in window])) if window else float("nan"),
        }

    train_probe = ToySplit(
        task.train.frames[: cfg.train_eval], task.train.queries[: cfg.train_eval], task.train.spans[: cfg.train_eval]
    )
    curve = [entry(0, [])]
    window: list[dict] = []
    perm = torch.randperm(cfg.n_train, generator=order_gen)
    cursor = 0
    for step in range(1, cfg.steps + 1):
        if cursor + cfg.queries_per_step > cfg.n_train:  # a new epoch: a new permutation
            perm, cursor = torch.randperm(cfg.n_train, generator=order_gen), 0
        idx = perm[cursor : cursor + cfg.queries_per_step]
        cursor += cfg.queries_per_step
        info = train_step(
            policy, optimizer, task.train.frames[idx], task.train.queries[idx], task.train.spans[idx.numpy()],
            strategy, cfg, sample_gen, reference,
        )
        if on_step is not None:
            on_step(step, info)
        window.append(info)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve.append(entry(step, window))
            window = []
    return {
        "strategy": strategy,
        "seed": seed,
        "config": asdict(cfg),
        "curve": curve,
        "final_miou": curve[-1]["heldout_miou"],
        "final_top1_iou": curve[-1]["top1_iou"],
        # area under the held-out curve (mean over the curve's points): learning speed in one number
        "mean_curve_miou": float(np.mean([c["heldout_miou"] for c in curve])),
    }


def compare(strategies, seeds, cfg: ToyConfig | None = None, *, progress=None, **overrides) -> dict:
    """run_toy for every (strategy, seed): {strategy: [result per seed]}."""
    out: dict[str, list[dict]] = {}
    for strategy in strategies:
        out[strategy] = []
        for seed in seeds:
            out[strategy].append(run_toy(strategy, seed, cfg, **overrides))
            if progress is not None:
                progress(strategy, seed, out[strategy][-1])
    return out


# ------------------------------------------------------------------------------------- reports


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summary_table(results: dict, baseline: str = "grpo") -> str:
    """Markdown table: final held-out mIoU (mean ± sample std over seeds, and median: outcomes can be
    bimodal), the mean of the held-out curve (learning speed), the final top-1 on-policy IoU, and
    the paired difference to ``baseline`` (same seed), in %."""
    lines = [
        "| strategy | held-out mIoU (final) | median | held-out mIoU (curve mean) | top-1 on-policy IoU (final) "
        f"| final - {baseline} (paired) | seeds > {baseline} |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {r["seed"]: r["final_miou"] for r in results.get(baseline, [])}
    for strategy, runs in results.items():
        final = _mean_std([100 * r["final_miou"] for r in runs])
        area = _mean_std([100 * r["mean_curve_miou"] for r in runs])
        top1_values = [100 * r["final_top1_iou"] for r in runs if not math.isnan(r["final_top1_iou"])]
        top1 = f"{_fmt(_mean_std(top1_values))}" if top1_values else "n/a"
        diffs = [100 * (r["final_miou"] - base[r["seed"]]) for r in runs if r["seed"] in base]
        diff = _fmt(_mean_std(diffs), signed=True) if diffs and strategy != baseline else "-"
        wins = f"{sum(d > 0 for d in diffs)}/{len(diffs)}" if diffs and strategy != baseline else "-"
        median = float(np.median([100 * r["final_miou"] for r in runs]))
        lines.append(f"| {strategy} | {_fmt(final)} | {median:.1f} | {_fmt(area)} | {top1} | {diff} | {wins} |")
    return "\n".join(lines)


def _fmt(mean_std, signed: bool = False) -> str:
    m, s = mean_std
    return f"{m:+.1f} ± {s:.1f}" if signed else f"{m:.1f} ± {s:.1f}"


def curves_text(results: dict, key: str = "heldout_miou") -> str:
    """One row per strategy: ``key`` (in %) at every curve point, averaged over seeds."""
    strategies = list(results)
    steps = [c["step"] for c in results[strategies[0]][0]["curve"]]
    width = max(len(s) for s in strategies)
    lines = [f"{'step':<{width}} " + " ".join(f"{s:>5d}" for s in steps)]
    for strategy in strategies:
        values = np.array([[c[key] for c in r["curve"]] for r in results[strategy]], dtype=np.float64)
        mean = values.mean(0)  # NaN where nothing was sampled (step 0, sft): printed as "-"
        lines.append(f"{strategy:<{width}} " + " ".join("    -" if np.isnan(v) else f"{100 * v:5.1f}" for v in mean))
    return "\n".join(lines)
