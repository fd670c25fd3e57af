"""The tiny model fixture and the Qwen-VL adapter (tempsamp/models)."""

from __future__ import annotations

import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tempsamp.models import qwen_vl, tiny

FPS = 2.0
QUERY = "When does the person open the door?"


def random_frames(seed: int, num_frames: int = 8, size: int = 56) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num_frames, size, size, 3), dtype=np.uint8)


def logprobs_of(model, prompt, completions, pad_id, **kwargs):
    batch = qwen_vl.group_batch(prompt, completions, pad_id)
    with torch.no_grad():
        return qwen_vl.completion_logprobs(model, batch, **kwargs)


# Module-scoped: the tiny Qwen2.5-VL with the real vocabulary, loaded once. Tests that modify a
# model (LoRA, freezing) load their own copy.


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    model, processor = qwen_vl.load_policy(str(tiny_model_dir))
    return model, processor


@pytest.fixture(scope="module")
def prompt(policy):
    return qwen_vl.build_prompt(policy[1], QUERY, random_frames(0), FPS)


@pytest.fixture(scope="module")
def completions(policy):
    """Completions of different lengths, one truncated (no stop token)."""
    processor = policy[1]
    return [
        qwen_vl.completion_ids(processor, "<answer> 1.5 to 3.0 </answer>"),
        qwen_vl.completion_ids(processor, "<answer> 0.0 to 4.0 </answer> because the door opens"),
        qwen_vl.completion_ids(processor, "no")[:-1],
        qwen_vl.completion_ids(processor, "<think> hmm </think><answer> 2 to 3 </answer>"),
    ]


# ------------------------------------------------------------------------------------------------
# Pure tensor code (no model)
# ------------------------------------------------------------------------------------------------


def test_token_logprobs_equal_log_softmax_and_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11) * 3
    targets = torch.randint(0, 11, (3, 5))
    for temperature in (1.0, 0.7):
        logprobs, entropy = qwen_vl.token_logprobs(logits, targets, temperature, with_entropy=True)
        reference = torch.log_softmax(logits / temperature, dim=-1)
        torch.testing.assert_close(logprobs, reference.gather(-1, targets[..., None]).squeeze(-1))
        torch.testing.assert_close(entropy, torch.distributions.Categorical(logits=logits / temperature).entropy())


def test_trim_at_stop_keeps_the_first_stop_token_and_drops_what_follows():
    assert qwen_vl.trim_at_stop([5, 6, 9, 1, 1], stop_ids=[9, 1]) == [5, 6, 9]
    assert qwen_vl.trim_at_stop([5, 6, 7], stop_ids=[9]) == [5, 6, 7]  # truncated: no stop token
    assert qwen_vl.trim_at_stop([9, 5], stop_ids=[9]) == [9]


def fake_prompt(num_videos: int = 1) -> dict[str, torch.Tensor]:
    """A prompt shaped like the processor's output: 6 tokens, 2 of them video tokens per video."""
    return {
        "input_ids": torch.tensor([[10, 11, 99, 99, 12, 13]]),
        "attention_mask": torch.ones(1, 6, dtype=torch.long),
        "mm_token_type_ids": torch.tensor([[0, 0, 2, 2, 0, 0]]),
        "pixel_values_videos": torch.arange(num_videos * 8 * 3, dtype=torch.float32).reshape(num_videos * 8, 3),
        "video_grid_thw": torch.tensor([[1, 2, 4]] * num_videos),
        "second_per_grid_ts": torch.tensor([0.5] * num_videos),
    }


