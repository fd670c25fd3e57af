"""Prompts (chat layout, video block, pixel budget) and tokens (stop, pad, completions, masks)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from tempsamp.models.qwen_vl.families import TOKEN_KEYS, unwrap


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


# The chat template's own thinking switch is off: whether the model reasons is the prompt mode's
# choice (answer, or cot with its <think> format), and Qwen3.5's template, which has the switch, then
# ends the generation prompt as the peers' training did (the verl re-implementation passes
# enable_thinking=False). Templates without the switch (Qwen2/2.5/3-VL) ignore it.
TEMPLATE_SWITCHES = {"enable_thinking": False}


def chat_text(processor, prompt_text: str, system_prompt: str | None = None, video_first: bool = True) -> str:
    """The chat template's text for one video query, as the family's release-era processor expected it.

    Qwen3-VL: the template writes ``<|vision_start|><|video_pad|><|vision_end|>``; transformers 4.57
    (Qwen3-VL's release) replaced that whole triple with the timestamped slices, each with its own
    vision start/end, while 5.x replaces only the pad and leaves an extra outer pair. Writing the bare
    pad gives 4.57's token sequence under 5.x.
    """
    text = processor.apply_chat_template(chat_messages(prompt_text, system_prompt, video_first=video_first),
                                         tokenize=False, add_generation_prompt=True, **TEMPLATE_SWITCHES)
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
    text = processor.apply_chat_template(chat_messages(prompt_text, media="image"), tokenize=False, add_generation_prompt=True,
                                         **TEMPLATE_SWITCHES)
    inputs = processor(text=[text], images=[np.asarray(image)], return_tensors="pt")
    inputs = {key: value for key, value in inputs.items() if isinstance(value, torch.Tensor)}
    if device is not None:
        inputs = {key: value.to(device) for key, value in inputs.items()}
    return inputs


def prompt_length(prompt_inputs: Mapping[str, torch.Tensor]) -> int:
    return prompt_inputs["input_ids"].shape[1]


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
