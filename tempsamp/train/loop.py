"""The TempSamp-R1 training recipe: rollout -> append the GT -> score -> advantages -> loss -> step.

``train(cfg)`` is set-up (tempsamp.train.setup: processes, data, policy, reference, rollout
engine, resume), then ``training_step`` once per step, each followed by its bookkeeping
(tempsamp.train.bookkeeping: faults, skip and stop decisions, loss spikes, logs, checkpoints).
``training_step`` is the paper's recipe. Every algorithmic piece is a call into the library
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
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tempsamp.advantages import group_advantages
from tempsamp.loss import Mismatch, grpo_loss, logprob_mismatch, truncated_is_weights
from tempsamp.models import qwen_vl
from tempsamp.presets import get_preset
from tempsamp.prompts import COT, build_offpolicy_completion, prompt_text
from tempsamp.train.bookkeeping import Bookkeeping, Counters
from tempsamp.train.config import TrainConfig
from tempsamp.train.rollout_engine import RolloutRequest
from tempsamp.train.schedule import sample_seed, shard
from tempsamp.train.scoring import gt_clip_arrays, score_group
from tempsamp.train.setup import Run, push_weights, set_up

# Importable from here as before the set-up and the bookkeeping got their own modules.
from tempsamp.train.bookkeeping import SPEED_KEYS, mismatch_scalars, step_scalars  # noqa: F401
from tempsamp.train.setup import check_resume_config, resolve_model_path, weight_dtype  # noqa: F401

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


# ---------------------------------------------------------------- the recipe


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
        run = set_up(cfg, resume, require_checkpoint)  # processes, data, policy, reference, rollout engine, resume
        book = Bookkeeping(run, max_steps)  # the run's records, totals, stop and checkpoint decisions
        for step in book.steps():
            result = training_step(run, step)
            if book.after_step(step, result):
                break
        return book.finish()
    except RuntimeError as err:
        stopped = collective_failure(err, cfg.output_dir)
        if stopped is None:
            raise
        raise stopped from None


def training_step(run: Run, step: int) -> StepResult:
    """rollout -> append the GT -> score -> advantages -> loss -> step, on this process's groups."""
    cfg, parallel = run.cfg, run.parallel
    started, lr, mode = time.perf_counter(), lr_at(cfg, step), cfg.stage_at(step)["mode"]
    parallel.set_lr(lr)
    parallel.heartbeat(step, "data")
    _stall_for_tests(parallel, step)

    # 1. rollout: per query G-1 samples (G for plain GRPO) and the GT written as a completion;
    #    whole groups on this process, each seeded by (seed, step, slot)
    run.model.eval()
    rollouts = sample_groups(run, step, mode)
    if cfg.dynamic_sampling:
        drop_tied_groups(run, step, mode, rollouts)
    result = StepResult(rollouts, parallel.gather_object(len(rollouts.groups)), started, lr, mode == COT, cfg.num_generations)
    if result.skipped:  # no usable video on any process: all skip the step together
        return result

    # 2. rewards, 3. advantages (on whole groups: each group lives on one process)
    parallel.heartbeat(step, "update")
    if rollouts.groups:
        result.task, fmt, off, result.scores = score(cfg, rollouts.groups, result.cot, rollouts.faults)
        result.adv = advantages(cfg, result.task, fmt, off)

    # 4. clipped loss with beta * KL to the reference, and the optimizer step
    run.model.train()
    run.engine.sleep()  # vLLM on a GPU frees its memory meanwhile
    result.update_log, result.applied = update(cfg, run.model, run.ref_model, rollouts.groups, result.adv, parallel,
                                               run.pad_id, filler=rollouts.filler)
    # 5. the sampler gets the new weights
    result.update_log.seconds["push"] = sync_sampler(run, result.applied)
    return result


@dataclass
class Rollouts:
    """One process's sampled groups in a step, and what sampling them met."""

    slot_index: dict  # slot -> example index: the step's queries, the same on every process
    skipped: list  # example indices the online filter passed over
    groups: list = field(default_factory=list)
    slots: list = field(default_factory=list)
    # the first group this process sampled (real, or a blank stand-in): the forwards it runs beyond
    # its own groups carry it, at weight 0
    filler: Group | None = None
    faults: Counters = field(default_factory=Counters)  # this process's faults in this step
    events: list = field(default_factory=list)
    data_seconds: float = 0.0
    rollout_seconds: float = 0.0
    dynamic: dict = field(default_factory=lambda: {"dropped": [], "rounds": 0, "dropped_tokens": 0})


@dataclass
class StepResult:
    """What a step did on this process; the bookkeeping gathers it from every process."""

    rollouts: Rollouts
    group_counts: list  # usable groups per process (gathered)
    started: float
    lr: float
    cot: bool
    num_generations: int
    task: torch.Tensor | None = None
    scores: list = field(default_factory=list)
    adv: list | torch.Tensor = field(default_factory=list)
    update_log: UpdateLog | None = None
    applied: bool = False

    @property
    def skipped(self) -> bool:
        return max(self.group_counts) == 0


def sample_groups(run: Run, step: int, mode: str) -> Rollouts:
    """The step's queries from the data order (the online filter passes over some), this process's
    share sampled."""
    taken, skipped = run.stream.take(run.cfg.queries_per_step, run.filter_skip)
    rollouts = Rollouts(slot_index=dict(enumerate(taken)), skipped=skipped)
    mine = shard(list(rollouts.slot_index.items()), run.parallel.rank, run.parallel.world)
    sample_slots(run, step, mode, rollouts, mine)
    return rollouts