def test_group_batch_layout():
    prompt = fake_prompt()
    batch = qwen_vl.group_batch(prompt, [[1, 2, 3], [4], [5, 6]], pad_id=0)
    assert batch["input_ids"].tolist() == [
        [10, 11, 99, 99, 12, 13, 1, 2, 3],
        [10, 11, 99, 99, 12, 13, 4, 0, 0],
        [10, 11, 99, 99, 12, 13, 5, 6, 0],
    ]
    assert batch["attention_mask"].tolist() == [[1] * 9, [1] * 7 + [0, 0], [1] * 8 + [0]]
    assert batch["mm_token_type_ids"].tolist() == [[0, 0, 2, 2, 0, 0, 0, 0, 0]] * 3
    assert batch["completion_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch["logits_to_keep"] == 4  # completion length + 1
    # The video is repeated once per row; time per grid slice is repeated, not multiplied.
    assert batch["second_per_grid_ts"].tolist() == [0.5, 0.5, 0.5]
    assert batch["video_grid_thw"].tolist() == [[1, 2, 4]] * 3
    assert torch.equal(batch["pixel_values_videos"], prompt["pixel_values_videos"].repeat(3, 1))


def test_group_batch_keeps_each_rows_videos_together():
    prompt = fake_prompt(num_videos=2)
    batch = qwen_vl.group_batch(prompt, [[1], [2]], pad_id=0)
    pixels = prompt["pixel_values_videos"]
    assert torch.equal(batch["pixel_values_videos"], torch.cat([pixels, pixels]))  # [v1, v2, v1, v2]


def test_group_batch_rejects_bad_input():
    with pytest.raises(ValueError, match="no completions"):
        qwen_vl.group_batch(fake_prompt(), [], pad_id=0)
    with pytest.raises(ValueError, match="empty"):
        qwen_vl.group_batch(fake_prompt(), [[], []], pad_id=0)
    two_prompts = {key: torch.cat([value, value]) for key, value in fake_prompt().items()}
    with pytest.raises(ValueError, match="one prompt"):
        qwen_vl.group_batch(two_prompts, [[1]], pad_id=0)


def test_family_of_rejects_unsupported_models():
    assert qwen_vl.family_of(SimpleNamespace(model_type="qwen2_5_vl")).input_keys == qwen_vl.MODEL_INPUT_KEYS
    with pytest.raises(ValueError, match="llava"):
        qwen_vl.family_of(SimpleNamespace(model_type="llava"))


def test_model_input_keys_carry_time_and_token_types():
    for key in ("mm_token_type_ids", "second_per_grid_ts", "video_grid_thw", "pixel_values_videos"):
        assert key in qwen_vl.MODEL_INPUT_KEYS


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------

TEXT_PIECES = [
    "the", " video", " 12.5", " to", " 17.8", "<answer>", " </answer>", "<think>", "\n", "\n\n", "  ", "\t",
    "é", "e\u0301", "中文", "日本語", "한국어", "😀", "👍🏽", "ﬁ", "١٢٣",
    "'s", "'LL", "don't", "12:30", "...",
]


def random_text(rng: random.Random) -> str:
    """Random text mixing words, numbers, whitespace runs, scripts, emoji and special tokens."""
    parts = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        if kind < 0.35:
            parts.append(rng.choice(TEXT_PIECES))
        elif kind < 0.45:
            parts.append(rng.choice(tiny.QWEN25_SPECIAL_TOKENS)[1])
        elif kind < 0.8:
            alphabet = "abcXYZ0123456789 .,;:!?-_()[]{}'\"\n\t"
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))))
        else:
            parts.append("".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 4))))
    return "".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("vocab", ["real", "small"])
def test_saved_tokenizer_ids_equal_tiktoken(vocab, policy, tiny_small_vocab_model_dir):
    from transformers import AutoTokenizer

    if vocab == "real":
        tokenizer = policy[1].tokenizer  # as saved by the builder and loaded from the cache folder
    else:
        tokenizer = AutoTokenizer.from_pretrained(tiny_small_vocab_model_dir, local_files_only=True)
    reference = tiny.tiktoken_encoding(vocab)
    # Both sides get the tokenizer's own NFC output: Python's unicodedata and the tokenizers crate
    # carry different Unicode versions (e.g. U+089E reorders in one and not the other), which is
    # a normalisation difference, not a BPE one.
    normalize = tokenizer.backend_tokenizer.normalizer.normalize_str
    rng = random.Random(0)
    for _ in range(int(os.environ.get("TEMPSAMP_TOKENIZER_SAMPLES", "500"))):  # 3000 checked too
        text = random_text(rng)
        expected = reference.encode(normalize(text), allowed_special="all")
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == expected, repr(text)


@pytest.mark.slow
def test_real_vocabulary_has_qwen25_special_token_ids(policy):
    model, processor = policy
    for token_id, token, _ in tiny.QWEN25_SPECIAL_TOKENS:
        assert processor.tokenizer.convert_tokens_to_ids(token) == token_id
    assert processor.video_token_id == 151656
    assert len(processor.tokenizer) == 151665
    config = model.config
    assert (config.video_token_id, config.vision_start_token_id) == (151656, 151652)
    assert config.text_config.vocab_size == 151936


# ------------------------------------------------------------------------------------------------
# Building, saving, loading
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_model_round_trips_save_and_load_exactly(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLForConditionalGeneration

    spec = tiny.TinySpec(vocab="small", seed=3)
    model, processor = tiny.make_tiny_model(spec)
    assert model.config.text_config.hidden_size == 64 and model.config.vision_config.tokens_per_second == 2
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path, local_files_only=True)
    assert type(loaded) is Qwen2_5_VLForConditionalGeneration
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for name, tensor in original_state.items():
        assert torch.equal(tensor, loaded_state[name]), name
    assert loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()  # tied

    loaded_processor = AutoProcessor.from_pretrained(tmp_path, local_files_only=True)
    frames = random_frames(1)
    original_inputs = qwen_vl.build_prompt(processor, QUERY, frames, FPS)
    loaded_inputs = qwen_vl.build_prompt(loaded_processor, QUERY, frames, FPS)
    assert original_inputs.keys() == loaded_inputs.keys()
    for key in original_inputs:
        assert torch.equal(original_inputs[key], loaded_inputs[key]), key


