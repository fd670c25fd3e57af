"""Every training knob in one dataclass; recipes are YAML files of these keys, overridable with key=value.

Defaults are the paper's where it gives them (G = 8, tau = 0.8, alpha1 = 0.01, alpha2 = 1,
lambda_off = 1.2, 2 FPS) and the public GRPO grounding code's where it does not (learning rate 1e-6,
beta = 0.04, temperature 1.0, frozen vision tower); each such choice is listed in docs/decisions.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tempsamp.advantages import ANCHOR_TIED, STRATEGIES
from tempsamp.prompts import MODES

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


@dataclass
class TrainConfig:
    # model
    model: str = "tiny"  # local path or hub id; "tiny" builds the tiny random Qwen2.5-VL offline
    dtype: str = "auto"  # auto: CPU float32; GPU bf16 compute, float32 master weights unless LoRA (loop.weight_dtype)
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    freeze_vision: bool = True
    gradient_checkpointing: bool = False

    # data
    train_annotations: str = ""
    dataset: str | None = None  # charades | activitynet | qvhighlights | jsonl; None: detect
    videos: str | None = None
    durations: str | None = None
    few_shot_fraction: float = 1.0
    lenient_annotations: bool = False

    # video: 2 FPS as in the paper; pixel budget in Qwen-VL's terms (pixels per frame and per clip)
    fps: float = 2.0
    max_frames: int = 256
    min_pixels: int = 16 * 28 * 28
    max_pixels: int = 256 * 28 * 28
    total_pixels: int = 3584 * 28 * 28
    frame_cache: str | None = None
    # exact: frames at k / fps s (default); qwen: qwen-vl-utils 0.0.14's frame count, indices and sizes
    # (docs/evaluation.md, "Frame sampling"); with qwen, set max_frames: 768 for qwen-vl-utils' own cap
    frame_sampling: str = "exact"

    # rollout
    num_generations: int = 8  # G: the group size, off-policy row included
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    rollout_engine: str = "transformers"  # transformers (default) | vllm (GPU, optional extra)
    vllm_gpu_memory_utilization: float = 0.3  # the colocated vLLM's share of each GPU
    vllm_max_model_len: int = 8192

    # algorithm
    strategy: str = "shaping"  # grpo | mixed | reward_scaling | anchor | shaping | shaping+anchor
    lambda_off: float = 1.2
    anchor_tied: str = "joint"  # anchoring when every on-policy reward ties: literal (A_G = 0) | joint (advantages.py)
    offpolicy_scale: float = 0.8
    tau: float = 0.8
    alpha1: float = 0.01
    alpha2: float = 1.0
    adv_std: str = "population"
    adv_eps: float = 1e-6
    beta: float = 0.04
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    aggregation: str = "token_mean"  # token_mean | sequence_mean (the paper recipes: sequence_mean, docs/decisions.md)
    updates_per_rollout: int = 1  # the paper: 1 (pi_old = pi_theta)
    # the GT row's loss with several updates per rollout: "ratio" (like on-policy tokens; refused with
    # updates_per_rollout > 1) | "luffy" (no clipping, behaviour prob 1, shaping p/(p + luffy_gamma)); tempsamp.loss
    offpolicy_loss: str = "ratio"
    luffy_gamma: float = 0.1  # 0: no policy shaping (f(p) = p)
    # CoT stages: the GT row's think sentence in the loss? "train" | "mask" (tags and answer still train)
    gt_think_loss: str = "mask"
    highlight_f2: str = "windows"  # the highlight reward's F2: over windows (IoU-matched) | over clips (rewards.py)
    format_weight: float = 1.0  # weight of the format reward in CoT stages
    lambda_rec: float = 0.5  # highlight reward weights (tempsamp.rewards.timestamp_reward)
    lambda_score: float = 0.5
    # hybrid CoT: stages run in order; each has a prompt mode and a number of optimizer steps
    stages: list = field(default_factory=lambda: [{"mode": "answer", "steps": 100}])

    # optimisation
    learning_rate: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine
    max_grad_norm: float = 1.0
    queries_per_step: int = 4  # groups per optimizer step, over all processes
    # how the model is spread over processes (tempsamp.train.parallel): ddp | fsdp | zero2 | zero3 | zero3_offload
    distributed: str = "ddp"
    seed: int = 0

    # run
    output_dir: str = "runs/tempsamp"
    save_every: int = 50
    keep_last: int = 2
    log_every: int = 1
    spike_factor: float = 10.0  # a loss above this many times the running median is logged as a spike

    @property
    def total_steps(self) -> int:
        return sum(int(s["steps"]) for s in self.stages)

    @property
    def uses_offpolicy(self) -> bool:
        return self.strategy != "grpo"

    def stage_at(self, step: int) -> dict:
        """The stage an optimizer step (0-based) belongs to."""
        end = 0
        for stage in self.stages:
            end += int(stage["steps"])
            if step < end:
                return stage
        return self.stages[-1]

    def validate(self) -> TrainConfig:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.num_generations < 2:
            raise ValueError("num_generations: a group needs at least 2 completions")
        for i, stage in enumerate(self.stages):
            if stage.get("mode") not in MODES or int(stage.get("steps", -1)) < 0:
                raise ValueError(f"stages[{i}]: needs mode in {MODES} and steps >= 0, got {stage}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype: {self.dtype!r} is not auto, float32 or bfloat16")
        if self.rollout_engine not in ("transformers", "vllm"):
            raise ValueError(f"rollout_engine: {self.rollout_engine!r} is not transformers or vllm")
        if self.frame_sampling not in ("exact", "qwen"):
            raise ValueError(f"frame_sampling: {self.frame_sampling!r} is not exact or qwen")
        from tempsamp.train.parallel import MODES as DISTRIBUTED

        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"distributed: {self.distributed!r} is not one of {', '.join(DISTRIBUTED)}")
        if self.rollout_engine == "vllm" and self.distributed not in ("ddp", "zero2"):
            raise ValueError(f"rollout_engine=vllm with distributed={self.distributed}: pushing sharded weights into "
                             "vLLM is not supported yet; use distributed=ddp or zero2, or rollout_engine=transformers")
        if self.aggregation not in ("token_mean", "sequence_mean"):
            raise ValueError(f"aggregation: {self.aggregation!r} is not token_mean or sequence_mean")
        for key, allowed in (("anchor_tied", ANCHOR_TIED), ("offpolicy_loss", ("ratio", "luffy")),
                             ("gt_think_loss", ("train", "mask")), ("highlight_f2", ("windows", "clips"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.updates_per_rollout < 1:
            raise ValueError(f"updates_per_rollout: {self.updates_per_rollout} must be at least 1")
        if self.updates_per_rollout > 1 and self.uses_offpolicy and self.offpolicy_loss == "ratio":
            raise ValueError(
                f"updates_per_rollout={self.updates_per_rollout} with strategy {self.strategy!r}: the GT row was never "
                "sampled, so clipping its ratio to the pre-update policy stops a low-probability GT token from learning. "
                "Set offpolicy_loss=luffy (no clipping for the GT row) or updates_per_rollout=1")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(key: str, value):
    """Give a value its field's type: YAML 1.1 reads ``2e-6`` as a string, users write it anyway."""
    kind = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}.get(key, "")
    if isinstance(value, str) and value.lower() in ("none", "null", "~") and "None" in kind:
        return None
    try:
        if isinstance(value, str) and kind.startswith("float"):
            return float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and kind.startswith("float"):
            return float(value)
        if isinstance(value, str) and kind.startswith("int"):
            return int(value)
    except ValueError:
        raise ValueError(f"config key {key!r}: {value!r} is not a {kind.split()[0]}") from None
    return value


def _find_recipe(recipe: str | Path) -> Path:
    path = Path(recipe)
    if not path.exists() and (RECIPES_DIR / f"{recipe}.yaml").exists():
        path = RECIPES_DIR / f"{recipe}.yaml"
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"recipe {recipe!r} not found (shipped recipes: {shipped})")
    return path


def read_recipe(recipe: str | Path, _seen: tuple = ()) -> dict:
    """A recipe's keys; ``base: OTHER`` first loads OTHER (a shipped name or a path) and overrides it."""
    path = _find_recipe(recipe)
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe is a mapping of TrainConfig keys")
    base = values.pop("base", None)
    if base is None:
        return values
    if str(base) in _seen:
        raise ValueError(f"{path}: recipe inheritance loops through {base!r}")
    return {**read_recipe(base, _seen + (str(base),)), **values}


def load_config(recipe: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """A recipe (path, or the name of a shipped recipe) plus ``key=value`` overrides."""
    values = read_recipe(recipe) if recipe else {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        values[key.strip()] = yaml.safe_load(value) if value else ""
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
    return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()}).validate()
