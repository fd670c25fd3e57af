"""A group's rows (and several groups) as one padded forward batch, video repeated per row."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from tempsamp.models.qwen_vl.families import IMAGE_KEYS, TOKEN_KEYS, VIDEO_KEYS
from tempsamp.models.qwen_vl.inputs import prompt_length


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