def sample_slots(run: Run, step: int, mode: str, rollouts: Rollouts, mine: list) -> None:
    """Sample this process's (slot, example index) pairs into ``rollouts``, each group with its GT row.

    Every process makes ONE generate call per call of this, a process without a usable query
    on a blank stand-in (weight 0), so sharded weights stay in step (ZeRO-3 gathers the policy
    around transformers' generate; vLLM samples from its own copy: nothing to gather)."""
    from tempsamp.video.cache import VideoDecodeError

    cfg, parallel, examples = run.cfg, run.parallel, run.examples
    t_start = time.perf_counter()
    requests, chosen, chosen_slots = [], [], []
    for slot, index in mine:  # data: frames and prompts
        try:
            requests.append(prepare_query(cfg, run.processor, parallel.device, examples[index], mode, sample_seed(cfg.seed, step, slot), run.load_frames))
            chosen.append(examples[index])
            chosen_slots.append(slot)
        except (FileNotFoundError, VideoDecodeError) as err:
            rollouts.faults.bad_videos += 1
            rollouts.events.append(("bad_video", str(err)))
    t_prepared = time.perf_counter()
    parallel.heartbeat(step, "rollout")
    blank = [] if requests else [blank_request(cfg, run.processor, parallel.device, mode)]
    gather = parallel.generation() if cfg.rollout_engine == "transformers" else contextlib.nullcontext()
    # autocast: sampling computes in bf16 like the training forward (GPU; a no-op on a CPU).
    with torch.no_grad(), parallel.autocast(), gather:
        made = rollout_step(cfg, run.engine, run.processor, chosen or [None], requests or blank, mode)
    if rollouts.filler is None:
        rollouts.filler = made[0]
    rollouts.groups += made[:len(requests)]
    rollouts.slots += chosen_slots
    rollouts.data_seconds += t_prepared - t_start
    rollouts.rollout_seconds += time.perf_counter() - t_prepared


def drop_tied_groups(run: Run, step: int, mode: str, rollouts: Rollouts) -> None:
    """Dynamic sampling (DAPO): a group whose on-policy rewards all tie is dropped and refilled from
    the next queries, at most ``dynamic_sampling_max_rounds`` rounds. Decided on every process's
    gathered tie flags, so all take the same refills in step."""
    cfg, parallel, cot = run.cfg, run.parallel, mode == COT
    for round_ in range(cfg.dynamic_sampling_max_rounds + 1):
        ties = parallel.gather_object([(slot, onpolicy_tied(cfg, g, cot)) for slot, g in zip(rollouts.slots, rollouts.groups)])
        kept = sorted(slot for rank_ties in ties for slot, tied in rank_ties if not tied)
        missing = cfg.queries_per_step - len(kept)
        if missing <= 0 or round_ == cfg.dynamic_sampling_max_rounds:
            break
        more, more_skipped = run.stream.take(missing, run.filter_skip)
        rollouts.skipped += more_skipped
        first = max(rollouts.slot_index) + 1
        new = {first + i: index for i, index in enumerate(more)}
        rollouts.slot_index.update(new)
        owners = refill_owners(ties, kept, list(new))
        sample_slots(run, step, mode, rollouts, [(k, v) for k, v in new.items() if owners[k] == parallel.rank])
        rollouts.dynamic["rounds"] += 1
    keep = set(kept)
    for rank_ties in ties:  # a process left with none keeps its first tied group (it trains like 1 process)
        if rank_ties and not any(slot in keep for slot, _ in rank_ties):
            keep.add(min(slot for slot, _ in rank_ties))
    dropped = [g for g, slot in zip(rollouts.groups, rollouts.slots) if slot not in keep]
    rollouts.dynamic["dropped"] = [slot for slot in rollouts.slots if slot not in keep]
    rollouts.dynamic["dropped_tokens"] = sum(g.generated_tokens for g in dropped)
    rollouts.groups, rollouts.slots = ([g for g, slot in zip(rollouts.groups, rollouts.slots) if slot in keep],
                                       [slot for slot in rollouts.slots if slot in keep])


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


def sync_sampler(run: Run, applied: bool) -> float:
    """The rollout engine gets the updated weights (gathered one module at a time under FSDP2 /
    ZeRO-3: every process takes part; a no-op for transformers, which samples with the policy
    itself) and wakes if it slept. Returns the seconds it took."""
    t0 = time.perf_counter()
    if (applied and not run.skip_push) or run.cfg.vllm_sleep_level == 2 and getattr(run.engine, "asleep", False):
        push_weights(run.engine, run.parallel, run.cfg)
    run.engine.wake_up()
    return time.perf_counter() - t0


def _stall_for_tests(parallel, step: int) -> None:
    """TEMPSAMP_TEST_STALL=RANK:STEP:SECONDS makes process RANK sleep in the data phase of STEP
    (1-based): how the tests stall one process to check the watchdog. Not a setting."""
    spec = os.environ.get("TEMPSAMP_TEST_STALL")
    if spec:
        rank, at, seconds = spec.split(":")
        if int(rank) == parallel.rank and int(at) == step + 1:
            time.sleep(float(seconds))


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
    return RolloutRequest(prompt, video.frames, video.fps, text, n_sampled, seed, video.source_frames())


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


def reference_logprobs(ref_model, model, batch, temperature: float = 1.0):
    """pi_ref at the sampling temperature: a frozen copy for full fine-tuning; the same model with the adapter off for LoRA."""
    if ref_model is not None:
        return qwen_vl.completion_logprobs(ref_model, batch, temperature=temperature)
    with qwen_vl_peft(model).disable_adapter():
        return qwen_vl.completion_logprobs(model, batch, temperature=temperature)


def qwen_vl_peft(model):
    """The peft model under a DDP/FSDP wrapper."""
    return getattr(model, "module", model)


