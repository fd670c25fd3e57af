"""The reference stack's side of the parity tests: what the peers run, end to end.

Runs under the reference environment (.venv-ref, see the Makefile's test-parity): the project's
torch with a released-era transformers and qwen-vl-utils put first on PYTHONPATH. It never imports
tempsamp, so nothing of the project's code can leak into the reference.

  build  FAMILY OUT TOKENIZER_DIR  a random-weight tiny checkpoint in the released format: the config,
         weight names and processor files that this transformers writes, which is what the released
         Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints hold (flat config and `model.layers.*`,
         `visual.*`, `lm_head` for Qwen2/2.5-VL). Qwen3.5 under transformers 5.5.4: what a checkpoint
         fine-tuned on that stack holds (the vision tower as `model.language_model.visual.*`; the
         released Qwen3.5 checkpoints hold `model.visual.*`, and 5.5.4 reads both). The tokenizer (the family's real vocabulary: Qwen2.5's,
         or Qwen3.5's own) is read from TOKENIZER_DIR; the token ids of the config are read from it.
  run    MODEL CASES_JSON OUT      per case: qwen-vl-utils process_vision_info -> processor.apply_chat_template
         + processor(...) -> the model. Writes OUT/<name>.npz (input ids, 3-D positions, rope deltas,
         grid, seconds per grid slice, pixel values, sampled frame indices, log-probs of a fixed
         completion, greedy tokens and the positions the decoder received while generating them) and
         OUT/<name>.json (versions, frame count, reader backend); and OUT/text_only.npz, the logits of a
         text-only turn (checks that both stacks read the checkpoint alike).

A case (JSON): {"name", "video" (path), "video_options" (qwen-vl-utils keys: fps, min_pixels,
max_pixels, total_pixels, max_frames), "system_prompt" (str or null), "text_first" (bool), "question",
"completion" (plain text; <|im_end|> is appended), "max_new_tokens"}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

# Released proportions at toy width (head_dim 32, so the sections sum to 16):
# Qwen2-VL-7B / Qwen2.5-VL-7B mrope_section [16, 24, 24] -> [4, 6, 6];
# Qwen3-VL-8B [24, 20, 20] (interleaved) -> [6, 5, 5];
# Qwen3.5-4B: head_dim 256 of which a quarter rotates, [11, 11, 10] (interleaved) -> head_dim 64, [3, 3, 2].
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            max_position_embeddings=32768, rope_theta=1000000.0)
VOCAB_SIZE = 151936  # the released embedding rows
TOKEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)
TEXT_ONLY = "<|im_start|>user\nWhere is the white square at 12.5 s?<|im_end|>\n<|im_start|>assistant\n"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # written by the test (the project's Qwen2-VL template)


def build(family: str, out: str, tokenizer_dir: str) -> None:
    import transformers
    from transformers import AutoTokenizer, GenerationConfig

    out = Path(out)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    chat_template = (Path(tokenizer_dir) / CHAT_TEMPLATE_FILE).read_text()
    ids = {**TOKEN_IDS, "bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643}
    stop_ids = [151645, 151643]  # <|im_end|>, <|endoftext|>
    if family == "qwen2_5_vl":
        # transformers 4.51's flat config, as in Qwen2.5-VL-7B-Instruct/config.json.
        config = transformers.Qwen2_5_VLConfig(
            vocab_size=VOCAB_SIZE, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
            vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=64,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2,
                               window_size=112, fullatt_block_indexes=[1], in_chans=3),
            tie_word_embeddings=False, **TEXT, **ids)
        model_cls, processor_cls = transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLProcessor
    elif family == "qwen2_vl":
        config = transformers.Qwen2VLConfig(
            vocab_size=VOCAB_SIZE, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
            vision_config=dict(depth=2, embed_dim=64, hidden_size=TEXT["hidden_size"], mlp_ratio=2, num_heads=2,
                               in_chans=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
            tie_word_embeddings=False, **TEXT, **ids)
        model_cls, processor_cls = transformers.Qwen2VLForConditionalGeneration, transformers.Qwen2VLProcessor
    elif family == "qwen3_vl":
        text = dict(TEXT, vocab_size=VOCAB_SIZE, head_dim=32, tie_word_embeddings=False,
                    rope_scaling={"rope_type": "default", "mrope_section": [6, 5, 5], "mrope_interleaved": True},
                    bos_token_id=151643, eos_token_id=151645)
        config = transformers.Qwen3VLConfig(
            text_config=text,
            vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=64,
                               patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                               deepstack_visual_indexes=[0], in_channels=3),
            tie_word_embeddings=False, **TOKEN_IDS)
        model_cls, processor_cls = transformers.Qwen3VLForConditionalGeneration, transformers.Qwen3VLProcessor
    elif family == "qwen3_5":
        # Qwen3.5-4B's layout at toy width: its own vocabulary (248,320 embedding rows, vision tokens
        # at 248053-248057, read from the tokenizer), tied embeddings, three Gated DeltaNet layers then
        # one full-attention layer (full_attention_interval 4), a quarter of each head rotating with
        # interleaved M-RoPE; Qwen3-VL's vision tower without deepstack (patch 16).
        token = tokenizer.convert_tokens_to_ids
        vision_ids = dict(image_token_id=token("<|image_pad|>"), video_token_id=token("<|video_pad|>"),
                          vision_start_token_id=token("<|vision_start|>"), vision_end_token_id=token("<|vision_end|>"))
        stop_ids = [token("<|im_end|>"), token("<|endoftext|>")]
        text = dict(TEXT, vocab_size=248320, head_dim=64, num_hidden_layers=4,
                    layer_types=["linear_attention"] * 3 + ["full_attention"],
                    linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16,
                    linear_num_key_heads=2, linear_num_value_heads=4, tie_word_embeddings=True,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "mrope_section": [3, 3, 2],
                                     "mrope_interleaved": True, "partial_rotary_factor": 0.25},
                    bos_token_id=None, eos_token_id=stop_ids[0], pad_token_id=stop_ids[1])
        text.pop("rope_theta")
        config = transformers.Qwen3_5Config(
            text_config=text,
            vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=64,
                               patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                               in_channels=3),
            tie_word_embeddings=True, **vision_ids)
        model_cls, processor_cls = transformers.Qwen3_5ForConditionalGeneration, transformers.Qwen3VLProcessor
    else:
        raise SystemExit(f"build: unknown family {family!r}")
    torch.manual_seed(0)
    model = model_cls(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=stop_ids[1], eos_token_id=stop_ids, pad_token_id=stop_ids[1])
    model.save_pretrained(out, safe_serialization=True)
    if family in ("qwen3_vl", "qwen3_5"):
        # Qwen3-VL-8B-Instruct's processor files (patch 16; per-image and per-video pixel bounds); Qwen3.5
        # ships the same processor classes (Qwen3VLProcessor), and with do_resize=False (its usage) the
        # pixel bounds do not act.
        image_processor = transformers.Qwen2VLImageProcessorFast(
            size={"shortest_edge": 65536, "longest_edge": 16777216}, patch_size=16, temporal_patch_size=2, merge_size=2,
            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        video_processor = transformers.Qwen3VLVideoProcessor(
            size={"shortest_edge": 4096, "longest_edge": 25165824}, patch_size=16, temporal_patch_size=2, merge_size=2,
            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        processor = processor_cls(image_processor=image_processor, video_processor=video_processor, tokenizer=tokenizer,
                                  chat_template=chat_template)
    else:
        # Qwen2/2.5-VL-7B-Instruct's preprocessor_config.json: 4..16384 tokens per image, patch 14.
        image_processor = transformers.Qwen2VLImageProcessor(
            min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2)
        processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)
    processor.save_pretrained(out)


class DecoderPositions:
    """Records the position ids the text decoder receives on every call (prompt, then each generated token)."""

    def __init__(self, model):
        inner = model.model
        decoder = getattr(inner, "language_model", inner)  # 4.51: model.model is the decoder
        self.calls: list[torch.Tensor] = []
        self.handle = decoder.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, _args, kwargs):
        pos = kwargs.get("position_ids")
        if pos is not None:
            self.calls.append(pos.detach().clone())

    def positions(self) -> np.ndarray:
        """[3, S] over all calls, concatenated along the sequence (batch 1)."""
        rows = [p[-3:, 0, :] if p.dim() == 3 else p[0].expand(3, -1) for p in self.calls]
        return torch.cat(rows, dim=1).numpy()


def rope_index(model, inputs):
    owner = model if hasattr(model, "get_rope_index") else model.model
    # mm_token_type_ids: the rule of transformers 5.x (Qwen3.5) reads the token types; 4.x has no such key.
    kwargs = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "attention_mask",
                                     "mm_token_type_ids") if k in inputs}
    if "second_per_grid_ts" in kwargs and not isinstance(kwargs["second_per_grid_ts"], torch.Tensor):
        kwargs["second_per_grid_ts"] = torch.as_tensor(kwargs["second_per_grid_ts"])
    return owner.get_rope_index(inputs["input_ids"], **kwargs)


def run_case(model, processor, case: dict, out: Path, family: str) -> None:
    import decord
    import qwen_vl_utils
    import transformers
    from qwen_vl_utils import process_vision_info

    video = {"type": "video", "video": case["video"], **case["video_options"]}
    text = {"type": "text", "text": case["question"]}
    messages = []
    if case.get("system_prompt") is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": case["system_prompt"]}]})
    messages.append({"role": "user", "content": [text, video] if case.get("text_first") else [video, text]})

    # Record which frames the reader returned (qwen-vl-utils 0.0.10 does not report them).
    taken: list[list[int]] = []
    original_get_batch = decord.VideoReader.get_batch

    def get_batch(self, indices):
        taken.append([int(i) for i in indices])
        return original_get_batch(self, indices)

    decord.VideoReader.get_batch = get_batch
    try:
        # Qwen3.5: the peers' call (enable_thinking=False); templates without that switch ignore it.
        template_kwargs = {"enable_thinking": False} if family == "qwen3_5" else {}
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)
        if family in ("qwen3_vl", "qwen3_5"):
            # Qwen3-VL's usage (its model card), and Qwen3.5's (the TempSamp-R1 verl re-implementation:
            # fetch_video with image_patch_size 16 and the metadata, then do_resize=False, do_sample_frames=False)
            _, videos, video_kwargs = process_vision_info(messages, image_patch_size=16, return_video_kwargs=True,
                                                          return_video_metadata=True)
            videos, metadata = map(list, zip(*videos))
            inputs = processor(text=[prompt], videos=videos, video_metadata=metadata, do_resize=False,
                               return_tensors="pt", **video_kwargs)
        else:  # Qwen2/2.5-VL's usage (model card, TimeZero, VideoChat-R1): the sampled fps as a kwarg
            _, videos, video_kwargs = process_vision_info(messages, return_video_kwargs=True)
            inputs = processor(text=[prompt], videos=videos, padding=True, return_tensors="pt", **video_kwargs)
    finally:
        decord.VideoReader.get_batch = original_get_batch
    inputs = dict(inputs)
    if "second_per_grid_ts" in inputs and not isinstance(inputs["second_per_grid_ts"], torch.Tensor):
        inputs["second_per_grid_ts"] = torch.as_tensor(inputs["second_per_grid_ts"], dtype=torch.float32)
    tokenizer = processor.tokenizer
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    completion = tokenizer(case["completion"], add_special_tokens=False)["input_ids"] + [im_end]
    prompt_len = inputs["input_ids"].shape[1]

    full = dict(inputs)
    full["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([completion])], dim=1)
    full["attention_mask"] = torch.ones_like(full["input_ids"])
    if "mm_token_type_ids" in inputs:
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros((1, len(completion)),
                                               dtype=inputs["mm_token_type_ids"].dtype)], dim=1)
    with torch.no_grad():
        positions, rope_deltas = rope_index(model, full)
        logits = model(**full, use_cache=False).logits[0, prompt_len - 1:-1].float()
        logprobs = (logits.gather(-1, torch.tensor(completion)[:, None])[:, 0] - torch.logsumexp(logits, -1))
        recorder = DecoderPositions(model)
        try:
            sequences = model.generate(**inputs, max_new_tokens=case["max_new_tokens"], do_sample=False,
                                       eos_token_id=[im_end, tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id,
                                       suppress_tokens=[model.config.image_token_id, model.config.video_token_id],
                                       repetition_penalty=1.0, temperature=None, top_p=None, top_k=None)
        finally:
            recorder.handle.remove()
    generated = sequences[0, prompt_len:].tolist()
    arrays = {
        "input_ids": full["input_ids"][0].numpy(),
        "prompt_length": np.array(prompt_len),
        "positions": positions[:, 0].numpy(),
        "rope_deltas": rope_deltas.reshape(-1).numpy(),
        "video_grid_thw": inputs["video_grid_thw"].numpy(),
        "pixel_values_videos": inputs["pixel_values_videos"].float().numpy(),
        "frame_indices": np.array(taken[-1] if taken else [], dtype=np.int64),
        "logprobs": logprobs.numpy(),
        "completion_ids": np.array(completion),
        "greedy_ids": np.array(generated),
        "generation_positions": recorder.positions(),
    }
    if "second_per_grid_ts" in inputs:
        arrays["second_per_grid_ts"] = inputs["second_per_grid_ts"].reshape(-1).float().numpy()
    np.savez(out / f"{case['name']}.npz", **arrays)
    (out / f"{case['name']}.json").write_text(json.dumps({
        "transformers": transformers.__version__,
        "qwen_vl_utils": getattr(qwen_vl_utils, "__version__", None) or _dist_version("qwen-vl-utils"),
        "torch": torch.__version__,
        "video_reader": qwen_vl_utils.vision_process.get_video_reader_backend(),
        "num_frames": len(taken[-1]) if taken else None,
        "prompt_text": prompt,
    }, indent=2))


def _dist_version(name: str):
    from importlib.metadata import version

    return version(name)


def run(model_dir: str, cases_json: str, out: str) -> None:
    import transformers
    from transformers import AutoConfig, AutoProcessor

    torch.set_num_threads(1)
    family = AutoConfig.from_pretrained(model_dir).model_type
    model_cls = getattr(transformers, {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                                       "qwen2_vl": "Qwen2VLForConditionalGeneration",
                                       "qwen3_vl": "Qwen3VLForConditionalGeneration",
                                       "qwen3_5": "Qwen3_5ForConditionalGeneration"}[family])
    model, loading = model_cls.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager",
                                               output_loading_info=True)
    if loading["missing_keys"]:  # a weight left at random init would make the reference meaningless
        raise SystemExit(f"run: {model_dir} lacks {sorted(loading['missing_keys'])[:3]} ...")
    model.eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in json.loads(Path(cases_json).read_text()):
        run_case(model, processor, case, out_dir, family)
    # The checkpoint alone: logits of a text-only chat turn (no video, so no positions rule involved).
    ids = processor.tokenizer(TEXT_ONLY, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
    np.savez(out_dir / "text_only.npz", input_ids=ids[0].numpy(), logits=logits.numpy())


def main(argv: list[str]) -> None:
    if len(argv) == 4 and argv[0] == "build":
        build(*argv[1:])
    elif len(argv) == 4 and argv[0] == "run":
        run(*argv[1:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
