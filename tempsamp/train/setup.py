"""A training run's set-up, in one place: processes, data, policy, reference, rollout engine, resume.

``set_up(cfg, resume)`` returns a ``Run``: everything a step reads, made once and in the order that
matters (the reference is copied before the policy is sharded; a resumed run's weights reach the
rollout engine before the first step).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tempsamp.errors import UserError
from tempsamp.models import qwen_vl
from tempsamp.threads import set_threads
from tempsamp.train import guards, runlock
from tempsamp.train.bookkeeping import Counters
from tempsamp.train.checkpoint import checkpoints, latest_checkpoint, load_checkpoint, load_model_weights
from tempsamp.train.config import TrainConfig
from tempsamp.train.schedule import QueryStream


@dataclass
class Run:
    """What every step reads: made by ``set_up``; ``start``, ``counters``, ``stream`` and
    ``online_filter`` are where a resumed run continues (and move on as it trains)."""

    cfg: TrainConfig
    parallel: object  # tempsamp.train.parallel.Parallel: the processes and the wrapped model
    out: Path
    examples: list
    model: object  # the wrapped policy (DDP / FSDP2 / DeepSpeed); ``parallel.policy`` is the bare one
    ref_model: object  # None: no KL (beta 0) or LoRA (the reference is the base with the adapter off)
    processor: object
    pad_id: int
    engine: object  # the rollout engine (transformers generate or vLLM)
    layout: list  # per process: what actually runs (written to layout.json)
    start: int
    counters: Counters
    stream: QueryStream  # the data order: a cursor that online filtering skips and dynamic sampling moves on
    online_filter: object  # tempsamp.data.selection.OnlineFilter
    skip_push: bool = False  # test hook: the sampler keeps its first weights

    @property
    def policy(self):
        return self.parallel.policy

    def load_frames(self, example):
        return self.cfg.load(example.video_path, factor=qwen_vl.frame_factor(self.processor))

    def filter_skip(self, index: int) -> bool:
        return self.online_filter.enabled and self.online_filter.skip(self.examples[index].qid)


def set_up(cfg: TrainConfig, resume: bool, require_checkpoint: bool) -> Run:
    from tempsamp.data.selection import OnlineFilter
    from tempsamp.train.parallel import Parallel
    from tempsamp.train.rollout_engine import make_engine

    set_threads(cfg.threads)  # before any work: torch's default oversubscribes a shared machine
    parallel = Parallel(cfg.distributed, bf16=cfg.dtype == "auto" and torch.cuda.is_available(), timeout_s=cfg.collective_timeout_s)
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
    model, ref_model, processor = load_models(cfg, model_path, parallel)
    layout = parallel.gather_object({**parallel.describe(), "threads": torch.get_num_threads()})
    parallel.print(f"training on {layout[0]['world_size']} process(es), {cfg.distributed} ({layout[0]['engine']}, "
                   f"{layout[0]['backend'] or 'no process group'}, {layout[0]['device']}, "
                   f"{layout[0]['threads']} CPU thread(s) per process)")

    start, counters, data_state = resume_state(cfg, parallel, out, resume, require_checkpoint)
    online_filter = OnlineFilter(cfg.online_filter_k, cfg.online_filter_iou, cfg.online_filter_skip)
    stream = QueryStream(len(examples), cfg.seed, cursor=start * cfg.queries_per_step)
    if data_state is not None:
        stream.cursor = int(data_state["cursor"])
        online_filter.load_state_dict(data_state.get("filter", {}))

    engine = make_engine(cfg, parallel.policy, processor, model_path, synced_gpus=parallel.sharded_weights)
    push_weights(engine, parallel, cfg)  # a resumed run's weights, not the checkpoint on disk
    # Test hook: never push after an update, so the sampler keeps the first weights (the tests show
    # that the sampler/learner mismatch metric then grows).
    skip_push = os.environ.get("TEMPSAMP_TEST_SKIP_PUSH") == "1"
    if skip_push:
        parallel.print("TEMPSAMP_TEST_SKIP_PUSH=1: the sampler keeps its first weights (a test hook)")
    parallel.print(f"rollout engine: {engine.description}")
    for entry, description in zip(layout, parallel.gather_object(engine.description)):  # what samples, per process
        entry["rollout_engine"] = description
    return Run(cfg, parallel, out, examples, model, ref_model, processor, qwen_vl.pad_token_id(processor), engine,
               layout, start, counters, stream, online_filter, skip_push)


def load_models(cfg: TrainConfig, model_path: str, parallel):
    """The policy (wrapped for its processes, with its optimizer) and the frozen reference."""
    # Loaded on the CPU: FSDP and DeepSpeed move each shard to its device as they wrap the model,
    # so no GPU ever holds a whole float32 copy (DDP moves the model in Parallel.prepare).
    model, processor = qwen_vl.load_policy(model_path, dtype=weight_dtype(cfg, parallel.device.type), device="cpu")
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
    return model, ref_model, processor


def resume_state(cfg: TrainConfig, parallel, out: Path, resume: bool, require_checkpoint: bool):
    """(first step, the run's totals, the data order's state) from the newest intact checkpoint;
    the policy's and optimizer's weights are loaded in place. A fresh run: (0, zeros, None)."""
    checkpoint = latest_checkpoint(out, on_damaged=parallel.print) if resume else None
    if resume and checkpoint is None and require_checkpoint:
        damaged = f" ({len(checkpoints(out))} found, all damaged)" if checkpoints(out) else ""
        raise UserError(f"--resume: no intact checkpoint in {out}{damaged}; check output_dir, or add --allow-fresh "
                        "to start at step 0")
    if checkpoint is None:
        return 0, Counters(), None
    check_resume_config(checkpoint, cfg)
    saved_world = json.loads((checkpoint / "state.json").read_text()).get("world_size", parallel.world)
    if parallel.zero and saved_world != parallel.world:
        raise UserError(f"--resume: {checkpoint} was written by {saved_world} processes; DeepSpeed's partitioned "
                         f"optimizer state loads only on the same number (this run has {parallel.world})")
    if parallel.sharded:
        parallel.load_sharded(checkpoint)
        state = load_checkpoint(checkpoint, None, None, rank=parallel.rank)
    else:
        state = load_checkpoint(checkpoint, lambda d: load_model_weights(parallel.policy, d), parallel.optimizer, rank=parallel.rank)
    parallel.print(f"resumed from {checkpoint} at step {state['step']}")
    return state["step"], Counters(**state["counters"]), state.get("data")


def push_weights(engine, parallel, cfg) -> None:
    """The policy's current weights into the rollout engine (a no-op for transformers). Collective.

    Every weight goes, a frozen vision tower's too (8 % of a 7B model): vLLM warns about each layer
    a reload leaves out, and after sleep level 2 the engine holds no weights at all."""
    engine.push_weights(parallel.policy, weights=parallel.full_weights())


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


def resolve_model_path(name: str) -> str:
    from tempsamp.models.tiny import NAMED_SPECS, ensure_tiny_model

    if name in NAMED_SPECS:  # "tiny", or "tiny-vllm" (head size 32, for vLLM's CPU attention)
        return str(ensure_tiny_model(spec=NAMED_SPECS[name]))
    from tempsamp.evaluation.run_cli import check_model_folder

    check_model_folder(name, "model=")
    return name


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


# Settings a resumed run may change: they decide what is written (or how long a collective may wait, or
# how many threads compute), not what is computed.
RESUME_MAY_CHANGE = ("save_every", "keep_last", "log_every", "collective_timeout_s", "threads")


def check_resume_config(checkpoint: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run under other settings: it would silently mix two experiments."""
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
