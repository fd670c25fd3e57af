"""Everything specific to the Qwen-VL model family, in one place.

The trainer and the inference code speak to the model only through this module:

    model, processor = load_policy(path)
    prompt = build_prompt(processor, prompt_text, frames, fps)         # one query, batch 1
    ids, texts = generate(model, processor, prompt, num_samples=G - 1, max_new_tokens=256)
    ids.append(completion_ids(processor, ground_truth_text))            # the off-policy row
    batch = group_batch(prompt, ids, pad_token_id(processor))           # G rows, video repeated
    batch = groups_batch(prompts, ids_lists, pad_token_id(processor))   # several groups, one forward
    logprobs = completion_logprobs(model, batch)                        # [G, L], with the video
    with model.disable_adapter():                                       # LoRA: the reference
        ref_logprobs = completion_logprobs(model, batch)

What the family needs, and why (transformers 5.23):

- Video goes in as already-decoded frames (uint8 [T, H, W, 3]) plus ``VideoMetadata`` and
  ``do_sample_frames=False``: the processor must not resample, and it reads the sampled frame rate
  from the metadata (``sampled_fps = len(frames_indices) / total_num_frames * fps``).
- Qwen2.5-VL places video tokens on a time axis: the temporal rotary position of grid slice k is
  ``k * tokens_per_second * second_per_grid_ts`` with ``second_per_grid_ts = temporal_patch_size /
  fps`` (2 frames at 2 fps -> 1 s per slice). This is what makes answers in seconds learnable.
- Every forward pass (sampling, policy, old policy, reference) must carry ``mm_token_type_ids``
  (without it the model silently falls back to 1-D text positions and ignores time),
  ``video_grid_thw`` and ``second_per_grid_ts``, besides the pixels. ``MODEL_INPUT_KEYS`` lists
  them and ``completion_logprobs`` refuses a batch that lacks one.
- ``second_per_grid_ts`` is a tensor with one entry per video: repeating a prompt for G rows
  means ``.repeat(G)``, not ``* G`` (which would silently scale time by G).
- Log-probs come from a forward with ``logits_to_keep`` = completion length + 1: the model then
  projects only the positions that predict completion tokens (full-vocabulary logits for the
  video and prompt positions cost seconds and gigabytes per step).
- Qwen2-VL (no absolute time: temporal positions are grid indices) and Qwen3-VL (time written
  into the prompt as "<t seconds>" text before each frame, computed from the metadata) are
  supported through the same calls; ``FAMILIES`` records what each needs.

Decisions (also in docs/decisions.md, "Model adapter"):
- Completions end with the stop token the model produced (``<|im_end|>`` normally) and include it:
  the policy must learn when to stop. ``completion_ids`` writes an off-policy text the same way.
- Sampling overrides the checkpoint's generation_config sampling knobs (instruct checkpoints ship
  near-greedy defaults such as a tiny temperature, top_k, a repetition penalty; transformers' own
  default is top_k=50): only the given temperature and top_p apply, top_k is off, repetition
  penalty 1, so the sampled distribution is the one ``completion_logprobs`` scores.
- Entropy is returned detached (for monitoring); log-probs carry gradients. Padded completion
  positions hold 0 in both.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------
# What each family's forward pass needs
# ----------------------------------------------------------------------------------------------

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
)

# The inputs every Qwen2.5-VL forward pass must carry (the project's main family).
MODEL_INPUT_KEYS = FAMILIES["qwen2_5_vl"].input_keys

# The modules LoRA adapts by default: the language model's attention and MLP projections.
# A regex (peft full-matches it) because the vision tower's MLP uses the same layer names.
LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


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


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_policy(
    path_or_hub_id: str,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    attn_implementation: str | None = None,
):
    """Load (model, processor) from a local folder or hub id, dispatching on config.model_type.

    dtype: e.g. torch.bfloat16 or "auto"; None keeps transformers' default.
    attn_implementation: "sdpa", "eager", "flash_attention_2", ...; None keeps the default.
    """
    import transformers
    from transformers import AutoConfig, AutoProcessor

    family = family_of(AutoConfig.from_pretrained(path_or_hub_id))
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = getattr(transformers, family.model_class).from_pretrained(path_or_hub_id, **kwargs)
    if device is not None:
        model.to(device)
    use_original_positions(model)
    processor = AutoProcessor.from_pretrained(path_or_hub_id)
    return model, processor


# ----------------------------------------------------------------------------------------------
# Prompt
# ----------------------------------------------------------------------------------------------


def chat_messages(prompt_text: str, system_prompt: str | None = None, media: str = "video",
                  video_first: bool = True) -> list[dict]:
    """One user turn: the video (or image) then the text, or the text first (``video_first=False``, as
    TimeZero and VideoChat-R1 ask). No system message unless given: the chat template then writes its
    default one. Blocks are typed ("type" is what templates test)."""
    messages = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    blocks = [{"type": media}, {"type": "text", "text": prompt_text}]
    messages.append({"role": "user", "content": blocks if video_first else blocks[::-1]})
    return messages


def chat_text(processor, prompt_text: str, system_prompt: str | None = None, video_first: bool = True) -> str:
    """The chat template's text for one video query, as the family's release-era processor expected it.

    Qwen3-VL: the template writes ``<|vision_start|><|video_pad|><|vision_end|>``; transformers 4.57
    (Qwen3-VL's release) replaced that whole triple with the timestamped slices, each with its own
    vision start/end, while 5.x replaces only the pad and leaves an extra outer pair. Writing the bare
    pad gives 4.57's token sequence under 5.x.
    """
    text = processor.apply_chat_template(chat_messages(prompt_text, system_prompt, video_first=video_first),
                                         tokenize=False, add_generation_prompt=True)
    if writes_time_as_text(processor):
        text = text.replace("<|vision_start|><|video_pad|><|vision_end|>", "<|video_pad|>")
    return text


def frame_factor(processor) -> int:
    """Frame sides must be multiples of this: the video patch size x the spatial merge (28 for
    Qwen2/2.5-VL, 32 for Qwen3-VL); the sampler sizes frames with it, as qwen-vl-utils does."""
    video_processor = getattr(processor, "video_processor", processor)
    return int(video_processor.patch_size * video_processor.merge_size)


def pinned_frames(processor) -> dict:
    """Processor options that keep sampled frames as they are (tempsamp.video sized them already).

    Qwen2/2.5-VL's video processor resizes to its own ``size`` bounds unless told not to; the class
    defaults (128-768 tokens per frame) would enlarge small frames, a checkpoint's preprocessor
    config would shrink large ones. Off, unless ``set_video_budget`` made the processor the budget.
    Qwen3-VL's processor keeps its own resize (its bounds are per clip): frames the sampler sized for
    it (``frame_factor`` 32) are left as they are; other sizes are rounded to multiples of 32.
    """
    from transformers import Qwen2VLVideoProcessor

    video_processor = getattr(processor, "video_processor", None)
    if isinstance(video_processor, Qwen2VLVideoProcessor) and not getattr(video_processor, "tempsamp_budget", False):
        return {"do_resize": False}
    return {}


def video_metadata(num_frames: int, fps: float, height: int | None = None, width: int | None = None,
                   source_frames: tuple[Sequence[int], float] | None = None):
    """Metadata for frames sampled at `fps` starting at t = 0: frame i was shown at i / fps.

    The frames are described as the whole video (frames_indices = 0..T-1), so the processor's
    sampled_fps is exactly `fps` (Qwen2/2.5-VL's second_per_grid_ts = 2 / fps), and Qwen3-VL's
    timestamps are i / fps. ``source_frames`` = (each frame's index in the source, the source's
    frame rate) describes them as qwen-vl-utils does instead (Qwen3-VL then writes index / rate,
    averaged over each 2-frame slice, as its release-era stack did); only for families that write
    time as text (``build_prompt`` decides).
    """
    from transformers.video_utils import VideoMetadata

    if not fps > 0:
        raise ValueError(f"video_metadata: fps must be positive, got {fps}")
    if source_frames is not None:
        indices, rate = source_frames
        return VideoMetadata(total_num_frames=max(indices) + 1, fps=float(rate), width=width, height=height,
                             duration=(max(indices) + 1) / float(rate), frames_indices=list(indices))
    return VideoMetadata(
        total_num_frames=num_frames,
        fps=float(fps),
        width=width,
        height=height,
        duration=num_frames / float(fps),
        frames_indices=list(range(num_frames)),
    )


def writes_time_as_text(processor) -> bool:
    """Qwen3-VL (and its successors) write each slice's time into the prompt rather than the positions."""
    return type(processor).__name__.startswith("Qwen3")


def set_video_budget(processor, *, frame_tokens: int, video_tokens: int | None = None, min_frame_tokens: int = 4):
    """Bound the video's cost, in merged video tokens (one per 28x28 pixels); returns the processor.

    frame_tokens: at most this many tokens per grid slice (frames are resized, aspect kept).
    video_tokens: at most about this many over the whole clip (frames shrink further when the clip
    is long, but not below min_frame_tokens), None for no clip-wide bound.
    Set on the processor rather than passed per call: Qwen2VLVideoProcessor reads the clip bound
    from its own `max_video_tokens` attribute, and implements it as qwen-vl-utils does, as 90% of
    that number (hence the 1/0.9 below).
    """
    from transformers import Qwen2VLVideoProcessor
    from transformers.image_utils import SizeDict

    video_processor = processor.video_processor
    if not isinstance(video_processor, Qwen2VLVideoProcessor):
        raise ValueError(
            f"set_video_budget: written for Qwen2/Qwen2.5-VL video processors, not "
            f"{type(video_processor).__name__} (whose size means pixels per clip); "
            "pass processor_kwargs to build_prompt instead"
        )
    if not 1 <= min_frame_tokens <= frame_tokens:
        raise ValueError(
            f"set_video_budget: need 1 <= min_frame_tokens <= frame_tokens, got {min_frame_tokens}, {frame_tokens}"
        )
    token_pixels = (video_processor.patch_size * video_processor.merge_size) ** 2
    video_processor.size = SizeDict(
        shortest_edge=min_frame_tokens * token_pixels, longest_edge=frame_tokens * token_pixels
    )
    video_processor.cap_pixels_per_frame = video_tokens is not None
    video_processor.tempsamp_budget = True  # the processor now sizes frames (pinned_frames leaves it on)
    if video_tokens is not None:
        video_processor.max_video_tokens = int(np.ceil(video_tokens / 0.9))
    return processor


def build_prompt(
    processor,
    prompt_text: str,
    frames: np.ndarray,
    fps: float,
    *,
    system_prompt: str | None = None,
    video_first: bool = True,
    device: torch.device | str | None = None,
    processor_kwargs: Mapping[str, Any] | None = None,
    source_frames: tuple[Sequence[int], float] | None = None,
) -> dict[str, torch.Tensor]:
    """The model inputs for one query (batch 1): chat template with a video block and the text.

    frames: uint8 [T, H, W, 3], sampled at `fps` (decoded elsewhere). An odd T gets its last frame
    repeated by the processor (frames are paired into grid slices of temporal_patch_size = 2).
    processor_kwargs: extra processor options, e.g. {"size": {"shortest_edge": ..., "longest_edge": ...}}
    for the per-frame pixel budget.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(
            f"build_prompt: frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}"
        )
    text = chat_text(processor, prompt_text, system_prompt, video_first)
    metadata = video_metadata(len(frames), fps, height=frames.shape[1], width=frames.shape[2],
                              source_frames=source_frames if writes_time_as_text(processor) else None)
    inputs = processor(
        text=[text],
        videos=[frames],
        video_metadata=[metadata],
        do_sample_frames=False,
        return_tensors="pt",
        **{**pinned_frames(processor), **(processor_kwargs or {})},
    )
    inputs = {key: value for key, value in inputs.items() if isinstance(value, torch.Tensor)}
    if "second_per_grid_ts" in inputs:  # a float list in some versions; the model wants a tensor
        inputs["second_per_grid_ts"] = torch.as_tensor(inputs["second_per_grid_ts"], dtype=torch.float32)
    if device is not None:
        inputs = {key: value.to(device) for key, value in inputs.items()}
    return inputs


def build_image_prompt(processor, prompt_text: str, image: np.ndarray, *, device=None) -> dict[str, torch.Tensor]:
    """The model inputs for one query about one image (uint8 [H, W, 3]); for image-only comparisons.

    The training loop works on videos; this exists so that the same loop pieces (generate,
    group_batch, completion_logprobs) can be measured on the image prompts other trainers handle.
    """
    text = processor.apply_chat_template(chat_messages(prompt_text, media="image"), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[np.asarray(image)], return_tensors="pt")
    inputs = {key: value for key, value in inputs.items() if isinstance(value, torch.Tensor)}
    if device is not None:
        inputs = {key: value.to(device) for key, value in inputs.items()}
    return inputs


def prompt_length(prompt_inputs: Mapping[str, torch.Tensor]) -> int:
    return prompt_inputs["input_ids"].shape[1]


# ----------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def stop_token_ids(processor) -> list[int]:
    """Tokens that end a completion: <|im_end|> (end of the assistant turn) and the tokenizer's eos."""
    tokenizer = _tokenizer(processor)
    ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    return list(dict.fromkeys(i for i in ids if i is not None))


def pad_token_id(processor) -> int:
    tokenizer = _tokenizer(processor)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return pad


def completion_ids(processor, text: str) -> list[int]:
    """Token ids of an off-policy completion, written as a sampled completion is: text + <|im_end|>.

    The text must be plain (no special-token strings): the ground truth is an answer, not markup.
    """
    tokenizer = _tokenizer(processor)
    for special in tokenizer.all_special_tokens:
        if special in text:
            raise ValueError(f"completion_ids: the text contains the special token {special!r}: {text!r}")
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [stop_token_ids(processor)[0]]


def completion_loss_mask(processor, text: str, exclude: tuple[int, int]) -> list[float]:
    """Per token of ``completion_ids(processor, text)``: 0.0 for tokens whose characters lie wholly
    inside ``text[exclude[0]:exclude[1]]``, else 1.0 (the stop token is always 1.0).

    Used to keep the GT row's fixed think sentence out of the loss; a token straddling the
    boundary stays in (it is partly answer or tag).
    """
    tokenizer = _tokenizer(processor)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start, end = exclude
    mask = [0.0 if start <= a and b <= end and b > a else 1.0 for a, b in encoded["offset_mapping"]]
    return mask + [1.0]


def placeholder_token_ids(model) -> list[int]:
    """The image and video placeholder token ids of the model's config (never a valid output)."""
    config = unwrap(getattr(model, "module", model)).config
    return [i for i in (getattr(config, "image_token_id", None), getattr(config, "video_token_id", None)) if i is not None]


def trim_at_stop(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """Generated ids up to and including the first stop token (everything after is padding)."""
    ids = list(ids)
    for i, token in enumerate(ids):
        if token in stop_ids:
            return ids[: i + 1]
    return ids


class Completions(NamedTuple):
    ids: list[list[int]]  # per sample: generated ids, ending with the stop token unless truncated
    texts: list[str]  # decoded, special tokens stripped


def generate(
    model,
    processor,
    prompt_inputs: Mapping[str, torch.Tensor],
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    do_sample: bool = True,
    seed: int | None = None,
) -> Completions:
    """Sample `num_samples` completions of one prompt (the video is encoded once).

    The model is put in eval mode for sampling (no dropout) and restored after. Seed torch's
    global RNG before the call for reproducible samples, or pass ``seed``: the draws then come from
    a generator of their own (``SeededSampler``), the same ones ``generate_batch`` makes for this
    prompt in any batch.
    """
    if num_samples < 1:
        raise ValueError(f"generate: num_samples must be >= 1, got {num_samples}")
    if not do_sample and num_samples > 1:
        raise ValueError("generate: greedy decoding (do_sample=False) gives one completion; set num_samples=1")
    if seed is not None:
        return generate_batch(model, processor, prompt_inputs, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, do_sample=True, num_samples=num_samples, seeds=[seed])
    config = _generation_config(model, processor, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                temperature=temperature, top_p=top_p, num_return_sequences=num_samples)
    return _run_generate(model, processor, prompt_inputs, config)


# ----------------------------------------------------------------------------------------------
# Scoring a group
# ----------------------------------------------------------------------------------------------


def group_batch(
    prompt_inputs: Mapping[str, torch.Tensor],
    completion_ids_list: Sequence[Sequence[int]],
    pad_id: int,
) -> dict[str, Any]:
    """A batch of G rows: the one prompt followed by each completion, right-padded.

    Returns the model inputs (token inputs [G, P + L]; the video inputs repeated once per row)
    plus ``completion_mask`` [G, L] (1.0 on completion tokens, 0.0 on padding) and
    ``logits_to_keep`` = L + 1 (the logits that predict completion tokens: positions P-1 .. P+L-2).
    """
    if prompt_inputs["input_ids"].shape[0] != 1:
        raise ValueError(f"group_batch: expects one prompt (batch 1), got {prompt_inputs['input_ids'].shape[0]}")
    if len(completion_ids_list) == 0:
        raise ValueError("group_batch: no completions")
    num_rows = len(completion_ids_list)
    length = max(len(ids) for ids in completion_ids_list)
    if length == 0:
        raise ValueError("group_batch: every completion is empty")
    device = prompt_inputs["input_ids"].device

    completions = torch.full((num_rows, length), pad_id, dtype=torch.long, device=device)
    completion_mask = torch.zeros((num_rows, length), dtype=torch.float32, device=device)
    for row, ids in enumerate(completion_ids_list):
        completions[row, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long, device=device)
        completion_mask[row, : len(ids)] = 1.0

    prompt_ids = prompt_inputs["input_ids"].expand(num_rows, -1)
    prompt_mask = prompt_inputs.get("attention_mask", torch.ones_like(prompt_inputs["input_ids"])).expand(num_rows, -1)
    batch: dict[str, Any] = {
        "input_ids": torch.cat([prompt_ids, completions], dim=1),
        "attention_mask": torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], dim=1),
    }
    if "mm_token_type_ids" in prompt_inputs:  # completions are text: type 0
        prompt_types = prompt_inputs["mm_token_type_ids"].expand(num_rows, -1)
        completion_types = torch.zeros_like(completions, dtype=prompt_types.dtype)
        batch["mm_token_type_ids"] = torch.cat([prompt_types, completion_types], dim=1)
    for key in VIDEO_KEYS + IMAGE_KEYS:
        if key in prompt_inputs:
            value = prompt_inputs[key]
            # All of the prompt's videos once per row, in row order: [v1, v2, v1, v2, ...].
            batch[key] = value.repeat(num_rows, *([1] * (value.dim() - 1)))
    batch["completion_mask"] = completion_mask
    batch["logits_to_keep"] = length + 1
    return batch


def groups_batch(
    prompts: Sequence[Mapping[str, torch.Tensor]],
    completion_ids_lists: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
) -> dict[str, Any]:
    """Several groups in one forward: each group's ``group_batch`` rows, stacked in group order.

    Groups have different prompts (other videos, other lengths), so prompts are LEFT-padded to the
    longest (as ``merge_prompts``; get_rope_index drops the attention-0 positions, so a row's rope
    positions are its unpadded ones) and completions RIGHT-padded to the longest, which keeps
    every completion in the last ``L`` columns. Video inputs are concatenated in row order (each
    group's repeated per row by ``group_batch``); ``video_grid_thw``, ``second_per_grid_ts`` and
    ``mm_token_type_ids`` stay one entry per row. ``group_rows`` holds each group's (first row,
    end row, completion length): ``split_groups`` cuts a [rows, L] result back per group.
    A single group gives exactly ``group_batch``'s tensors.
    """
    if len(prompts) != len(completion_ids_lists) or not prompts:
        raise ValueError(f"groups_batch: need as many prompts as completion lists (>= 1), got "
                         f"{len(prompts)} and {len(completion_ids_lists)}")
    parts = [group_batch(p, ids, pad_id) for p, ids in zip(prompts, completion_ids_lists)]
    widths = [prompt_length(p) for p in prompts]
    lengths = [b["completion_mask"].shape[1] for b in parts]
    width, length = max(widths), max(lengths)
    fill = {"input_ids": pad_id, "attention_mask": 0, "mm_token_type_ids": 0}
    batch: dict[str, Any] = {}
    for key in TOKEN_KEYS:
        if key in parts[0]:
            rows = []
            for b, p, n in zip(parts, widths, lengths):
                value = b[key]
                left = value.new_full((value.shape[0], width - p), fill[key])
                right = value.new_full((value.shape[0], length - n), fill[key])
                rows.append(torch.cat([left, value, right], dim=1))
            batch[key] = torch.cat(rows)
    for key in VIDEO_KEYS + IMAGE_KEYS:
        if key in parts[0]:
            batch[key] = torch.cat([b[key] for b in parts])
    batch["completion_mask"] = torch.cat(
        [torch.nn.functional.pad(b["completion_mask"], (0, length - n)) for b, n in zip(parts, lengths)])
    batch["logits_to_keep"] = length + 1
    ends = np.cumsum([b["completion_mask"].shape[0] for b in parts]).tolist()
    batch["group_rows"] = [(end - b["completion_mask"].shape[0], end, n) for b, end, n in zip(parts, ends, lengths)]
    return batch


def split_groups(values: torch.Tensor, batch: Mapping[str, Any]) -> list[torch.Tensor]:
    """A per-row, per-completion-token result [rows, L] of a ``groups_batch`` back to each group's [G, L_group]."""
    return [values[start:end, :length] for start, end, length in batch["group_rows"]]


def model_inputs(model, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The forward kwargs of `batch` for this model's family; an error if one is missing.

    Also makes sure the model computes rotary positions as its checkpoints learnt them.
    """
    use_original_positions(model)
    family = family_of(model)
    required = family.input_keys
    if "pixel_values" in batch and "pixel_values_videos" not in batch:  # an image prompt
        required = TOKEN_KEYS + IMAGE_KEYS
    missing = [key for key in required if key not in batch]
    if missing:
        raise KeyError(
            f"{family.model_type}: the batch lacks {missing}; every forward pass must carry {list(family.input_keys)}"
        )
    return {key: batch[key] for key in required}


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / temperature)[target] per position, and optionally the entropy.

    Computed row by row as logit[target] - logsumexp(logits), so no full-vocabulary log-softmax
    of the whole group is materialised (with fp32 logits and temperature 1, no copy at all).
    Entropy is detached.
    """
    logprobs, entropies = [], []
    for row_logits, row_targets in zip(logits, targets):
        row_logits = row_logits.float()
        if temperature != 1.0:
            row_logits = row_logits / temperature
        lse = torch.logsumexp(row_logits, dim=-1)
        logprobs.append(row_logits.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1) - lse)
        if with_entropy:
            with torch.no_grad():
                probs = torch.softmax(row_logits, dim=-1)
                entropies.append(lse - (probs * row_logits).sum(-1))
    return torch.stack(logprobs), (torch.stack(entropies) if with_entropy else None)


def completion_logprobs(
    model, batch: Mapping[str, Any], *, temperature: float = 1.0, with_entropy: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [G, L] of the completion tokens (0 on padding), from a forward WITH the video.

    with_entropy: also return the per-token entropy [G, L] (detached).
    Runs in whatever mode the model is in (train: dropout active) and with grad unless the caller
    wraps it in torch.no_grad().
    """
    completion_mask = batch["completion_mask"]
    length = completion_mask.shape[1]
    outputs = model(**model_inputs(model, batch), logits_to_keep=length + 1, use_cache=False)
    logits = outputs.logits[:, :-1, :]  # position t predicts token t + 1
    targets = batch["input_ids"][:, -length:]
    logprobs, entropy = token_logprobs(logits, targets, temperature, with_entropy)
    padding = completion_mask == 0
    logprobs = logprobs.masked_fill(padding, 0.0)
    if with_entropy:
        return logprobs, entropy.masked_fill(padding, 0.0)
    return logprobs


def rope_position_ids(model, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The 3-D rotary position ids [3, B, S] (temporal, height, width) the model uses for `inputs`."""
    inner = use_original_positions(model)
    kwargs = {key: inputs[key] for key in ("video_grid_thw", "second_per_grid_ts", "attention_mask") if key in inputs}
    positions, _ = inner.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], **kwargs)
    return positions


