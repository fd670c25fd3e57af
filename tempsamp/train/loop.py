"""The TempSamp-R1 training recipe: rollout -> append the GT -> score -> advantages -> loss -> step.

One readable function, ``train(cfg)``. Every algorithmic piece is a call into the library
(tempsamp.advantages, tempsamp.loss, tempsamp.prompts); everything Qwen-specific is a call into the
model adapter (tempsamp.models.qwen_vl); how the model is spread over processes (``distributed``:
DDP, FSDP2, DeepSpeed ZeRO) is a call into tempsamp.train.parallel. The same code runs on a CPU
(gloo), one GPU, or many: each process trains on whole groups, chosen by index.

Across processes (tempsamp.train.schedule): a group's G rows never straddle processes, so its
advantages are computed on the full group where it was sampled; the off-policy row is known by its
flag (``Group.offpolicy``), never by its position; the loss is normalised by the token count of the
whole step over all processes; every decision that changes control flow (skip a step) is taken on
gathered values, so all processes take it together; and the logged scalars are computed once, from
every process's groups gathered (each group counted once, in slot order).

Uneven work: under FSDP2 and ZeRO-3 every forward is a collective, so every process runs the same
sequence of them whatever its number of usable groups (any queries_per_step with any number of
processes; an unreadable video on one process): one generate call per step (a process without a
usable query samples a blank stand-in video), decoding in step (``synced_gpus``), and as many
log-prob forwards and backwards as the busiest process, the extra ones on a stand-in group with loss
weight 0 (``update``'s ``filler``). The gradient and the loss's normaliser come from real groups
only, so the step is exactly what one process computes on the same usable groups.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tempsamp.advantages import group_advantages, shape_rewards
from tempsamp.loss import Mismatch, grpo_loss, logprob_mismatch, truncated_is_weights
from tempsamp.models import qwen_vl
from tempsamp.presets import get_preset
from tempsamp.prompts import COT, build_offpolicy_completion, prompt_text
from tempsamp.errors import RunStopped, UserError
from tempsamp.train import guards, runlock
from tempsamp.train.checkpoint import (
    begin_checkpoint, checkpoints, commit_checkpoint, export_model, latest_checkpoint, load_checkpoint, load_model_weights,
    save_rng,
)
from tempsamp.train.config import TrainConfig
from tempsamp.train.logger import RunLogger
from tempsamp.train.rollout_engine import RolloutRequest
from tempsamp.train.schedule import QueryStream, sample_seed, shard
from tempsamp.threads import set_threads
from tempsamp.train.scoring import gt_clip_arrays, score_group


@dataclass
class Group:
    """One query's G completions, the off-policy row flagged (not positioned)."""

    example: object
    prompt: dict
    completion_ids: list
    texts: list
    offpolicy: list
    generated_tokens: int = 0
    # per row: None (every completion token trains) or a 0/1 list over its tokens (the GT row's
    # think sentence masked out in CoT stages, cfg.gt_think_loss)
    loss_masks: list = field(default_factory=list)
    # per row: the sampler's log-prob of each drawn token (vLLM), or None (the GT row; transformers,
    # which samples with the policy itself)
    sampler_logprobs: list = field(default_factory=list)


@dataclass
class Counters:
    """Faults and totals carried across resumes (saved in state.json).

    Each process counts its own step's faults in a fresh Counters; they are summed over processes
    (``add``) into the run's totals, which are therefore the same on every process.
    """

    bad_videos: int = 0
    nan_rewards: int = 0
    empty_completions: int = 0
    parse_failures: int = 0
    skipped_steps: int = 0
    skipped_no_video: int = 0  # the two causes of skipped_steps
    skipped_non_finite: int = 0
    generated_tokens: int = 0  # sampled completion tokens so far, dropped groups included (max_generated_tokens)
    loss_spikes: int = 0
    losses: list = field(default_factory=list)  # recent losses, for spike detection

    FAULTS = ("bad_videos", "nan_rewards", "empty_completions", "parse_failures")

    def add(self, step_faults: list[dict]) -> None:
        for faults in step_faults:
            for name in self.FAULTS:
                setattr(self, name, getattr(self, name) + faults[name])

    def faults(self) -> dict:
        return {name: getattr(self, name) for name in self.FAULTS}


# ---------------------------------------------------------------- set-up


def load_training_examples(cfg: TrainConfig, say=print):
    from tempsamp.data.readers import load_examples
    from tempsamp.data.splits import few_shot

    files = cfg.train_annotations if isinstance(cfg.train_annotations, list) else [cfg.train_annotations]
    examples = []
    for path in files:
        found = load_examples(path, cfg.dataset, durations=cfg.durations, videos=cfg.videos, lenient=cfg.lenient_annotations)
        if not found:
            raise UserError(f"{path}: no queries in the annotation file (train_annotations)")
        examples += found
    if cfg.few_shot_fraction < 1.0:
        examples = few_shot(examples, cfg.few_shot_fraction, seed=cfg.seed)
    if cfg.select != "all":
        from tempsamp.data.difficulty import read_difficulty
        from tempsamp.data.selection import select_examples

        examples = select_examples(examples, read_difficulty(cfg.difficulty_file), cfg.select, cfg.select_n,
                                   bins=cfg.select_bins, mu=cfg.select_mu, sigma=cfg.select_sigma, seed=cfg.seed, say=say)
    return examples


def refill_owners(ties: list[list], kept: list[int], new_slots: list[int]) -> dict[int, int]:
    """Which process samples each refill slot: the one holding the fewest kept groups (lowest rank on
    a tie), so the refills go where the dropped groups were and, unless the refill cap is reached,
    every process ends with a kept group: the queries trained on do not depend on the layout.
    ``ties``: per process, its (slot, tied) pairs (gathered, the same on every process)."""
    keep = set(kept)
    load = [sum(1 for slot, _ in rank_ties if slot in keep) for rank_ties in ties]
    owners = {}
    for slot in new_slots:
        rank = min(range(len(load)), key=lambda r: (load[r], r))
        owners[slot] = rank
        load[rank] += 1
    return owners


def onpolicy_tied(cfg, group: Group, cot: bool) -> bool:
    """Dynamic sampling's test: do the group's on-policy rewards (task + format, as the advantages see
    them) all tie? The GT row is not read: a group of identical samples is dropped whatever the GT
    row would teach, as DAPO's filter sees only what the policy sampled."""
    s = score_group(group.example, group.texts, cot, lambda_rec=cfg.lambda_rec, lambda_score=cfg.lambda_score,
                    highlight_f2=cfg.highlight_f2)
    on = ~np.array(group.offpolicy)
    rewards = s.task[on] + (s.format[on] * cfg.format_weight if cot else 0.0)
    return bool(len(rewards) and np.ptp(rewards) == 0.0)


