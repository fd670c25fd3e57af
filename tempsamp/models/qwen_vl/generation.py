"""Sampling completions: one prompt (G - 1 samples) or a left-padded batch of prompts."""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import torch

from tempsamp.models import qwen_vl
from tempsamp.models.qwen_vl.families import IMAGE_KEYS, TOKEN_KEYS, VIDEO_KEYS
from tempsamp.models.qwen_vl.inputs import (
    _tokenizer, pad_token_id, placeholder_token_ids, prompt_length, stop_token_ids, trim_at_stop,
)
from tempsamp.models.qwen_vl.positions import use_original_positions


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
        # through the package attribute, so a spy on qwen_vl.generate_batch sees this call too
        return qwen_vl.generate_batch(model, processor, prompt_inputs, max_new_tokens=max_new_tokens,
                                      temperature=temperature, top_p=top_p, do_sample=True, num_samples=num_samples,
                                      seeds=[seed])
    config = _generation_config(model, processor, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                temperature=temperature, top_p=top_p, num_return_sequences=num_samples)
    return _run_generate(model, processor, prompt_inputs, config)


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
