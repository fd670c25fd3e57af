"""Input presets (tempsamp/presets.py): prompt, chat layout and frames as a peer's stack gives them;
frames reach the model as sampled (the processor's own size never resizes them)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tempsamp.models import qwen_vl
from tempsamp.presets import PEER_COT_TEMPLATE, PRESETS, get_preset
from tempsamp.prompts import ANSWER, COT
from tempsamp.train.config import TrainConfig

QUERY = "person turn a light on."


def test_peer_presets_write_the_peer_prompt_with_the_raw_sentence():
    timezero = get_preset("timezero")
    text = timezero.prompt(QUERY, COT, duration=30.0)
    assert text.startswith(f'To accurately pinpoint the event "{QUERY}" in the video')
    assert "<think> </think>" in text and "<timestep> </timestep>" in text and '"12.54 to 17.83"' in text
    assert timezero.prompt(QUERY, ANSWER, duration=30.0) == text  # TimeZero has one template
    videochat = get_preset("videochat_r1")
    assert "<think>" not in videochat.prompt(QUERY, ANSWER, duration=30.0)
    assert videochat.prompt(QUERY, COT, duration=30.0) == text  # byte-identical to TimeZero's
    assert "30.0 seconds long" in get_preset("tempsamp").prompt(QUERY, ANSWER, duration=30.0)
    assert PEER_COT_TEMPLATE.count("{query}") == 1


def test_a_preset_fixes_its_video_keys_and_refuses_a_conflicting_one():
    cfg = TrainConfig(input_preset="timezero").validate()
    assert (cfg.total_pixels, cfg.min_pixels, cfg.max_frames) == (3584 * 784, 16 * 784, 768)
    assert (cfg.frame_sampling, cfg.resize) == ("qwen", "bicubic")
    with pytest.raises(ValueError, match="conflicts with input_preset=timezero"):
        TrainConfig(input_preset="timezero", fps=1.0).validate()
    TrainConfig(input_preset="timezero", fps=2.0).validate()  # the preset's own value is fine
    with pytest.raises(ValueError, match="input_preset"):
        TrainConfig(input_preset="nope").validate()
    assert TrainConfig().validate().frame_sampling == "exact"  # tempsamp fixes nothing


@pytest.mark.slow
def test_text_first_layout_puts_the_query_before_the_video(tiny_model_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    frames = np.random.default_rng(0).integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    tokenizer = processor.tokenizer
    for video_first in (True, False):
        inputs = qwen_vl.build_prompt(processor, "find it", frames, 2.0, video_first=video_first)
        text = tokenizer.decode(inputs["input_ids"][0])
        video_at, query_at = text.index("<|vision_start|>"), text.index("find it")
        assert (video_at < query_at) == video_first
        assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")  # no system: the default


@pytest.mark.slow
def test_frames_reach_the_model_as_sampled_even_when_the_processor_would_resize(tiny_model_dir):
    """The class default of Qwen2VLVideoProcessor (128-768 tokens per frame) would enlarge 56x56 frames."""
    from transformers import AutoProcessor, Qwen2VLVideoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    processor.video_processor = Qwen2VLVideoProcessor(do_sample_frames=False)  # the class defaults
    assert processor.video_processor.size["shortest_edge"] > 56 * 56
    frames = np.random.default_rng(0).integers(0, 256, (4, 56, 84, 3), dtype=np.uint8)
    for inputs in (qwen_vl.build_prompt(processor, "q", frames, 2.0),
                   qwen_vl.build_prompt_batch(processor, ["q", "q"], [frames, frames[:2]], [2.0, 2.0])):
        assert inputs["video_grid_thw"][0].tolist() == [2, 56 // 14, 84 // 14]
    resized = qwen_vl.build_prompt(processor, "q", frames, 2.0, processor_kwargs={"do_resize": True})
    assert resized["video_grid_thw"][0, 1] > 56 // 14  # what the pin prevents


def test_bicubic_resize_is_torchvisions_on_the_decoded_frame(tmp_path):
    """qwen-vl-utils resizes the uint8 RGB frame with torchvision's antialiased bicubic filter."""
    import av
    from torchvision.transforms.functional import InterpolationMode, resize

    from tempsamp.video.sampling import decode

    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for _ in range(8):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    budget = dict(fps=2.0, max_frames=768, min_pixels=16 * 784, max_pixels=768 * 784, total_pixels=3584 * 784 // 50,
                  frame_sampling="qwen")
    bicubic = decode(path, resize="bicubic", **budget)
    area = decode(path, **budget)
    assert bicubic.frames.shape == area.frames.shape and bicubic.frames.shape[1:3] != (120, 160)
    with av.open(str(path)) as container:
        full = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    h, w = bicubic.frames.shape[1:3]
    first = resize(torch.from_numpy(full[0]).permute(2, 0, 1), [h, w], interpolation=InterpolationMode.BICUBIC,
                   antialias=True).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(bicubic.frames[0], first)
    assert not np.array_equal(area.frames[0], first)
    with pytest.raises(ValueError, match="resize"):
        decode(path, resize="lanczos", **budget)


def test_every_preset_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "evaluation.md").read_text()
    for name in PRESETS:
        assert f"`{name}`" in doc, name


@pytest.mark.slow
def test_eval_refuses_a_flag_the_preset_fixes_and_records_the_preset(tiny_model_dir, tmp_path):
    import os
    sys.path.insert(0, os.path.dirname(__file__))
    from video_files import write_video

    write_video(tmp_path / "v.mp4", 4.0, (1.0, 2.0))
    annotations = tmp_path / "a.jsonl"
    annotations.write_text(json.dumps({"video": "v.mp4", "duration": 4.0, "query": "the red square", "spans": [[1, 2]]}) + "\n")
    base = [sys.executable, "-m", "tempsamp", "eval", "--model", str(tiny_model_dir), "--annotations", str(annotations),
            "--max-new-tokens", "4"]
    refused = subprocess.run(base + ["--out", str(tmp_path / "e1"), "--input-preset", "timezero", "--fps", "1"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "fixes it to 2.0" in refused.stderr and "Traceback" not in refused.stderr
    done = subprocess.run(base + ["--out", str(tmp_path / "e2"), "--input-preset", "videochat_r1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "e2" / "report.md").read_text()
    assert "videochat_r1" in report and "precise to two decimal places" in report
    eval_json = json.loads((tmp_path / "e2" / "eval.json").read_text())
    assert eval_json["input_preset"] == "videochat_r1" and eval_json["resize"] == "bicubic"