def resolve_model_path(name: str) -> str:
    from tempsamp.models.tiny import NAMED_SPECS, ensure_tiny_model

    if name in NAMED_SPECS:  # "tiny", or "tiny-vllm" (head size 32, for vLLM's CPU attention)
        return str(ensure_tiny_model(spec=NAMED_SPECS[name]))
    from tempsamp.evaluation.run_cli import check_model_folder

    check_model_folder(name, "model=")
    return name


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps)
        return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.learning_rate


# ---------------------------------------------------------------- the four stages of a step


def prepare_query(cfg, processor, device, example, mode: str, seed: int, load_frames) -> RolloutRequest:
    """The data phase of one query: its frames and prompt (raises on an unreadable video)."""
    video = load_frames(example)
    preset = get_preset(cfg.input_preset)
    text = prompt_text(example.query, mode, duration=example.duration, task=example.task,
                       template=preset.template(mode, example.task))
    prompt = qwen_vl.build_prompt(processor, text, video.frames, video.fps, system_prompt=preset.system_prompt,
                                  video_first=preset.video_first, device=device, source_frames=video.source_frames())
    n_sampled = cfg.num_generations - (1 if cfg.uses_offpolicy else 0)
    return RolloutRequest(prompt, video.frames, video.fps, text, n_sampled, seed)


def rollout_step(cfg, engine, processor, examples, requests: list[RolloutRequest], mode: str) -> list[Group]:
    """Every query's G-1 completions (G for plain GRPO) in ONE engine call, plus each GT written as an answer."""
    groups = []
    for example, request, sampled in zip(examples, requests, engine.sample_batch(requests)):
        ids, texts = list(sampled[0]), list(sampled[1])
        offpolicy = [False] * len(ids)
        n_sampled = len(ids)
        loss_masks = [None] * n_sampled
        given = sampled[2] if len(sampled) > 2 else None  # the engine's log-probs, when it gives them
        sampler_logprobs = list(given) if given is not None else [None] * n_sampled
        if cfg.uses_offpolicy and example is not None:  # None: a blank stand-in (blank_request), no GT
            gt_text = offpolicy_text(example, mode, get_preset(cfg.input_preset).decimals)
            ids.append(qwen_vl.completion_ids(processor, gt_text))
            texts.append(gt_text)
            offpolicy.append(True)
            loss_masks.append(gt_loss_mask(cfg, processor, gt_text, mode))
            sampler_logprobs.append(None)  # nobody sampled the GT
        groups.append(Group(example, request.prompt_inputs, ids, texts, offpolicy,
                            generated_tokens=sum(len(i) for i in ids[:n_sampled]), loss_masks=loss_masks,
                            sampler_logprobs=sampler_logprobs))
    return groups


def blank_request(cfg, processor, device, mode: str) -> RolloutRequest:
    """A stand-in query for a process with no usable video in a step: two black frames at the
    smallest pixel budget. It is sampled and passed forward and backward like a real query (so the
    process takes part in every collective) but its loss weight is 0: it changes nothing."""
    factor = qwen_vl.frame_factor(processor)
    side = factor * max(2, math.ceil(math.sqrt(cfg.min_pixels) / factor))
    frames = np.zeros((2, side, side, 3), np.uint8)
    text = prompt_text("(no video)", mode, duration=2 / cfg.fps)
    prompt = qwen_vl.build_prompt(processor, text, frames, cfg.fps, device=device)
    n_sampled = cfg.num_generations - (1 if cfg.uses_offpolicy else 0)
    return RolloutRequest(prompt, frames, cfg.fps, text, n_sampled, 0)


def rollout(cfg, engine, processor, device, example, mode: str, seed: int, load_frames) -> Group:
    """One query alone (the same samples as in any batch: they depend on its seed only)."""
    request = prepare_query(cfg, processor, device, example, mode, seed, load_frames)
    return rollout_step(cfg, engine, processor, [example], [request], mode)[0]


def gt_loss_mask(cfg, processor, gt_text: str, mode: str):
    """CoT stages with gt_think_loss=mask: the GT row's think *sentence* leaves the loss (it is the same
    for every query; pushed each step with the group's largest advantage it invites the policy's
    reasoning to collapse into it). Its tags and answer still train, so the format is still taught."""
    if mode != COT or cfg.gt_think_loss != "mask" or "</think>" not in gt_text:
        return None
    start = gt_text.index("<think>") + len("<think>")
    return qwen_vl.completion_loss_mask(processor, gt_text, (start, gt_text.index("</think>")))


def loss_mask(completion_mask: torch.Tensor, group: Group) -> torch.Tensor:
    """The tokens the loss counts: the completion mask, less each row's masked-out tokens."""
    mask = completion_mask.clone()
    for row, row_mask in enumerate(group.loss_masks):
        if row_mask is not None:
            mask[row, : len(row_mask)] *= torch.tensor(row_mask, dtype=mask.dtype, device=mask.device)
    return mask


def sampler_logprob_tensor(group: Group, like: torch.Tensor) -> torch.Tensor | None:
    """The sampler's log-probs as [G, L] beside the learner's ``like`` (NaN where none: the GT row,
    padding, a stop token the engine did not score); None when the engine gave none at all."""
    if all(row is None for row in group.sampler_logprobs):
        return None
    out = torch.full(like.shape, float("nan"), dtype=like.dtype, device=like.device)
    for row, values in enumerate(group.sampler_logprobs):
        if values is not None:
            values = values[: like.shape[1]]
            out[row, : len(values)] = torch.tensor(values, dtype=like.dtype, device=like.device)
    return out


def pack_groups(groups: list[Group], rows_per_forward: int) -> list[list[int]]:
    """Group indices per forward, in order: whole groups while they fit in ``rows_per_forward``
    rows (a group never splits; one larger than the budget goes alone; 0 = one group per forward)."""
    forwards: list[list[int]] = []
    rows = 0
    for i, g in enumerate(groups):
        if forwards and rows + len(g.completion_ids) <= rows_per_forward:
            forwards[-1].append(i)
            rows += len(g.completion_ids)
        else:
            forwards.append([i])
            rows = len(g.completion_ids)
    return forwards