# ----------------------------------------------------------------------------------------------
# Rotary positions as the released checkpoints learnt them
# ----------------------------------------------------------------------------------------------
#
# Qwen2-VL and Qwen2.5-VL were trained (and every grounding model built on them was fine-tuned and
# evaluated) with the original ``get_rope_index`` (transformers 4.45-4.51, and vLLM): the text after
# an image or video continues at the vision block's LARGEST position over the three axes + 1. For a
# video that largest position is usually on the time axis (Qwen2.5-VL: slice k at
# floor(k * second_per_grid_t * tokens_per_second); Qwen2-VL: k). transformers 5.x continues at the
# block's start + max(h, w) // merge instead, which ignores time: with tokens_per_second 2 the query
# and the answer after a 30-s clip sit ~50 positions earlier than the checkpoint learnt, after a 150-s
# clip ~290. ``use_original_positions`` puts the original rule in the model's own ``get_rope_index``,
# so every path that computes positions (forward, generate's pre-fill and the rope deltas its decode
# steps add, left-padded and packed batches) uses it. Qwen3-VL writes time as text and gives each
# frame its own grid (t = 1), where the two rules agree: its transformers rule is kept.

ORIGINAL_POSITION_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
POSITION_RULE = "original"  # recorded where a stored model depends on it (the SFT start model's digest)