@pytest.mark.slow
def test_seed_changes_the_weights():
    a, _ = tiny.make_tiny_model(tiny.TinySpec(vocab="small", seed=0))
    b, _ = tiny.make_tiny_model(tiny.TinySpec(vocab="small", seed=1))
    c, _ = tiny.make_tiny_model(tiny.TinySpec(vocab="small", seed=0))
    weight = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a.state_dict()[weight], b.state_dict()[weight])
    assert torch.equal(a.state_dict()[weight], c.state_dict()[weight])


@pytest.mark.slow
def test_ensure_tiny_model_builds_once_and_never_overwrites(tmp_path):
    spec = tiny.TinySpec(vocab="small")
    path = tiny.ensure_tiny_model(tmp_path / "model", spec)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny.ensure_tiny_model(tmp_path / "model", spec) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder left behind

    with pytest.raises(FileExistsError, match="does not hold the tiny model"):
        tiny.ensure_tiny_model(path, tiny.TinySpec(vocab="small", seed=1))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        tiny.ensure_tiny_model(other, spec)
    assert (other / "notes.txt").read_text() == "mine"


def test_cache_folder_name_follows_the_builder_parameters():
    real, small = tiny.tiny_model_dir(tiny.TinySpec()), tiny.tiny_model_dir(tiny.TinySpec(vocab="small"))
    assert real != small and real.name.startswith("tiny-qwen2.5-vl-real-")
    assert tiny.tiny_model_dir(tiny.TinySpec(seed=1)) != real
    assert tiny.tiny_model_dir(tiny.TinySpec()) == real


# ------------------------------------------------------------------------------------------------
# The adapter on the tiny Qwen2.5-VL (real vocabulary)
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_load_policy_gives_the_qwen25_model_and_processor(policy):
    model, processor = policy
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert qwen_vl.family_of(model).model_type == "qwen2_5_vl"


@pytest.mark.slow
def test_prompt_carries_every_forward_input(policy, prompt):
    processor = policy[1]
    assert set(qwen_vl.MODEL_INPUT_KEYS) <= set(prompt)
    assert prompt["input_ids"].shape[0] == 1
    text = processor.tokenizer.decode(prompt["input_ids"][0])
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert text.startswith(system + "<|im_start|>user\n<|vision_start|>")
    assert text.endswith(f"<|vision_end|>{QUERY}<|im_end|>\n<|im_start|>assistant\n")
    # 8 frames of 56x56: 4 grid slices of 4x4 patches, merged 2x2 -> 16 video tokens.
    assert prompt["video_grid_thw"].tolist() == [[4, 4, 4]]
    assert int((prompt["mm_token_type_ids"] == 2).sum()) == 16 == int((prompt["input_ids"] == 151656).sum())


@pytest.mark.slow
@pytest.mark.parametrize("num_frames, fps", [(2, 2.0), (4, 1.0), (8, 4.0), (6, 0.5)])
def test_second_per_grid_ts_is_temporal_patch_over_fps(policy, num_frames, fps):
    inputs = qwen_vl.build_prompt(policy[1], QUERY, random_frames(0, num_frames), fps)
    assert inputs["second_per_grid_ts"].tolist() == [2 / fps]
    assert inputs["video_grid_thw"][0, 0] == num_frames // 2


@pytest.mark.slow
def test_build_prompt_rejects_frames_that_are_not_uint8_rgb(policy):
    with pytest.raises(ValueError, match="uint8"):
        qwen_vl.build_prompt(policy[1], QUERY, random_frames(0).astype(np.float32), FPS)
    with pytest.raises(ValueError, match="uint8"):
        qwen_vl.build_prompt(policy[1], QUERY, random_frames(0)[..., :1], FPS)


