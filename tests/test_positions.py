"""Rotary positions as the released Qwen2/Qwen2.5-VL checkpoints learnt them (the original rule).

The parity tests (tests/test_parity.py, `make test-parity`) compare against the reference stack
itself; these run in the main venv and pin the rule and its use in every forward and in generation.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tempsamp.models import qwen_vl

QUERY = "When does the person open the door?"


def frames(num_frames: int, size: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num_frames, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return qwen_vl.load_policy(str(tiny_model_dir))


def stock_positions(model, inputs):
    """transformers' own rule (5.x): text after a video continues at start + max(h, w)."""
    inner = qwen_vl.unwrap(model).model
    stock = type(inner).get_rope_index.__get__(inner)
    kwargs = {k: inputs[k] for k in ("video_grid_thw", "second_per_grid_ts", "attention_mask") if k in inputs}
    return stock(inputs["input_ids"], inputs["mm_token_type_ids"], **kwargs)[0]


def test_text_after_a_video_continues_after_its_last_time_position():
    """Hand case: 10 slices at 1 s each (tokens_per_second 2), 2x2 merged tokens per slice."""
    config = type("C", (), {})()
    config.model_type = "qwen2_5_vl"
    config.vision_config = type("V", (), {"spatial_merge_size": 2, "tokens_per_second": 2})()
    before, t, h, w, after = 3, 10, 4, 4, 5
    video = t * (h // 2) * (w // 2)
    types = torch.tensor([[0] * before + [2] * video + [0] * after])
    ids = torch.zeros_like(types)
    positions, delta = qwen_vl.original_rope_index(
        config, ids, types, video_grid_thw=torch.tensor([[t, h, w]]), second_per_grid_ts=torch.tensor([1.0]))
    temporal = positions[0, 0, before:before + video].reshape(t, -1)
    assert temporal[:, 0].tolist() == [before + 2 * k for k in range(t)]  # 2 positions per second
    last_video = before + 2 * (t - 1)  # 21: the largest position of the block (time dominates h, w = 2)
    assert positions[:, 0, before + video:].tolist() == [list(range(last_video + 1, last_video + 1 + after))] * 3
    # generation continues at the largest position + 1 (decode: cumsum(mask) - 1 + delta)
    assert int(types.shape[1] + delta) == last_video + 1 + after
    # Qwen2-VL: time positions are slice indices
    config.model_type = "qwen2_vl"
    positions, _ = qwen_vl.original_rope_index(config, ids, types, video_grid_thw=torch.tensor([[t, h, w]]))
    assert positions[0, 0, before + video] == before + (t - 1) + 1


def test_padding_is_skipped_and_rows_are_independent():
    config = type("C", (), {})()
    config.model_type = "qwen2_5_vl"
    config.vision_config = type("V", (), {"spatial_merge_size": 2, "tokens_per_second": 2})()
    one = [0, 0] + [2] * 8 + [0, 0, 0]  # 2 slices of 2x2
    types = torch.tensor([[0, 0] + one, one + [0, 0]])
    mask = torch.tensor([[0, 0] + [1] * len(one), [1] * len(one) + [0, 0]])
    grids = torch.tensor([[2, 4, 4], [2, 4, 4]])
    positions, deltas = qwen_vl.original_rope_index(config, torch.zeros_like(types), types, video_grid_thw=grids,
                                                    second_per_grid_ts=torch.tensor([1.0, 3.0]), attention_mask=mask)
    assert positions[:, 0, 2:].tolist() != positions[:, 1, :-2].tolist()  # the second video is slower
    alone, _ = qwen_vl.original_rope_index(config, torch.zeros(1, len(one), dtype=torch.long), torch.tensor([one]),
                                           video_grid_thw=grids[:1], second_per_grid_ts=torch.tensor([1.0]))
    assert torch.equal(positions[:, 0, 2:], alone[:, 0])
    assert positions[:, 0, :2].abs().sum() == 0 and positions[:, 1, -2:].abs().sum() == 0


@pytest.mark.slow
def test_the_model_uses_the_original_rule_in_every_forward(policy):
    """A 10-s clip on the tiny model: the stock rule would put the query elsewhere; the forward, the
    reference copy and rope_position_ids all follow the original rule."""
    model, processor = policy
    inputs = qwen_vl.build_prompt(processor, QUERY, frames(20), 2.0)
    ours = qwen_vl.rope_position_ids(model, inputs)
    stock = stock_positions(model, inputs)
    text_after = (inputs["mm_token_type_ids"][0] == 2).nonzero().max() + 1
    assert not torch.equal(ours[:, 0, text_after:], stock[:, 0, text_after:])  # the rules differ here
    completion = qwen_vl.completion_ids(processor, "<answer> 1.5 to 3.0 </answer>")
    batch = qwen_vl.group_batch(inputs, [completion], qwen_vl.pad_token_id(processor))
    with torch.no_grad():
        logprobs = qwen_vl.completion_logprobs(model, batch)
        length = batch["completion_mask"].shape[1]
        explicit = {}
        for name, positions in (("original", qwen_vl.rope_position_ids(model, batch)), ("stock", stock_positions(model, batch))):
            logits = model(**qwen_vl.model_inputs(model, batch), position_ids=positions, logits_to_keep=length + 1).logits
            explicit[name] = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, -length:, None])[..., 0]
    torch.testing.assert_close(logprobs, explicit["original"])
    assert (logprobs - explicit["stock"]).abs().max() > 1e-4
    reference = copy.deepcopy(model)  # the reference policy (a copy) keeps the rule
    assert torch.equal(qwen_vl.rope_position_ids(reference, batch), qwen_vl.rope_position_ids(model, batch))


@pytest.mark.slow
def test_generation_continues_the_original_positions(policy):
    """Greedy tokens' log-probs from generate's incremental decoding equal a full forward's over the
    same sequence: the decode steps continue the prompt's positions (left padding included)."""
    model, processor = policy
    prompts = [qwen_vl.build_prompt(processor, QUERY, frames(n, seed=n), 2.0) for n in (20, 8)]
    batch = qwen_vl.merge_prompts(prompts, qwen_vl.pad_token_id(processor))
    config = qwen_vl._generation_config(model, processor, max_new_tokens=8, do_sample=False, temperature=1.0, top_p=1.0)
    config.output_logits, config.return_dict_in_generate = True, True
    qwen_vl.use_original_positions(model)
    with torch.no_grad():
        out = model.generate(**batch, generation_config=config)
    width = batch["input_ids"].shape[1]
    scores = torch.stack(out.logits, 1).float().log_softmax(-1)  # [B, steps, V], raw logits
    for row, prompt in enumerate(prompts):
        new = out.sequences[row, width:]
        keep = qwen_vl.trim_at_stop(new.tolist(), qwen_vl.stop_token_ids(processor))
        decoded = scores[row, torch.arange(len(keep)), torch.tensor(keep)]
        group = qwen_vl.group_batch(prompt, [keep], qwen_vl.pad_token_id(processor))
        with torch.no_grad():
            full = qwen_vl.completion_logprobs(model, group)[0, : len(keep)]
        torch.testing.assert_close(decoded, full, atol=2e-4, rtol=0)