def original_rope_index(
    config,
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2-VL / Qwen2.5-VL rotary positions [3, B, S] by the original rule, and the rope deltas [B, 1].

    Vision blocks are the runs of ``mm_token_type_ids`` 1 (image) and 2 (video), in order. A block of
    grid (t, h, w) (h, w after the 2x2 merge) starting at position s gets (s + time(k), s + i, s + j);
    text continues at the block's largest position + 1. time(k) is computed exactly as transformers
    4.51 did (int64 k times a float32 seconds-per-slice times tokens_per_second, then floored), so
    non-integer frame rates round the same way. Padded positions (attention 0) hold 0 and are skipped.
    ``generate`` continues from the prompt's last position + 1 per new token, which is the original
    decoding rule once the prompt's positions are. The deltas (used by a forward with a cache and no
    positions) follow transformers 5.x's meaning: position = cumsum(attention_mask) - 1 + delta.
    """
    vision_config = config.vision_config
    merge = vision_config.spatial_merge_size
    timed = config.model_type == "qwen2_5_vl"
    tokens_per_second = getattr(vision_config, "tokens_per_second", 1)
    positions = torch.zeros(3, *input_ids.shape, dtype=input_ids.dtype, device=input_ids.device)
    grids = {1: iter(image_grid_thw if image_grid_thw is not None else []),
             2: iter(video_grid_thw if video_grid_thw is not None else [])}
    seconds = iter(second_per_grid_ts if second_per_grid_ts is not None else [])
    deltas = []
    for row in range(input_ids.shape[0]):
        kept = attention_mask[row].bool() if attention_mask is not None else torch.ones_like(input_ids[row], dtype=torch.bool)
        parts, start = [], 0
        for kind, run in itertools.groupby(mm_token_type_ids[row][kept].tolist()):
            length = len(list(run))
            if kind == 0:  # text: one position per token on all three axes
                parts.append(torch.arange(length).view(1, -1).expand(3, -1) + start)
            else:  # 1 image, 2 video
                t, h, w = (int(v) for v in next(grids[kind]))
                h, w = h // merge, w // merge
                if length != t * h * w:
                    raise ValueError(f"original_rope_index: a vision block of {length} tokens for grid {(t, h, w)}")
                slices = torch.arange(t).view(-1, 1).expand(-1, h * w)
                if kind == 2 and timed:  # Qwen2.5-VL video: seconds x tokens_per_second
                    second = next(seconds) if second_per_grid_ts is not None else 1.0
                    slices = (slices * second * tokens_per_second).long()
                h_index = torch.arange(h).view(1, -1, 1).expand(t, -1, w).flatten()
                w_index = torch.arange(w).view(1, 1, -1).expand(t, h, -1).flatten()
                parts.append(torch.stack([slices.flatten().to(h_index.device), h_index, w_index]) + start)
            start = int(parts[-1].max()) + 1
        row_positions = torch.cat(parts, dim=1) if parts else torch.zeros(3, 0, dtype=torch.long)
        positions[:, row, kept] = row_positions.to(positions.device, positions.dtype)
        deltas.append(start - int(kept.sum()))
    return positions, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)


def _vl_model(model):
    """The model's inner Qwen*VLModel (the one that owns ``get_rope_index``), through DDP / DeepSpeed /
    FSDP / peft wrappers."""
    model = getattr(model, "module", model)
    model = unwrap(model)
    return model.model


def use_original_positions(model):
    """Make ``model`` compute rotary positions by the original rule (see above); returns the inner model.

    Idempotent and cheap: the adapter calls it before every forward and every generate, so a model
    loaded anywhere gets it. Families whose transformers rule is the original one are left alone.
    """
    inner = _vl_model(model)
    if family_of(inner.config).model_type in ORIGINAL_POSITION_FAMILIES and not getattr(inner, "_original_positions", False):
        config = inner.config

        def get_rope_index(input_ids, mm_token_type_ids=None, image_grid_thw=None, video_grid_thw=None,
                           second_per_grid_ts=None, attention_mask=None, **_):
            return original_rope_index(config, input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw,
                                       second_per_grid_ts, attention_mask)

        inner.get_rope_index = get_rope_index
        inner._original_positions = True
    return inner


# ----------------------------------------------------------------------------------------------
# Training set-up
# ----------------------------------------------------------------------------------------------


def vision_tower(model) -> torch.nn.Module:
    return unwrap(model).model.visual


def freeze_vision_tower(model) -> None:
    """No gradients for the vision encoder and its merger (the paper's set-up keeps them frozen)."""
    for parameter in vision_tower(model).parameters():
        parameter.requires_grad_(False)


def apply_lora(
    model,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | Sequence[str] | None = None,
    freeze_vision: bool = True,
):
    """Wrap the model with peft LoRA adapters on the language model's linear layers.

    The reference policy is then the same model with the adapters off: ``with
    model.disable_adapter(): ...`` (no second copy of the weights). The adapters start at zero
    (LoRA's B = 0), so the wrapped model initially computes exactly the base model.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=LANGUAGE_LORA_TARGETS if target_modules is None else target_modules,
        bias="none",
    )
    with warnings.catch_warnings():  # peft 0.21 reads transformers' deprecated alias; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    if freeze_vision:
        freeze_vision_tower(peft_model)
    return peft_model


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass (non-reentrant: works with frozen inputs and LoRA)."""
    inner = unwrap(model)
    inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    inner.config.use_cache = False


# ----------------------------------------------------------------------------------------------
# Batched prompts (inference: several queries, each with its own video, in one generate call)
# ----------------------------------------------------------------------------------------------


def build_prompt_batch(
    processor,
    prompt_texts: Sequence[str],
    frames_list: Sequence[np.ndarray],
    fps_list: Sequence[float],
    *,
    system_prompt: str | None = None,
    video_first: bool = True,
    device: torch.device | str | None = None,
    processor_kwargs: Mapping[str, Any] | None = None,
    source_frames: Sequence[tuple[Sequence[int], float] | None] | None = None,
) -> dict[str, torch.Tensor]:
    """The model inputs for B queries, one video each, in ONE processor call, LEFT-padded.

    Left padding puts every row's last prompt token at the same column, so ``generate`` appends
    each row's new tokens right after its own prompt. Row i's video is video i:
    ``pixel_values_videos`` holds the videos' patches in row order, ``video_grid_thw`` [B, 3] and
    ``second_per_grid_ts`` [B] one entry per row, ``mm_token_type_ids`` [B, S] (0 on padding).
    The rope positions of a padded row equal the unpadded row's: get_rope_index drops the
    positions where attention_mask is 0 (checked by tests/test_inference.py, batched == batch 1).
    """
    if not (len(prompt_texts) == len(frames_list) == len(fps_list)) or not prompt_texts:
        raise ValueError(
            f"build_prompt_batch: need as many texts, videos and fps values (>= 1), got "
            f"{len(prompt_texts)}, {len(frames_list)}, {len(fps_list)}"
        )
    frames_list = [np.asarray(frames) for frames in frames_list]
    for i, frames in enumerate(frames_list):
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(
                f"build_prompt_batch: video {i}: frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}"
            )
    texts = [chat_text(processor, text, system_prompt, video_first) for text in prompt_texts]
    sources = source_frames if source_frames is not None and writes_time_as_text(processor) else [None] * len(frames_list)
    metadata = [
        video_metadata(len(frames), fps, height=frames.shape[1], width=frames.shape[2], source_frames=source)
        for frames, fps, source in zip(frames_list, fps_list, sources)
    ]
    tokenizer = _tokenizer(processor)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        inputs = processor(
            text=texts,
            videos=list(frames_list),
            video_metadata=metadata,
            do_sample_frames=False,
            padding=True,
            return_tensors="pt",
            **{**pinned_frames(processor), **(processor_kwargs or {})},
        )
    finally:
        tokenizer.padding_side = side
    inputs = {key: value for key, value in inputs.items() if isinstance(value, torch.Tensor)}
    if "second_per_grid_ts" in inputs:
        inputs["second_per_grid_ts"] = torch.as_tensor(inputs["second_per_grid_ts"], dtype=torch.float32)
    if device is not None:
        inputs = {key: value.to(device) for key, value in inputs.items()}
    return inputs


def split_prompt_batch(batch_inputs: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The B batch-1 prompts of a (left-)padded ``build_prompt_batch`` result, padding removed.

    Each is what ``build_prompt`` gives for that query alone (one video per row), so per-query
    code (``group_batch``, ``completion_logprobs``) runs on it unchanged.
    """
    mask = batch_inputs["attention_mask"].bool()
    grids = batch_inputs.get("video_grid_thw")
    if grids is not None and grids.shape[0] != mask.shape[0]:
        raise ValueError(f"split_prompt_batch: expects one video per row, got {grids.shape[0]} videos for {mask.shape[0]} rows")
    patch_ends = grids.prod(-1).cumsum(0).tolist() if grids is not None else []
    prompts = []
    for row in range(mask.shape[0]):
        prompt = {key: batch_inputs[key][row : row + 1, mask[row]] for key in TOKEN_KEYS if key in batch_inputs}
        if grids is not None:
            start = patch_ends[row - 1] if row else 0
            prompt["pixel_values_videos"] = batch_inputs["pixel_values_videos"][start : patch_ends[row]]
            for key in ("video_grid_thw", "second_per_grid_ts"):
                if key in batch_inputs:
                    prompt[key] = batch_inputs[key][row : row + 1]
        prompts.append(prompt)
    return prompts


def generate_batch(
    model,
    processor,
    batch_inputs: Mapping[str, torch.Tensor],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    do_sample: bool = False,
    num_samples: int = 1,
    seeds: Sequence[int] | None = None,
    synced_gpus: bool = False,
) -> Completions:
    """``num_samples`` completions per row of a left-padded prompt batch (greedy by default).

    The same generation settings as ``generate`` (stop tokens, no checkpoint sampling knobs,
    placeholder tokens suppressed); rows that stop early are padded by transformers and trimmed
    at their stop token here. Completions come prompt by prompt: prompt 0's samples, then 1's...
    seeds: one per prompt (sampling only): each prompt's samples are drawn from its own generator
    (``SeededSampler``), so they do not depend on which prompts share the batch (up to the
    floating-point effects of batching on the logits). Without seeds, torch's global RNG.
    synced_gpus: keep decoding (forward passes whose tokens are dropped) until every process's
    batch is done, as sharded weights need (each forward is a collective under FSDP2 / ZeRO-3).
    """
    if batch_inputs["attention_mask"][:, -1].eq(0).any():
        raise ValueError("generate_batch: the prompts must be LEFT-padded (build_prompt_batch does this)")
    if num_samples > 1 and not do_sample:
        raise ValueError("generate_batch: greedy decoding gives one completion per prompt; set num_samples=1")
    if seeds is not None:
        if not do_sample or len(seeds) != batch_inputs["input_ids"].shape[0]:
            raise ValueError(f"generate_batch: seeds need do_sample=True and one seed per prompt "
                             f"({batch_inputs['input_ids'].shape[0]}), got {len(seeds)}")
        # The sampler draws every token itself (temperature and top-p included) and transformers
        # only takes the one it left (greedy over its output), so transformers' own warpers and
        # draw are off; each prompt is repeated num_samples times as transformers would.
        sampler = SeededSampler(seeds, num_samples, temperature=temperature, top_p=top_p)
        config = _generation_config(model, processor, max_new_tokens=max_new_tokens, do_sample=False,
                                    temperature=1.0, top_p=1.0)
        return _run_generate(model, processor, repeat_prompts(batch_inputs, num_samples), config, sampler, synced_gpus)
    config = _generation_config(model, processor, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                temperature=temperature, top_p=top_p, num_return_sequences=num_samples)
    return _run_generate(model, processor, batch_inputs, config, synced_gpus=synced_gpus)


def repeat_prompts(batch: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Each row of a prompt batch (one video or image per row) ``n`` times in a row, with its media."""
    if n == 1:
        return dict(batch)
    out = {key: batch[key].repeat_interleave(n, dim=0) for key in TOKEN_KEYS if key in batch}
    for pixels, grid in (("pixel_values_videos", "video_grid_thw"), ("pixel_values", "image_grid_thw")):
        if pixels in batch:
            if batch[grid].shape[0] != batch["input_ids"].shape[0]:
                raise ValueError(f"repeat_prompts: expects one {grid.split('_')[0]} per row")
            chunks = torch.split(batch[pixels], batch[grid].prod(-1).tolist())
            out[pixels] = torch.cat([chunk for chunk in chunks for _ in range(n)])
            out[grid] = batch[grid].repeat_interleave(n, dim=0)
    if "second_per_grid_ts" in batch:
        out["second_per_grid_ts"] = batch["second_per_grid_ts"].repeat_interleave(n)
    return out


class SeededSampler:
    """A logits processor that draws each row's next token from its own prompt's torch.Generator.

    transformers samples every row from torch's one global RNG, so a row's sample depends on the
    rows drawn before it in the batch. Here rows r of prompt r // num_samples draw from generator
    ``seeds[r // num_samples]``, with temperature and top-p applied as transformers does (the
    placeholder suppression and other processors have already run), and the returned logits keep
    only the drawn token, which greedy decoding then takes. The draw is the exponential race
    (argmax p_i / E_i with E_i ~ Exp(1): token i wins with probability p_i), one call per prompt.
    Every prompt's generator advances by the same amount per decoding step whatever else is in
    the batch, so a prompt's samples are the same alone or batched.
    """

    def __init__(self, seeds: Sequence[int], num_samples: int, *, temperature: float, top_p: float):
        if not temperature > 0:
            raise ValueError(f"SeededSampler: temperature must be positive, got {temperature}")
        self.seeds, self.num_samples, self.temperature, self.top_p = list(seeds), num_samples, temperature, top_p
        self.generators = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.generators is None:  # on the scores' device, made at the first step
            self.generators = [torch.Generator(device=scores.device).manual_seed(int(s)) for s in self.seeds]
        logits = scores.float() / self.temperature if self.temperature != 1.0 else scores.float()
        if self.top_p < 1.0:  # transformers' TopPLogitsWarper: drop the low tail whose mass is <= 1 - top_p
            sorted_logits, order = torch.sort(logits, descending=False)
            drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - self.top_p
            drop[..., -1:] = False
            logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        probs = logits.softmax(-1)
        n = self.num_samples
        tokens = torch.cat([
            (probs[i * n:(i + 1) * n] / torch.empty_like(probs[i * n:(i + 1) * n]).exponential_(generator=g)).argmax(-1)
            for i, g in enumerate(self.generators)
        ])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, tokens.unsqueeze(1), 0.0)


def merge_prompts(prompts: Sequence[Mapping[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """One left-padded batch from batch-1 prompts (``build_prompt`` results): the inverse of
    ``split_prompt_batch``, without running the processor again. Token inputs are left-padded
    (pad id, attention 0, token type 0); the video inputs are concatenated in prompt order."""
    if not prompts or any(p["input_ids"].shape[0] != 1 for p in prompts):
        raise ValueError("merge_prompts: expects one or more batch-1 prompts")
    width = max(p["input_ids"].shape[1] for p in prompts)
    batch: dict[str, torch.Tensor] = {}
    fill = {"input_ids": pad_id, "attention_mask": 0, "mm_token_type_ids": 0}
    for key in TOKEN_KEYS:
        if key in prompts[0]:
            rows = []
            for p in prompts:
                value = p.get(key, torch.ones_like(p["input_ids"])) if key == "attention_mask" else p[key]
                pad = torch.full((1, width - value.shape[1]), fill[key], dtype=value.dtype, device=value.device)
                rows.append(torch.cat([pad, value], dim=1))
            batch[key] = torch.cat(rows)
    for key in VIDEO_KEYS + IMAGE_KEYS:
        if key in prompts[0]:
            batch[key] = torch.cat([p[key] for p in prompts])
    return batch


def _generation_config(model, processor, *, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float,
                       num_return_sequences: int = 1):
    """The one set of generation settings both ``generate`` and ``generate_batch`` use."""
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_return_sequences=num_return_sequences,
        eos_token_id=stop_token_ids(processor),
        pad_token_id=pad_token_id(processor),
        # Explicit, so the checkpoint's generation_config cannot change the sampled distribution.
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=0 if do_sample else None,
        repetition_penalty=1.0,
        # A sampled image/video placeholder token would be taken for a missing frame in every
        # later forward ("features and tokens do not match"); a trained model never emits them,
        # a random or drifting one can.
        suppress_tokens=placeholder_token_ids(model) or None,
    )


def _run_generate(model, processor, inputs: Mapping[str, torch.Tensor], config, sampler=None,
                  synced_gpus: bool = False) -> Completions:
    """model.generate in eval mode without gradients, the new tokens trimmed at the stop token."""
    from transformers import LogitsProcessorList

    use_original_positions(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            extra = {"logits_processor": LogitsProcessorList([sampler])} if sampler is not None else {}
            # synced_gpus explicitly: transformers infers it only for models it sharded itself
            sequences = model.generate(**inputs, generation_config=config, synced_gpus=synced_gpus, **extra)
    finally:
        model.train(was_training)
    stops = stop_token_ids(processor)
    ids = [trim_at_stop(row, stops) for row in sequences[:, prompt_length(inputs) :].tolist()]
    return Completions(ids, _tokenizer(processor).batch_decode(ids, skip_special_tokens=True))