@pytest.mark.slow
@pytest.mark.parametrize("frame_tokens, video_tokens", [(16, None), (64, 100), (64, 400), (16, 36)])
def test_video_budget_bounds_tokens_per_frame_and_per_clip(tiny_small_vocab_model_dir, frame_tokens, video_tokens):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_small_vocab_model_dir, local_files_only=True)
    qwen_vl.set_video_budget(processor, frame_tokens=frame_tokens, video_tokens=video_tokens, min_frame_tokens=1)
    frames = random_frames(0, num_frames=40, size=224)  # 20 grid slices of up to 8x8 merged tokens
    inputs = qwen_vl.build_prompt(processor, QUERY, frames, FPS)
    grid_t, grid_h, grid_w = inputs["video_grid_thw"][0].tolist()
    per_slice = grid_h * grid_w // 4
    total = int((inputs["mm_token_type_ids"] == 2).sum())
    assert total == grid_t * per_slice and grid_t == 20
    assert per_slice <= frame_tokens
    if video_tokens is None:
        assert per_slice == min(frame_tokens, 64)  # only the frame bound (and the frame size) applies
    else:
        assert total <= video_tokens


@pytest.mark.slow
def test_video_pixels_reach_the_forward_pass(policy, prompt, completions):
    model, processor = policy
    other = qwen_vl.build_prompt(processor, QUERY, random_frames(1), FPS)
    assert torch.equal(other["input_ids"], prompt["input_ids"])
    pad = qwen_vl.pad_token_id(processor)
    a = logprobs_of(model, prompt, completions, pad)
    b = logprobs_of(model, other, completions, pad)
    assert (a - b).abs().max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("fps", [2.0, 1.0, 0.5])