def offpolicy_text(example, mode: str, decimals: int = 1) -> str:
    """The GT completion, times written with the preset's precision (the peers ask for two decimals)."""
    if example.task == "highlights":
        windows = list(example.spans)
        _, saliency = gt_clip_arrays(example)
        scores = []
        for s, e in windows:  # a window's score: mean saliency of its clips, on the 0-4 scale
            clips = saliency[int(s // 2): max(int(s // 2) + 1, int(math.ceil(e / 2)))]
            scores.append(float(clips.mean() * 4) if len(clips) else 4.0)
        return build_offpolicy_completion(windows, mode, scores=scores)
    return build_offpolicy_completion(example.span, mode, decimals=decimals)


def score(cfg, groups: list[Group], cot: bool, counters: Counters):
    """``counters`` receives this process's parse failures, empty completions and NaN rewards."""
    """Rewards [groups, G] (task and format) and the off-policy mask, plus per-group scores for logging."""
    scores = [score_group(g.example, g.texts, cot, lambda_rec=cfg.lambda_rec, lambda_score=cfg.lambda_score,
                          highlight_f2=cfg.highlight_f2) for g in groups]
    for g, s in zip(groups, scores):
        on = ~np.array(g.offpolicy)
        counters.nan_rewards += s.nan_rewards
        counters.parse_failures += int((~s.parsed & on).sum())
        counters.empty_completions += sum(1 for t, o in zip(g.texts, on) if o and not t.strip())
    task = torch.tensor(np.stack([s.task for s in scores]))
    fmt = torch.tensor(np.stack([s.format for s in scores])) * (cfg.format_weight if cot else 0.0)
    off = torch.tensor([g.offpolicy for g in groups])
    return task, fmt, off, scores


def advantages(cfg, task, fmt, off):
    return group_advantages(
        task, off, cfg.strategy, bonus=fmt, std=cfg.adv_std, eps=cfg.adv_eps, lambda_off=cfg.lambda_off,
        offpolicy_scale=cfg.offpolicy_scale, tau=cfg.tau, alpha1=cfg.alpha1, alpha2=cfg.alpha2, anchor_tied=cfg.anchor_tied,
    )


def update(cfg, model, ref_model, groups, adv, parallel, pad_id, filler: Group | None = None):
    """Clipped-loss updates on the rollout batch; every log-prob from a forward pass with the video.

    Each forward holds one group, or as many whole groups as fit in ``cfg.rows_per_forward`` rows;
    gradients accumulate over the forwards and are exchanged on the last one. The loss and its
    statistics are computed per group, as if each were its own micro-batch, so packing changes
    only how many rows one forward carries.
    Every process runs as many forwards (and backwards) as the busiest one: the missing ones carry
    ``filler`` (a group already at hand, or a blank stand-in) with loss weight 0, so the
    collectives of sharded weights stay in step and the gradient is that of the real groups.
    Returns (UpdateLog, whether the step was applied). A step whose loss or gradients are not
    finite on any process is skipped by all (gradients zeroed), never applied.
    """
    forwards = pack_groups(groups, cfg.rows_per_forward)
    batches = [qwen_vl.groups_batch([groups[i].prompt for i in f], [groups[i].completion_ids for i in f], pad_id)
               for f in forwards]
    n_fill = max(parallel.gather_object(len(forwards))) - len(forwards)
    fill_batch = qwen_vl.groups_batch([filler.prompt], [filler.completion_ids], pad_id) if n_fill else None
    completion_masks = [m for b in batches for m in qwen_vl.split_groups(b["completion_mask"], b)]  # per group
    masks = [loss_mask(m, g) for m, g in zip(completion_masks, groups)]  # padding (and masked GT think tokens) excluded
    # Token-mean over the whole step, across processes: every micro-batch divides by the same count.
    # Divided by the number of processes because DDP, FSDP and ZeRO average (not sum) the
    # processes' gradients.
    if cfg.aggregation == "sequence_mean":
        local_count = float(sum(len(g.texts) for g in groups))
    else:
        local_count = float(sum(m.sum() for m in masks))
    normalizer = parallel.sum(local_count) / parallel.world

    def per_group(logprobs_of_batch):  # one forward per batch, cut back into per-group [G, L_group]
        out = [lp for b in batches for lp in qwen_vl.split_groups(logprobs_of_batch(b), b)]
        for _ in range(n_fill):  # the filler forwards: in step with the busiest process, results unused
            logprobs_of_batch(fill_batch)
        return out

    log = UpdateLog()
    t0 = time.perf_counter()
    with torch.no_grad():
        # every log-prob at the sampling temperature, the reference's too (as TRL does): otherwise
        # KL to an exact copy of the policy is not 0 at T != 1
        ref = per_group(lambda b: reference_logprobs(ref_model, model, b, cfg.temperature)) if cfg.beta else [None] * len(groups)
        old = per_group(lambda b: qwen_vl.completion_logprobs(model, b, temperature=cfg.temperature)) if cfg.updates_per_rollout > 1 else [None] * len(groups)
    log.seconds["reference"] = time.perf_counter() - t0  # with the old-policy pass when updates_per_rollout > 1

    applied = True
    for pass_index in range(cfg.updates_per_rollout):
        t0 = time.perf_counter()
        parallel.zero_grad()
        pass_loss = 0.0
        for k, (f, b) in enumerate(zip(forwards, batches)):
            with parallel.micro_batch(last=k == len(batches) - 1 and not n_fill):
                logp_b, entropy_b = qwen_vl.completion_logprobs(model, b, temperature=cfg.temperature, with_entropy=True)
                losses = []
                for i, logp, entropy in zip(f, qwen_vl.split_groups(logp_b, b), qwen_vl.split_groups(entropy_b, b)):
                    # Sampler/learner mismatch, against the learner's log-probs before the update
                    # (pi_old: the weights the sampler was given), on the on-policy rows.
                    offpolicy = torch.tensor(groups[i].offpolicy, device=logp.device)
                    learner_old = old[i] if old[i] is not None else logp.detach()
                    sampler = sampler_logprob_tensor(groups[i], learner_old)
                    weights = None
                    if sampler is not None:
                        if pass_index == 0:
                            log.mismatch = log.mismatch.add(
                                logprob_mismatch(learner_old, sampler, completion_masks[i].to(logp.device), offpolicy))
                        if cfg.tis_cap is not None:
                            weights = truncated_is_weights(learner_old, sampler, cfg.tis_cap, offpolicy)
                    loss, stats = grpo_loss(
                        logp, adv[i].to(logp.device), masks[i].to(logp.device), old_logp=old[i], ref_logp=ref[i], beta=cfg.beta,
                        clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high, aggregation=cfg.aggregation, normalizer=normalizer,
                        offpolicy=offpolicy, offpolicy_loss=cfg.offpolicy_loss, luffy_gamma=cfg.luffy_gamma,
                        is_weights=weights,
                    )
                    losses.append(loss)
                    log.kl.append(stats.kl)
                    if stats.kl_offpolicy is not None:
                        log.kl_offpolicy.append(stats.kl_offpolicy)
                    log.clip_fraction.append(stats.clip_fraction)
                    on = ~torch.tensor(groups[i].offpolicy, device=entropy.device)
                    mask = completion_masks[i].to(entropy.device)[on]
                    log.entropy.append(float((entropy[on] * mask).sum() / mask.sum().clamp(min=1)))
                loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
                parallel.backward(loss)
            # The step's loss is the sum of its micro-batch losses (each already divided by the
            # whole step's count); over P processes each holds P x its share, hence the / P.
            pass_loss += float(loss.detach()) / parallel.world
        for k in range(n_fill):
            with parallel.micro_batch(last=k == n_fill - 1):
                logp = qwen_vl.completion_logprobs(model, fill_batch, temperature=cfg.temperature)
                # weight 0: a backward through every parameter (its reduce-scatters under FSDP2 /
                # ZeRO-3, the gradient exchange under DDP) that adds nothing to the gradient
                parallel.backward(logp.sum() * 0.0)
        log.losses.append(pass_loss)
        t1 = time.perf_counter()
        log.seconds["policy"] += t1 - t0
        stepped = parallel.step(loss_finite=math.isfinite(pass_loss))
        log.seconds["optimizer"] += time.perf_counter() - t1
        if not stepped:
            applied = False
            break
    return log, applied


@dataclass
class UpdateLog:
    """One process's loss-side statistics for a step (plain floats, gathered for logging)."""

    losses: list = field(default_factory=list)  # this process's share of the step loss, per update pass
    kl: list = field(default_factory=list)  # per micro-batch (group), on-policy rows
    kl_offpolicy: list = field(default_factory=list)  # the GT rows (k3 on a row nobody sampled: not a KL estimate)
    clip_fraction: list = field(default_factory=list)
    entropy: list = field(default_factory=list)  # on-policy rows only
    mismatch: Mismatch = field(default_factory=Mismatch)  # |learner_old - sampler| over on-policy tokens
    # wall time of this process's phases: reference (+ old policy) pass, policy forward + backward,
    # optimizer step (with the gradient exchange and clipping), weight push to the sampler
    seconds: dict = field(default_factory=lambda: {"reference": 0.0, "policy": 0.0, "optimizer": 0.0, "push": 0.0})


def push_weights(engine, parallel, cfg) -> None:
    """The policy's current weights into the rollout engine (a no-op for transformers). Collective.

    Every weight goes, a frozen vision tower's too (8 % of a 7B model): vLLM warns about each layer
    a reload leaves out, and after sleep level 2 the engine holds no weights at all."""
    engine.push_weights(parallel.policy, weights=parallel.full_weights())


def reference_logprobs(ref_model, model, batch, temperature: float = 1.0):
    """pi_ref at the sampling temperature: a frozen copy for full fine-tuning; the same model with the adapter off for LoRA."""
    if ref_model is not None:
        return qwen_vl.completion_logprobs(ref_model, batch, temperature=temperature)
    with qwen_vl_peft(model).disable_adapter():
        return qwen_vl.completion_logprobs(model, batch, temperature=temperature)


def qwen_vl_peft(model):
    """The peft model under a DDP/FSDP wrapper."""
    return getattr(model, "module", model)


# ---------------------------------------------------------------- what one process reports for a step


def group_logs(slots, groups: list[Group], task, fmt_scores, scores, adv) -> list[dict]:
    """Per group: what the logs need, as plain lists (cheap to gather across processes)."""
    out = []
    for i, (slot, g) in enumerate(zip(slots, groups)):
        out.append({
            "slot": slot,
            "offpolicy": list(g.offpolicy),
            "task": task[i].tolist(),
            "format": fmt_scores[i].tolist(),
            "parsed": scores[i].parsed.tolist(),
            "iou": np.asarray(scores[i].iou, dtype=float).tolist(),
            "adv": adv[i].tolist(),
            "lengths": [len(ids) for ids in g.completion_ids],
            "generated_tokens": g.generated_tokens,
        })
    return out


def step_scalars(cfg, reports: list[dict], cot: bool) -> dict:
    """The step's logged scalars from every process's report; each group counted once, in slot order.

    On-policy averages exclude the GT row (its reward is ``reward/offpolicy``).
    """
    groups = sorted((g for r in reports for g in r["groups"]), key=lambda g: g["slot"])
    on = np.array([not o for g in groups for o in g["offpolicy"]])
    off = ~on
    task = np.array([v for g in groups for v in g["task"]])
    iou = np.array([v for g in groups for v in g["iou"]])
    adv = np.array([v for g in groups for v in g["adv"]])
    fmt = np.array([v for g in groups for v in g["format"]])
    parsed = np.array([v for g in groups for v in g["parsed"]], dtype=bool)
    lengths = np.array([v for g in groups for v in g["lengths"]])
    top1 = [max(i for i, o in zip(g["iou"], g["offpolicy"]) if not o) for g in groups if not all(g["offpolicy"])]
    rollout_seconds = max(r["rollout_seconds"] for r in reports)  # processes sample in parallel
    generated = sum(g["generated_tokens"] for g in groups)

    def mean(values):
        values = [v for r in reports for v in values(r)]
        return float(np.mean(values)) if values else None

    losses = [r["update"].losses for r in reports]
    passes = min(len(x) for x in losses)
    return {
        "reward/raw": float(task[on].mean()) if on.any() else None,
        "reward/shaped": float(shape_rewards(torch.tensor(task[on]), cfg.tau, cfg.alpha1, cfg.alpha2).mean()) if on.any() else None,
        "reward/offpolicy": float(task[off].mean()) if off.any() else None,
        "iou/top1_onpolicy": float(np.mean(top1)) if top1 else None,
        "iou/mean_onpolicy": float(iou[on].mean()) if on.any() else None,
        "adv/offpolicy": float(adv[off].mean()) if off.any() else None,
        "adv/frac_onpolicy_negative": float((adv[on] < 0).mean()) if on.any() else None,
        # groups whose GT row teaches nothing (anchoring's tied groups, tied groups under any strategy)
        "adv/frac_offpolicy_zero": float((adv[off] == 0).mean()) if off.any() else None,
        "format/rate": float(fmt[on].mean()) if cot and on.any() else None,
        "parse/failure_rate": float(1 - parsed[on].mean()) if on.any() else None,
        "loss/value": float(np.mean([sum(x[k] for x in losses) for k in range(passes)])) if passes else None,
        "loss/kl": mean(lambda r: r["update"].kl),  # on-policy rows only
        "loss/kl_offpolicy": mean(lambda r: r["update"].kl_offpolicy),
        "loss/clip_fraction": mean(lambda r: r["update"].clip_fraction),
        "policy/entropy": mean(lambda r: r["update"].entropy),
        **mismatch_scalars([r["update"].mismatch for r in reports]),
        "completion/length": float(lengths[on].mean()) if on.any() else 0.0,
        "speed/rollout_seconds": rollout_seconds,
        "speed/tokens_per_second": generated / max(rollout_seconds, 1e-9),
        # the slowest process's time per phase (they wait for each other at the gradient exchange)
        "speed/data_seconds": max(r.get("data_seconds", 0.0) for r in reports),
        **{f"speed/{phase}_seconds": max(r["update"].seconds[phase] for r in reports)
           for phase in ("reference", "policy", "optimizer", "push")},
        "groups": float(len(groups)),
    }


def mismatch_scalars(parts: list[Mismatch]) -> dict:
    """The sampler/learner log-prob mismatch over every process's on-policy completion tokens (absent:
    the engine gave no log-probs, i.e. transformers, which samples with the policy itself)."""
    total = Mismatch()
    for part in parts:
        total = total.add(part)
    if not total.tokens:
        return {}
    return {"rollout/logprob_abs_diff": total.abs_sum / total.tokens, "rollout/logprob_abs_diff_max": total.max,
            "rollout/logprob_diff_frac_gt_0.1": total.over_0_1 / total.tokens}


def weight_dtype(cfg: TrainConfig, device_type: str) -> torch.dtype:
    """The dtype the policy's weights are loaded in.

    ``auto``: float32 on a CPU. On a GPU, bfloat16 for LoRA (the base is frozen; peft keeps the
    adapters in float32) and float32 master weights for full fine-tuning, with the compute in
    bfloat16 (autocast under DDP, FSDP's mixed-precision policy): an AdamW update of ~lr = 1e-6 on
    a weight of ~1e-2 is far below bfloat16's resolution (2^-8 relative), so pure-bf16 weights
    would not move. DeepSpeed keeps float32 master weights itself and is given bfloat16 weights.
    """
    if cfg.dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
    if device_type != "cuda":
        return torch.float32
    if cfg.lora or cfg.distributed.startswith("zero"):
        return torch.bfloat16
    return torch.float32


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


# ---------------------------------------------------------------- the recipe


# Settings a resumed run may change: they decide what is written (or how long a collective may wait, or
# how many threads compute), not what is computed.
RESUME_MAY_CHANGE = ("save_every", "keep_last", "log_every", "collective_timeout_s", "threads")


def check_resume_config(checkpoint: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run under other settings: it would silently mix two experiments."""
    import json

    saved = json.loads((Path(checkpoint) / "state.json").read_text()).get("config")
    if saved is None:
        return  # written before configs were stored
    current = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as stored
    # a key added since the run was written (e.g. frame_sampling) held its default then
    saved = {**json.loads(json.dumps(TrainConfig().to_dict())), **saved}
    changed = sorted(k for k in set(saved) | set(current) if k not in RESUME_MAY_CHANGE and saved.get(k) != current.get(k))
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:5])
        raise ValueError(f"--resume: {checkpoint} was written with other settings ({details}). "
                         "Resume with the same settings, or use a new output_dir.")


def train(cfg: TrainConfig, resume: bool = False, max_steps: int | None = None, require_checkpoint: bool = False) -> Path:
    """Run (or resume) training; returns the output directory. ``max_steps`` stops early (tests).

    resume: continue from the newest intact checkpoint (damaged newer ones are named and passed
    over); with ``require_checkpoint`` a missing one is a UserError instead of a fresh start.
    Raises RunStopped (after writing a checkpoint) on SIGTERM / Ctrl-C or too many skipped steps,
    and (one line naming the step and the processes) when a collective waited longer than
    ``collective_timeout_s`` for a stalled or dead process.
    """
    from tempsamp.train.parallel import collective_failure

    try:
        return _train(cfg, resume, max_steps, require_checkpoint)
    except RuntimeError as err:
        stopped = collective_failure(err, cfg.output_dir)
        if stopped is None:
            raise
        raise stopped from None


def _stall_for_tests(parallel, step: int) -> None:
    """TEMPSAMP_TEST_STALL=RANK:STEP:SECONDS makes process RANK sleep in the data phase of STEP
    (1-based): how the tests stall one process to check the watchdog. Not a setting."""
    spec = os.environ.get("TEMPSAMP_TEST_STALL")
    if spec:
        rank, at, seconds = spec.split(":")
        if int(rank) == parallel.rank and int(at) == step + 1:
            time.sleep(float(seconds))


def _train(cfg: TrainConfig, resume: bool, max_steps: int | None, require_checkpoint: bool) -> Path:
    from tqdm import tqdm

    from tempsamp.train.parallel import Parallel
    from tempsamp.train.rollout_engine import make_engine
    from tempsamp.video.cache import VideoDecodeError

    set_threads(cfg.threads)  # before any work: torch's default oversubscribes a shared machine
    parallel = Parallel(cfg.distributed, bf16=cfg.dtype == "auto" and torch.cuda.is_available(), timeout_s=cfg.collective_timeout_s)
    gather_object = parallel.gather_object
    out = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    examples = load_training_examples(cfg, say=parallel.print)
    guards.preflight_videos(examples, cfg, parallel.print)
    if parallel.is_main:
        from tempsamp.errors import ensure_output_dir

        ensure_output_dir(out, "output_dir")
        runlock.acquire(out, parallel.print)  # one run per output_dir (the CLI holds it already)
    model_path = resolve_model_path(cfg.model)
    # Loaded on the CPU: FSDP and DeepSpeed move each shard to its device as they wrap the model,
    # so no GPU ever holds a whole float32 copy (DDP moves the model in Parallel.prepare).
    model, processor = qwen_vl.load_policy(model_path, dtype=weight_dtype(cfg, parallel.device.type), device="cpu")
    pad_id = qwen_vl.pad_token_id(processor)
    if cfg.freeze_vision:
        qwen_vl.freeze_vision_tower(model)
    ref_model = None
    if cfg.lora:
        model = qwen_vl.apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, freeze_vision=cfg.freeze_vision)
    elif cfg.beta:  # copied before sharding: a copy of a ZeRO-3-partitioned model has empty weights
        ref_model = copy.deepcopy(model)
    if cfg.gradient_checkpointing:
        qwen_vl.enable_gradient_checkpointing(model)

    def make_optimizer(params):
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    model = parallel.prepare(model, make_optimizer, max_grad_norm=cfg.max_grad_norm)
    if ref_model is not None:
        ref_model = parallel.prepare_reference(ref_model)
    policy = parallel.policy
    layout = gather_object({**parallel.describe(), "threads": torch.get_num_threads()})
    parallel.print(f"training on {layout[0]['world_size']} process(es), {cfg.distributed} ({layout[0]['engine']}, "
                   f"{layout[0]['backend'] or 'no process group'}, {layout[0]['device']}, "
                   f"{layout[0]['threads']} CPU thread(s) per process)")

    counters, start, data_state = Counters(), 0, None
    checkpoint = latest_checkpoint(out, on_damaged=parallel.print) if resume else None
    if resume and checkpoint is None and require_checkpoint:
        damaged = f" ({len(checkpoints(out))} found, all damaged)" if checkpoints(out) else ""
        raise UserError(f"--resume: no intact checkpoint in {out}{damaged}; check output_dir, or add --allow-fresh "
                        "to start at step 0")
    if checkpoint is not None:
        check_resume_config(checkpoint, cfg)
        saved_world = json.loads((checkpoint / "state.json").read_text()).get("world_size", parallel.world)
        if parallel.zero and saved_world != parallel.world:
            raise UserError(f"--resume: {checkpoint} was written by {saved_world} processes; DeepSpeed's partitioned "
                             f"optimizer state loads only on the same number (this run has {parallel.world})")
        if parallel.sharded:
            parallel.load_sharded(checkpoint)
            state = load_checkpoint(checkpoint, None, None, rank=parallel.rank)
        else:
            state = load_checkpoint(checkpoint, lambda d: load_model_weights(policy, d), parallel.optimizer, rank=parallel.rank)
        start = state["step"]
        counters = Counters(**state["counters"])
        data_state = state.get("data")
        parallel.print(f"resumed from {checkpoint} at step {start}")
    # the data order (a cursor: online filtering skips, dynamic sampling takes more) and the filter
    from tempsamp.data.selection import OnlineFilter

    online_filter = OnlineFilter(cfg.online_filter_k, cfg.online_filter_iou, cfg.online_filter_skip)
    stream = QueryStream(len(examples), cfg.seed, cursor=start * cfg.queries_per_step)
    if data_state is not None:
        stream.cursor = int(data_state["cursor"])
        online_filter.load_state_dict(data_state.get("filter", {}))

    def filter_skip(index: int) -> bool:
        return online_filter.enabled and online_filter.skip(examples[index].qid)

    engine = make_engine(cfg, policy, processor, model_path, synced_gpus=parallel.sharded_weights)
    push_weights(engine, parallel, cfg)  # a resumed run's weights, not the checkpoint on disk
    # Test hook: never push after an update, so the sampler keeps the first weights (the tests show
    # that the sampler/learner mismatch metric then grows).
    skip_push = os.environ.get("TEMPSAMP_TEST_SKIP_PUSH") == "1"
    if skip_push:
        parallel.print("TEMPSAMP_TEST_SKIP_PUSH=1: the sampler keeps its first weights (a test hook)")
    parallel.print(f"rollout engine: {engine.description}")
    for entry, description in zip(layout, gather_object(engine.description)):  # what samples, per process
        entry["rollout_engine"] = description
    logger = RunLogger(out) if parallel.is_main else None
    if parallel.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(__import__("yaml").safe_dump(cfg.to_dict(), sort_keys=False))
        # What actually ran, read off the wrapped model on every process (tests check it).
        (out / "layout.json").write_text(json.dumps(layout, indent=1))
        # which queries the run trains on: the selection, then one line per step (queries.jsonl)
        (out / "selection.json").write_text(json.dumps({
            "select": cfg.select, "difficulty_file": cfg.difficulty_file, "n": len(examples),
            "qids": [ex.qid for ex in examples]}, indent=1) + "\n")
        trim_query_log(out / QUERY_LOG, start)

    def load_frames(example):
        return cfg.load(example.video_path, factor=qwen_vl.frame_factor(processor))

    def save(done: int) -> None:
        """checkpoint-DONE: every process writes its shards and RNG; the main process the rest, then renames."""
        full_state = parallel.full_state_dict() if parallel.mode != "ddp" else None  # collective
        tmp = begin_checkpoint(out, done) if parallel.is_main else None
        tmp = Path(gather_object(str(tmp) if tmp else None)[0])
        if parallel.sharded:
            parallel.save_sharded(tmp)
        save_rng(tmp, parallel.rank)
        parallel.barrier()
        if parallel.is_main:
            state = {"counters": vars(counters), "config": cfg.to_dict(), "world_size": parallel.world,
                     "data": {"cursor": stream.cursor, "filter": online_filter.state_dict()}}
            commit_checkpoint(tmp, done, policy, processor, None if parallel.sharded else parallel.optimizer, state,
                              cfg.keep_last, model_state=full_state)
        parallel.barrier()

    end = cfg.total_steps if max_steps is None else min(cfg.total_steps, max_steps)
    if budget_spent(cfg, counters):  # a finished budget run, resumed: nothing left to do
        end = start

    def end_of_step(done: int, force: bool = False) -> None:
        """Checkpoint every save_every steps, at the end and at --max-steps (skipped steps included), and
        when the run stops early (``force``), in step."""
        if force or done % cfg.save_every == 0 or done == cfg.total_steps or done == end:
            save(done)

    stop, stopping = guards.GracefulStop().install(), None
    bar = tqdm(range(start, end), initial=start, total=cfg.total_steps, desc="train", disable=not parallel.is_main)
    checkpoint_seconds = 0.0
    for step in bar:
        t0 = time.perf_counter()
        stage = cfg.stage_at(step)
        cot = stage["mode"] == COT
        parallel.set_lr(lr_at(cfg, step))
        faults = Counters()  # this process's faults in this step
        parallel.heartbeat(step, "data")
        _stall_for_tests(parallel, step)

        # 1. rollout: this process's whole groups, each seeded by (seed, step, slot)
        taken, skipped = stream.take(cfg.queries_per_step, filter_skip)
        slot_index = dict(enumerate(taken))  # slot -> example index, the same on every process
        model.eval()
        events = []
        fillers = []  # the first group this process sampled in the step (real, or a blank stand-in)

        def sample_slots(mine):
            """This process's (slot, index) pairs sampled: (groups, their slots, data s, rollout s).

            Every process makes ONE generate call per call of this, a process without a usable query
            on a blank stand-in (weight 0), so sharded weights stay in step (ZeRO-3 gathers the policy
            around transformers' generate; vLLM samples from its own copy: nothing to gather)."""
            t_start = time.perf_counter()
            requests, chosen, chosen_slots = [], [], []
            for slot, index in mine:  # data: frames and prompts
                try:
                    requests.append(prepare_query(cfg, processor, parallel.device, examples[index], stage["mode"], sample_seed(cfg.seed, step, slot), load_frames))
                    chosen.append(examples[index])
                    chosen_slots.append(slot)
                except (FileNotFoundError, VideoDecodeError) as err:
                    faults.bad_videos += 1
                    events.append(("bad_video", str(err)))
            t_prepared = time.perf_counter()
            parallel.heartbeat(step, "rollout")
            blank = [] if requests else [blank_request(cfg, processor, parallel.device, stage["mode"])]
            gather = parallel.generation() if cfg.rollout_engine == "transformers" else contextlib.nullcontext()
            # autocast: sampling computes in bf16 like the training forward (GPU; a no-op on a CPU).
            with torch.no_grad(), parallel.autocast(), gather:
                made = rollout_step(cfg, engine, processor, chosen or [None], requests or blank, stage["mode"])
            fillers.append(made[0])
            return made[:len(requests)], chosen_slots, t_prepared - t_start, time.perf_counter() - t_prepared

        groups, group_slots, t_data, t_rollout = sample_slots(shard(list(slot_index.items()), parallel.rank, parallel.world))
        dynamic = {"dropped": [], "rounds": 0, "dropped_tokens": 0}
        if cfg.dynamic_sampling:
            # Decided on every process's gathered tie flags, so all take the same refills in step.
            for round_ in range(cfg.dynamic_sampling_max_rounds + 1):
                ties = gather_object([(slot, onpolicy_tied(cfg, g, cot)) for slot, g in zip(group_slots, groups)])
                kept = sorted(slot for rank_ties in ties for slot, tied in rank_ties if not tied)
                missing = cfg.queries_per_step - len(kept)
                if missing <= 0 or round_ == cfg.dynamic_sampling_max_rounds:
                    break
                more, more_skipped = stream.take(missing, filter_skip)
                skipped += more_skipped
                first = max(slot_index) + 1
                new = {first + i: index for i, index in enumerate(more)}
                slot_index.update(new)
                owners = refill_owners(ties, kept, list(new))
                more_groups, more_slots, dt, rt = sample_slots([(k, v) for k, v in new.items() if owners[k] == parallel.rank])
                groups, group_slots = groups + more_groups, group_slots + more_slots
                t_data, t_rollout = t_data + dt, t_rollout + rt
                dynamic["rounds"] += 1
            keep = set(kept)
            for rank_ties in ties:  # a process left with none keeps its first tied group (it trains like 1 process)
                if rank_ties and not any(slot in keep for slot, _ in rank_ties):
                    keep.add(min(slot for slot, _ in rank_ties))
            dropped = [g for g, slot in zip(groups, group_slots) if slot not in keep]
            dynamic["dropped"] = [slot for slot in group_slots if slot not in keep]
            dynamic["dropped_tokens"] = sum(g.generated_tokens for g in dropped)
            groups, group_slots = ([g for g, slot in zip(groups, group_slots) if slot in keep],
                                   [slot for slot in group_slots if slot in keep])
        filler = fillers[0]  # the forwards this process runs beyond its own groups carry it, at weight 0

        # Decided on gathered counts, so all processes agree: no usable group anywhere skips the
        # step; otherwise every process takes part, one without a usable group on its filler
        # (weight 0) and the step is applied on the others' groups (its bad videos are counted).
        group_counts = gather_object(len(groups))
        if max(group_counts) == 0:
            reports = gather_object({"faults": faults.faults(), "events": events})
            counters.add([r["faults"] for r in reports])
            counters.skipped_steps += 1
            counters.skipped_no_video += 1
            if logger:
                for kind, message in [e for r in reports for e in r["events"]]:
                    logger.event(step, kind, message)
                logger.event(step, "skipped_step", f"no usable video on any of the {len(group_counts)} processes")
                logger.log(step + 1, {f"faults/{k}": v for k, v in vars(counters).items() if k != "losses"})
                log_queries(out / QUERY_LOG, step + 1, examples, slot_index, [], [], skipped)
            stopping = guards.stop_reason(stop, counters, step + 1, end, cfg, parallel)
            end_of_step(step + 1, force=stopping is not None)
            if stopping:
                break
            continue

        # 2. score, 3. advantages (on whole groups: each group lives on one process)
        parallel.heartbeat(step, "update")
        if groups:
            task, fmt, off, scores = score(cfg, groups, cot, faults)
            adv = advantages(cfg, task, fmt, off)
        else:
            task = fmt = torch.zeros(0, cfg.num_generations)
            adv, scores = [], []

        # 4. loss and optimizer step, then the sampler gets the new weights (gathered one module at
        # a time under FSDP2 / ZeRO-3: every process takes part). vLLM on a GPU sleeps meanwhile.
        model.train()
        engine.sleep()
        update_log, applied = update(cfg, model, ref_model, groups, adv, parallel, pad_id, filler=filler)
        t_push = time.perf_counter()
        if (applied and not skip_push) or cfg.vllm_sleep_level == 2 and getattr(engine, "asleep", False):
            push_weights(engine, parallel, cfg)
        engine.wake_up()
        update_log.seconds["push"] = time.perf_counter() - t_push

        # gather every process's report: faults, events and logs are counted once per group
        parallel.heartbeat(step, "log")
        fmt_scores = np.stack([s.format for s in scores]) if scores else np.zeros((0, cfg.num_generations))
        report = {
            "faults": faults.faults(), "events": events, "update": update_log, "rollout_seconds": t_rollout,
            "data_seconds": t_data,
            "groups": group_logs(group_slots, groups, task, fmt_scores, scores, adv),
            "dynamic": dynamic,
        }
        reports = gather_object(report)
        trained = sorted(g["slot"] for r in reports for g in r["groups"])
        if online_filter.enabled:  # the same visits, in slot order, on every process
            for g in sorted((g for r in reports for g in r["groups"]), key=lambda g: g["slot"]):
                online_filter.visit(examples[slot_index[g["slot"]]].qid, [i for i, o in zip(g["iou"], g["offpolicy"]) if not o])
        if logger:
            dropped_slots = sorted(slot for r in reports for slot in r["dynamic"]["dropped"])
            log_queries(out / QUERY_LOG, step + 1, examples, slot_index, trained, dropped_slots, skipped)
        counters.add([r["faults"] for r in reports])
        if logger:
            for kind, message in [e for r in reports for e in r["events"]]:
                logger.event(step, kind, message)
            if 0 in group_counts:
                idle = ", ".join(str(r) for r, n in enumerate(group_counts) if n == 0)
                logger.event(step, "idle_process", f"no usable video on process {idle}: it took part with a blank stand-in "
                             "of weight 0; the step is applied on the other processes' groups")
        if not applied:
            counters.skipped_steps += 1
            counters.skipped_non_finite += 1
            if logger:
                logger.event(step, "skipped_step", "non-finite loss or gradient: update not applied")
        scalars = step_scalars(cfg, reports, cot)
        # generation cost, dropped groups included (what equal-cost comparisons hold fixed)
        scalars["tokens/generated"] = sum(g["generated_tokens"] for r in reports for g in r["groups"]) + sum(
            r["dynamic"]["dropped_tokens"] for r in reports)
        scalars["data/skipped_by_filter"] = float(len(skipped))
        counters.generated_tokens += int(scalars["tokens/generated"])
        if cfg.dynamic_sampling:
            scalars["dynamic/dropped_groups"] = float(sum(len(r["dynamic"]["dropped"]) for r in reports))
            scalars["dynamic/refill_rounds"] = float(reports[0]["dynamic"]["rounds"])
        loss_value = scalars["loss/value"]
        recent = counters.losses[-50:]
        if loss_value is not None and math.isfinite(loss_value):
            if recent and abs(loss_value) > cfg.spike_factor * max(1e-8, float(np.median(np.abs(recent)))):
                counters.loss_spikes += 1
                if logger:
                    logger.event(step, "loss_spike", f"loss {loss_value:.4g} vs running median {np.median(np.abs(recent)):.4g}")
            counters.losses = (recent + [loss_value])[-50:]

        # log (main process)
        if logger and step % cfg.log_every == 0:
            scalars.update({
                "speed/step_seconds": time.perf_counter() - t0,
                "speed/checkpoint_seconds": checkpoint_seconds,  # the previous step's save (0: none)
                "memory/peak_gb": peak_memory_gb(),
                "lr": lr_at(cfg, step),
                **{f"faults/{k}": v for k, v in vars(counters).items() if k != "losses"},
            })
            logger.log(step + 1, scalars)
            bar.set_postfix(reward=f"{scalars['reward/raw'] or 0:.3f}", top1=f"{scalars['iou/top1_onpolicy'] or 0:.3f}")

        stopping = guards.stop_reason(stop, counters, step + 1, end, cfg, parallel)
        spent = budget_spent(cfg, counters)
        parallel.heartbeat(step, "checkpoint")
        t_checkpoint = time.perf_counter()
        end_of_step(step + 1, force=stopping is not None or spent)
        checkpoint_seconds = time.perf_counter() - t_checkpoint
        if stopping:
            break
        if spent:
            parallel.print(f"generation budget spent after {step + 1} steps: {counters.generated_tokens} tokens "
                           f"generated (max_generated_tokens={cfg.max_generated_tokens})")
            break

    stop.restore()
    bar.close()
    if stopping is None:
        # A plain transformers checkpoint of the final policy (LoRA merged), beside the resumable ones.
        final_state = parallel.full_state_dict() if parallel.mode != "ddp" else None  # collective
        if parallel.is_main:
            export_model(out / "final-model", policy, processor, final_state)
    if logger:
        logger.close()
        write_speed_summary(out)
    parallel.barrier()
    engine.close()  # vLLM: before the process group goes (its shutdown destroys every group)
    parallel.close()
    if parallel.is_main:
        runlock.release(out)
    last = latest_checkpoint(out)
    done = int(last.name.split("-")[1]) if last else start
    line = guards.summary(counters, done, cfg.total_steps, last)
    if stopping:
        parallel.print(stopping)
        raise RunStopped(f"{line}; continue with --resume", exit_code=stop.exit_code if stop.signal else 1)
    parallel.print(line)
    return out


def budget_spent(cfg: TrainConfig, counters: Counters) -> bool:
    return bool(cfg.max_generated_tokens) and counters.generated_tokens >= cfg.max_generated_tokens


QUERY_LOG = "queries.jsonl"


def log_queries(path: Path, step: int, examples, slot_index: dict, trained: list, dropped: list, skipped: list) -> None:
    """One line per step: the qids trained on, dropped as tied (dynamic sampling), passed over by the filter."""
    line = {"step": step, "trained": [examples[slot_index[s]].qid for s in trained],
            "dropped_tied": [examples[slot_index[s]].qid for s in dropped],
            "skipped_by_filter": [examples[i].qid for i in skipped]}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def trim_query_log(path: Path, start: int) -> None:
    """A resumed run redoes the steps after its checkpoint: their lines go (they are written again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= start]
    path.write_text("".join(line + "\n" for line in keep))


SPEED_KEYS = ("step", "data", "rollout", "reference", "policy", "optimizer", "push", "checkpoint")


def write_speed_summary(out: Path) -> dict:
    """``speed.json``: the run's per-phase seconds per step (median over logged steps) and generated tokens/s."""
    from tempsamp.train.logger import read_metrics

    rows = read_metrics(out)
    summary = {"steps": len(rows)}
    for key in [f"speed/{k}_seconds" for k in SPEED_KEYS] + ["speed/tokens_per_second"]:
        values = [r[key] for r in rows if r.get(key) is not None]
        summary[key.removeprefix("speed/")] = float(np.median(values)) if values else None
    (out / "speed.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
