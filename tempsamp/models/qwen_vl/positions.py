"""Rotary positions as the released Qwen2-VL / Qwen2.5-VL checkpoints learnt them.

Qwen2-VL and Qwen2.5-VL were trained (and every grounding model built on them was fine-tuned and
evaluated) with the original ``get_rope_index`` (transformers 4.45-4.51, and vLLM): the text after
an image or video continues at the vision block's LARGEST position over the three axes + 1. For a
video that largest position is usually on the time axis (Qwen2.5-VL: slice k at
floor(k * second_per_grid_t * tokens_per_second); Qwen2-VL: k). transformers 5.x continues at the
block's start + max(h, w) // merge instead, which ignores time: with tokens_per_second 2 the query
and the answer after a 30-s clip sit ~50 positions earlier than the checkpoint learnt, after a 150-s
clip ~290. ``use_original_positions`` puts the original rule in the model's own ``get_rope_index``,
so every path that computes positions (forward, generate's pre-fill and the rope deltas its decode
steps add, left-padded and packed batches) uses it. Qwen3-VL writes time as text and gives each
frame its own grid (t = 1), where the two rules agree: its transformers rule is kept.
"""

from __future__ import annotations

import itertools

import torch

from tempsamp.models.qwen_vl.families import family_of, unwrap


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
