"""Per-token log-probs (and entropy) of completions, with the video, in one forward per batch."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from tempsamp.models.qwen_vl.families import family_of, IMAGE_KEYS, TOKEN_KEYS
from tempsamp.models.qwen_vl.positions import use_original_positions


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