def test_video_tokens_sit_on_a_time_axis(policy, fps):
    model, processor = policy
    inputs = qwen_vl.build_prompt(processor, QUERY, random_frames(0), fps)
    positions = qwen_vl.rope_position_ids(model, inputs)[:, 0]  # [3, S]
    video = inputs["mm_token_type_ids"][0] == 2
    grid_t, grid_h, grid_w = inputs["video_grid_thw"][0].tolist()
    per_slice = (grid_h // 2) * (grid_w // 2)
    temporal = positions[0, video].reshape(grid_t, per_slice)
    start = int(video.nonzero()[0])  # text positions before the video are 0 .. start-1
    step = model.config.vision_config.tokens_per_second * (2 / fps)  # tokens_per_second * second_per_grid_ts
    expected = [start + int(k * step) for k in range(grid_t)]
    assert temporal.tolist() == [[value] * per_slice for value in expected]
    # Height and width positions are the merged-patch grid, from the same start.
    height = positions[1, video].reshape(grid_t, grid_h // 2, grid_w // 2)
    assert height[0, :, 0].tolist() == [start + i for i in range(grid_h // 2)]


@pytest.mark.slow
def test_log_probs_depend_on_the_frame_rate(policy, prompt, completions):
    model, processor = policy
    slower = qwen_vl.build_prompt(processor, QUERY, random_frames(0), FPS / 2)
    for key in ("input_ids", "pixel_values_videos", "video_grid_thw", "mm_token_type_ids"):
        assert torch.equal(slower[key], prompt[key]), key  # only the time per grid slice differs
    assert slower["second_per_grid_ts"].item() == 2 * prompt["second_per_grid_ts"].item()
    pad = qwen_vl.pad_token_id(processor)
    a = logprobs_of(model, prompt, completions, pad)
    b = logprobs_of(model, slower, completions, pad)
    assert (a - b).abs().max() > 1e-5


@pytest.mark.slow
def test_dropping_mm_token_type_ids_loses_time_and_is_refused(policy, prompt, completions):
    model, processor = policy
    batch = qwen_vl.group_batch(prompt, completions, qwen_vl.pad_token_id(processor))
    length = batch["completion_mask"].shape[1]
    inputs = qwen_vl.model_inputs(model, batch)
    without = {key: value for key, value in inputs.items() if key != "mm_token_type_ids"}
    with torch.no_grad():
        with_types = model(**inputs, logits_to_keep=length + 1).logits
        without_types = model(**without, logits_to_keep=length + 1).logits  # silently 1-D positions
        text_positions = torch.arange(batch["input_ids"].shape[1]).expand(3, len(completions), -1)
        one_d = model(**without, position_ids=text_positions, logits_to_keep=length + 1).logits
    assert (with_types - without_types).abs().max() > 1e-4
    torch.testing.assert_close(without_types, one_d)
    for key in qwen_vl.MODEL_INPUT_KEYS:
        with pytest.raises(KeyError, match=key):
            qwen_vl.completion_logprobs(model, {k: v for k, v in batch.items() if k != key})


@pytest.mark.slow
def test_group_rows_score_like_single_rows(policy, prompt, completions):
    model, processor = policy
    pad = qwen_vl.pad_token_id(processor)
    group = logprobs_of(model, prompt, completions, pad)
    for row, ids in enumerate(completions):
        single = logprobs_of(model, prompt, [ids], pad)[0]
        torch.testing.assert_close(group[row, : len(ids)], single, atol=1e-5, rtol=1e-5)
        assert group[row, len(ids) :].abs().sum() == 0  # padding holds 0


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logits_to_keep_equals_full_logits(policy, prompt, completions, temperature):
    model, processor = policy
    batch = qwen_vl.group_batch(prompt, completions, qwen_vl.pad_token_id(processor))
    with torch.no_grad():
        logprobs, entropy = qwen_vl.completion_logprobs(model, batch, temperature=temperature, with_entropy=True)
        full = model(**qwen_vl.model_inputs(model, batch)).logits  # every position
    prompt_len, length = prompt["input_ids"].shape[1], batch["completion_mask"].shape[1]
    predicting = full[:, prompt_len - 1 : prompt_len - 1 + length] / temperature
    reference = torch.log_softmax(predicting, -1).gather(-1, batch["input_ids"][:, prompt_len:, None]).squeeze(-1)
    mask = batch["completion_mask"].bool()
    torch.testing.assert_close(logprobs[mask], reference[mask], atol=1e-5, rtol=1e-5)
    reference_entropy = torch.distributions.Categorical(logits=predicting).entropy()
    torch.testing.assert_close(entropy[mask], reference_entropy[mask], atol=1e-4, rtol=1e-5)


@pytest.mark.slow
def test_log_probs_carry_gradients(policy, prompt, completions):
    model, processor = policy
    batch = qwen_vl.group_batch(prompt, completions, qwen_vl.pad_token_id(processor))
    logprobs = qwen_vl.completion_logprobs(model, batch)
    (logprobs.sum()).backward()
    embedding = model.get_input_embeddings().weight
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_generate_returns_num_samples_and_is_reproducible_with_a_seed(policy, prompt):
    model, processor = policy
    stops = qwen_vl.stop_token_ids(processor)

    def sample(seed):
        torch.manual_seed(seed)
        return qwen_vl.generate(model, processor, prompt, num_samples=4, max_new_tokens=12, temperature=1.0)

    first, again, other = sample(0), sample(0), sample(1)
    assert len(first.ids) == len(first.texts) == 4
    assert first == again
    assert first.ids != other.ids
    # the same draw straight from transformers: each row is its new tokens cut after the first stop
    torch.manual_seed(0)
    config = qwen_vl._generation_config(model, processor, max_new_tokens=12, do_sample=True, temperature=1.0,
                                        top_p=1.0, num_return_sequences=4)
    with torch.no_grad():
        raw = model.generate(**prompt, generation_config=config)[:, qwen_vl.prompt_length(prompt):].tolist()
    for ids, row in zip(first.ids, raw):
        cut = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        assert ids == row[:cut]
    for ids, text in zip(first.ids, first.texts):
        assert ids[-1] in stops or len(ids) == 12
        assert not any(token in stops for token in ids[:-1])
        assert text == processor.tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.slow
def test_greedy_generation_agrees_with_the_scoring_forward(policy, prompt):
    """Sampling (KV cache, positions from generate) and scoring (one forward) see the same model."""
    model, processor = policy
    greedy = qwen_vl.generate(model, processor, prompt, num_samples=1, max_new_tokens=8, do_sample=False)
    ids = greedy.ids[0]
    batch = qwen_vl.group_batch(prompt, [ids], qwen_vl.pad_token_id(processor))
    with torch.no_grad():
        logits = model(**qwen_vl.model_inputs(model, batch), logits_to_keep=len(ids) + 1).logits[0, :-1]
    assert logits.argmax(-1).tolist() == ids
    with pytest.raises(ValueError, match="greedy"):
        qwen_vl.generate(model, processor, prompt, num_samples=2, max_new_tokens=4, do_sample=False)


@pytest.mark.slow
def test_off_policy_completion_is_tokenized_like_a_generated_one(policy):
    processor = policy[1]
    text = "<think> the door opens early </think><answer> 1.5 to 3.0 </answer>"
    ids = qwen_vl.completion_ids(processor, text)
    assert ids[-1] == processor.tokenizer.convert_tokens_to_ids("<|im_end|>") == qwen_vl.stop_token_ids(processor)[0]
    assert processor.tokenizer.decode(ids, skip_special_tokens=True) == text
    # The same text inside a chat turn tokenizes to the same ids (what an SFT pass would see).
    turn = processor.tokenizer(f"<|im_start|>assistant\n{text}<|im_end|>", add_special_tokens=False)["input_ids"]
    assert turn[-len(ids) :] == ids
    with pytest.raises(ValueError, match="special token"):
        qwen_vl.completion_ids(processor, "<answer> 1 to 2 </answer><|im_end|>")


# ------------------------------------------------------------------------------------------------
# LoRA, freezing, checkpointing (a fresh small-vocabulary model: these modify the model)
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_freeze_vision_tower(tiny_small_vocab_model_dir):
    model, _ = qwen_vl.load_policy(str(tiny_small_vocab_model_dir))
    qwen_vl.freeze_vision_tower(model)
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (".visual." not in f".{name}"), name


@pytest.mark.slow
def test_lora_reference_is_the_base_model_and_only_the_adapter_learns(tiny_small_vocab_model_dir):
    model, processor = qwen_vl.load_policy(str(tiny_small_vocab_model_dir))
    prompt = qwen_vl.build_prompt(processor, QUERY, random_frames(0), FPS)
    texts = ("<answer> 1 to 2 </answer>", "<answer> 0.5 to 3 </answer>")
    ids = [qwen_vl.completion_ids(processor, text) for text in texts]
    batch = qwen_vl.group_batch(prompt, ids, qwen_vl.pad_token_id(processor))
    with torch.no_grad():
        base = qwen_vl.completion_logprobs(model, batch)

    policy = qwen_vl.apply_lora(model, r=4, alpha=8, dropout=0.0)
    trainable = [name for name, parameter in policy.named_parameters() if parameter.requires_grad]
    assert trainable and all("lora_" in name and "language_model" in name for name in trainable)
    qwen_vl.enable_gradient_checkpointing(policy)
    assert qwen_vl.unwrap(policy).is_activation_checkpointing
    policy.train()

    def enabled_and_reference():
        with torch.no_grad():
            enabled = qwen_vl.completion_logprobs(policy, batch)
            with policy.disable_adapter():
                reference = qwen_vl.completion_logprobs(policy, batch)
        return enabled, reference

    enabled, reference = enabled_and_reference()
    torch.testing.assert_close(enabled, base)  # LoRA starts at zero
    torch.testing.assert_close(reference, base)

    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    logprobs = qwen_vl.completion_logprobs(policy, batch)
    loss = -(logprobs * batch["completion_mask"]).sum() / batch["completion_mask"].sum()
    loss.backward()
    optimizer.step()

    enabled, reference = enabled_and_reference()
    assert (enabled - base).abs().max() > 1e-3
    torch.testing.assert_close(reference, base)


# ------------------------------------------------------------------------------------------------
# Other families: one tiny random model each, a forward with video and a short generation
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_each_supported_family_runs_with_video(family):
    spec = tiny.QWEN35_SPEC if family == "qwen3_5" else tiny.TinySpec(family=family, vocab="small")
    folder = tiny.ensure_tiny_model(spec=spec)
    model, processor = qwen_vl.load_policy(str(folder))
    assert qwen_vl.family_of(model).model_type == family
    prompt = qwen_vl.build_prompt(processor, QUERY, random_frames(0), FPS)
    assert set(qwen_vl.family_of(model).input_keys) <= set(prompt)
    torch.manual_seed(0)
    sampled = qwen_vl.generate(model, processor, prompt, num_samples=2, max_new_tokens=4)
    assert len(sampled.ids) == 2
    pad = qwen_vl.pad_token_id(processor)
    logprobs = logprobs_of(model, prompt, sampled.ids, pad)
    assert logprobs.shape == (2, max(len(ids) for ids in sampled.ids))
    assert torch.isfinite(logprobs).all()
    other = qwen_vl.build_prompt(processor, QUERY, random_frames(1), FPS)
    assert (logprobs_of(model, other, sampled.ids, pad) - logprobs).abs().max() > 1e-5  # the video is read
    if family in ("qwen3_vl", "qwen3_5"):  # Qwen3-VL (and Qwen3.5) write the time of each grid slice into the prompt
        with pytest.raises(ValueError, match="Qwen3VLVideoProcessor"):
            qwen_vl.set_video_budget(processor, frame_tokens=16)
        text = processor.tokenizer.decode(prompt["input_ids"][0])
        # Each slice is stamped with the mean time of its frames: (0, 1) -> 0.25 s ... (6, 7) -> 3.25 s.
        assert "<0.2 seconds>" in text and "<3.2 seconds>" in text


@pytest.mark.slow
def test_image_prompts_score_through_the_same_calls(policy, completions):
    """Image prompts (used to compare with image-only trainers) go through group_batch and
    completion_logprobs too, with their own required inputs; the pixels reach the forward."""
    model, processor = policy
    image = random_frames(0, num_frames=1)[0]
    prompt = qwen_vl.build_image_prompt(processor, QUERY, image)
    assert {"pixel_values", "image_grid_thw", "mm_token_type_ids"} <= set(prompt)
    pad = qwen_vl.pad_token_id(processor)
    batch = qwen_vl.group_batch(prompt, completions, pad)
    assert batch["image_grid_thw"].shape[0] == len(completions)
    a = logprobs_of(model, prompt, completions, pad)
    b = logprobs_of(model, qwen_vl.build_image_prompt(processor, QUERY, random_frames(1, num_frames=1)[0]), completions, pad)
    assert (a - b).abs().max() > 1e-5
    with pytest.raises(KeyError, match="image_grid_thw"):
        qwen_vl.completion_logprobs(model, {k: v for k, v in batch.items() if k != "image_grid_thw"})


@pytest.mark.slow
def test_sampling_never_emits_a_vision_placeholder(tiny_small_vocab_model_dir):
    """A sampled <|video_pad|> would break every later forward of that row; generate suppresses them."""
    model, processor = qwen_vl.load_policy(str(tiny_small_vocab_model_dir))
    placeholders = qwen_vl.placeholder_token_ids(model)
    assert sorted(placeholders) == sorted([model.config.image_token_id, model.config.video_token_id])

    def favour_placeholders(module, inputs, output):  # make them the most likely tokens by far
        output[..., placeholders] += 100.0
        return output

    model.lm_head.register_forward_hook(favour_placeholders)
    prompt = qwen_vl.build_prompt(processor, QUERY, random_frames(0), FPS)
    with torch.no_grad():
        assert int(model(**prompt, logits_to_keep=1).logits[0, -1].argmax()) in placeholders
    torch.manual_seed(0)
    sampled = qwen_vl.generate(model, processor, prompt, num_samples=4, max_new_tokens=6)
    assert not any(token in placeholders for ids in sampled.ids for token in ids)


@pytest.mark.slow
def test_packed_groups_score_like_each_group_alone(tiny_small_vocab_model_dir):
    """groups_batch: two groups with other videos, frame rates and prompt lengths in ONE forward (prompts
    left-padded, completions right-padded) give each group's own log-probs and entropies. Fails if
    the videos, their time steps or the rope positions were taken from the wrong rows."""
    model, processor = qwen_vl.load_policy(str(tiny_small_vocab_model_dir))
    pad_id = qwen_vl.pad_token_id(processor)
    prompts = [
        qwen_vl.build_prompt(processor, QUERY, random_frames(1, num_frames=8), 2.0),
        qwen_vl.build_prompt(processor, "Where is the cat, and when does it leave the kitchen window?",
                             random_frames(2, num_frames=4, size=84), 0.5),
    ]
    assert prompts[0]["input_ids"].shape[1] != prompts[1]["input_ids"].shape[1]
    rng = np.random.default_rng(0)
    ids = [[rng.integers(10, 900, n).tolist() for n in lengths] for lengths in ([5, 9, 2], [7, 3])]
    with torch.no_grad():
        alone = [qwen_vl.completion_logprobs(model, qwen_vl.group_batch(p, c, pad_id), with_entropy=True)
                 for p, c in zip(prompts, ids)]
        batch = qwen_vl.groups_batch(prompts, ids, pad_id)
        packed = qwen_vl.completion_logprobs(model, batch, with_entropy=True)
        # the same batch with the two groups' time steps swapped row-wise must differ (the check can fail)
        swapped = dict(batch, second_per_grid_ts=batch["second_per_grid_ts"].flip(0))
        wrong = qwen_vl.completion_logprobs(model, swapped)
    assert batch["input_ids"].shape[0] == 5 and batch["group_rows"] == [(0, 3, 9), (3, 5, 7)]
    assert batch["attention_mask"][:, 0].tolist() == [1, 1, 1, 0, 0] or batch["attention_mask"][:, 0].tolist() == [0, 0, 0, 1, 1]
    for (logp, entropy), got_logp, got_entropy in zip(alone, qwen_vl.split_groups(packed[0], batch),
                                                      qwen_vl.split_groups(packed[1], batch)):
        torch.testing.assert_close(got_logp, logp, atol=1e-5, rtol=0)
        torch.testing.assert_close(got_entropy, entropy, atol=1e-5, rtol=0)
    assert max((w - lp).abs().max() for w, (lp, _) in zip(qwen_vl.split_groups(wrong, batch), alone)) > 1e-4
    # one group: exactly group_batch's tensors
    one = qwen_vl.groups_batch(prompts[:1], ids[:1], pad_id)
    for key, value in qwen_vl.group_batch(prompts[0], ids[0], pad_id).items():
        assert torch.equal(one[key], value) if torch.is_tensor(value) else one[key] == value, key


# ------------------------------------------------------------------------------------------------
# Checkpoint layouts: what other transformers releases write, and incomplete checkpoints
# ------------------------------------------------------------------------------------------------


def _copy_with_renamed_weights(source, target, rename):
    """A copy of a checkpoint folder whose safetensors keys go through ``rename`` (str -> str or None to drop)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    renamed = {rename(key): value for key, value in weights.items()}
    save_file({k: v for k, v in renamed.items() if k is not None}, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.mark.slow
def test_qwen35_vision_tower_saved_by_transformers_5_5_loads(tmp_path):
    """transformers 5.5.2-5.5.4 save Qwen3.5's vision tower as model.language_model.visual.*; it loads into the
    same weights as the released layout (model.visual.*), not a randomly initialised tower."""
    released = tiny.ensure_tiny_model(spec=tiny.QWEN35_SPEC)
    old_layout = _copy_with_renamed_weights(
        released, tmp_path / "saved-by-5.5", lambda k: k.replace("model.visual.", "model.language_model.visual."))
    from safetensors import safe_open

    with safe_open(old_layout / "model.safetensors", "pt") as f:
        assert any(k.startswith("model.language_model.visual.") for k in f.keys())
        assert not any(k.startswith("model.visual.") for k in f.keys())
    expected = qwen_vl.load_policy(str(released))[0].state_dict()
    loaded = qwen_vl.load_policy(str(old_layout))[0].state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_checkpoint_missing_weights_is_refused(tmp_path, tiny_small_vocab_model_dir):
    from tempsamp.errors import UserError

    folder = _copy_with_renamed_weights(
        tiny_small_vocab_model_dir, tmp_path / "incomplete",
        lambda k: None if k.startswith("model.visual.merger.") or k.startswith("visual.merger.") else k)
    with pytest.raises(UserError, match=r"incomplete.*lacks \d+ of the model's weights \(.*merger"):
        qwen_vl.load_policy(str(folder))


@pytest.mark.slow
def test_qwen35_vocabulary_equals_tiktoken_and_has_its_special_ids(tmp_path):
    """The Qwen3.5 vocabulary the parity tests build (not Qwen2.5's): saved and reloaded, ids as tiktoken's."""
    from transformers import AutoTokenizer

    tiny.build_qwen35_tokenizer().save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert type(tokenizer).__name__ == "Qwen3_5Tokenizer"
    assert len(tokenizer) == tiny.QWEN35_VOCAB_RANKS + 33
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|vision_start|>",
                                                            "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<think>")}
    assert ids == {"<|endoftext|>": 248044, "<|im_end|>": 248046, "<|vision_start|>": 248053, "<|vision_end|>": 248054,
                   "<|image_pad|>": 248056, "<|video_pad|>": 248057, "<think>": 248068}
    reference = tiny.qwen35_tiktoken_encoding()
    normalize = tokenizer.backend_tokenizer.normalizer.normalize_str
    rng = random.Random(0)
    for _ in range(200):
        text = random_text(rng)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == reference.encode(
            normalize(text), allowed_special="all"), repr(text)


def test_a_chat_template_with_a_thinking_switch_gets_it_off(policy):
    """Qwen3.5's template has `enable_thinking`; tempsamp turns it off (the prompt mode decides whether
    the model reasons), ending the generation prompt as the verl re-implementation's does."""
    _, processor = policy
    switch = "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    saved = processor.chat_template
    try:
        processor.chat_template = saved + switch
        text = qwen_vl.chat_text(processor, "when?")
        assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        processor.chat_template = saved  # the Qwen2.5-VL template has no switch: the same text as ever
        assert qwen_vl.chat_text(processor, "when?").endswith("<|im_start|>assistant\n")
    finally:
        processor.chat_template = saved
def test_tiny_spec_fields_added_later_keep_the_cache_folders_of_existing_specs():
    """A field added to TinySpec enters the cache folder's hash only when set: existing models keep their folder."""
    from tempsamp.models.tiny import QWEN35_SPEC, QWEN35_VLLM_SPEC, TinySpec, build_config, build_tokenizer

    assert TinySpec(linear_head_dim=16).digest() == TinySpec().digest()
    assert QWEN35_VLLM_SPEC.digest() != QWEN35_SPEC.digest()
    text = build_config(QWEN35_VLLM_SPEC, build_tokenizer("small")).text_config
    assert (text.linear_key_head_dim, text.linear_value_head_dim) == (64, 64)
    # what vLLM reads (transformers ties and interleaves through other settings)
    assert text.tie_word_embeddings is True and text.rope_parameters["mrope_interleaved"] is True
    qwen3_vl = build_config(TinySpec(family="qwen3_vl", vocab="small"), build_tokenizer("small")).text_config
    assert qwen3_vl.rope_parameters["mrope_interleaved"] is True
