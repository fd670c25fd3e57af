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

# The package by concern (one module each): families (the family table), positions (rotary rule),
# inputs (prompts, tokens), batching (groups as one forward), logprobs, generation, training (loading, LoRA).
# Every name stays importable as qwen_vl.X; callers (and tests that monkeypatch) use that attribute.
from tempsamp.models.qwen_vl.families import (  # noqa: F401
    TOKEN_KEYS, VIDEO_KEYS, IMAGE_KEYS, Family, FAMILIES, MODEL_INPUT_KEYS, unwrap, family_of,
)
from tempsamp.models.qwen_vl.positions import (  # noqa: F401
    ORIGINAL_POSITION_FAMILIES, POSITION_RULE, original_rope_index, _vl_model, use_original_positions,
)
from tempsamp.models.qwen_vl.inputs import (  # noqa: F401
    chat_messages, chat_text, frame_factor, pinned_frames, video_metadata, writes_time_as_text, set_video_budget,
    build_prompt, build_image_prompt, prompt_length, _tokenizer, stop_token_ids, pad_token_id, completion_ids,
    completion_loss_mask, placeholder_token_ids, trim_at_stop, build_prompt_batch, split_prompt_batch,
)
from tempsamp.models.qwen_vl.batching import (  # noqa: F401
    group_batch, groups_batch, split_groups,
)
from tempsamp.models.qwen_vl.logprobs import (  # noqa: F401
    model_inputs, token_logprobs, completion_logprobs, rope_position_ids,
)
from tempsamp.models.qwen_vl.generation import (  # noqa: F401
    Completions, generate, generate_batch, repeat_prompts, SeededSampler, merge_prompts, _generation_config,
    _run_generate,
)
from tempsamp.models.qwen_vl.training import (  # noqa: F401
    LANGUAGE_LORA_TARGETS, load_policy, vision_tower, freeze_vision_tower, apply_lora,
    enable_gradient_checkpointing,
)
