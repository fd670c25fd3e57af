"""frame_sampling="qwen": qwen-vl-utils 0.0.14's frame count, indices and sizes, as cases of its arithmetic.

Each expected value below is worked out from qwen-vl-utils' rules (smart_nframes, linspace(...).round(),
fetch_video's pixel budget, smart_resize), not from its code; docs/evaluation.md, "Frame sampling".
"""

from __future__ import annotations

import numpy as np
import pytest

from tempsamp.video.sampling import (clip_frame_size, decode, qwen_frame_indices, qwen_frame_size, qwen_nframes,
                                     qwen_smart_resize)
from video_files import write_video


@pytest.mark.parametrize("total, video_fps, max_frames, expected", [
    (600, 30, 768, 40),  # 20 s: 600 / 30 * 2
    (299, 29.97, 768, 18),  # 19.95 floored to even
    (31, 30, 768, 4),  # 2.07 raised to the minimum of 4
    (3, 30, 768, 2),  # ... but never above the frame count, floored to even
    (11, 1, 768, 10),  # 22 capped at 11 frames, floored to even
    (54000, 30, 768, 768),  # 30 min: FPS_MAX_FRAMES
    (6000, 25, 768, 480),
    (6000, 25, 255, 254),  # a cap is floored to even too
])
def test_frame_count(total, video_fps, max_frames, expected):
    assert qwen_nframes(total, video_fps, fps=2.0, max_frames=max_frames) == expected


def test_frame_count_refuses_a_one_frame_video():
    with pytest.raises(ValueError, match="fewer than 2 frames"):
        qwen_nframes(1, 30)


@pytest.mark.parametrize("total, n, expected", [
    (10, 4, [0, 3, 6, 9]),
    (6, 3, [0, 2, 5]),  # 2.5 rounds half to even
    (8, 4, [0, 2, 5, 7]),  # 2.33, 4.67
    (53, 10, [0, 6, 12, 17, 23, 29, 35, 40, 46, 52]),  # steps of 5.78 frames
])
def test_frame_indices(total, n, expected):
    assert qwen_frame_indices(total, n).tolist() == expected


def test_frame_indices_of_a_20_s_30_fps_clip():
    idx = qwen_frame_indices(600, 40)
    assert idx[:8].tolist() == [0, 15, 31, 46, 61, 77, 92, 108] and idx[-2:].tolist() == [584, 599]
    # seconds between frames: 0.50-0.53, reported as 40 / 600 * 30 = 2 FPS
    steps = np.diff(idx) / 30
    assert steps.min() == pytest.approx(0.5) and steps.max() == pytest.approx(16 / 30)


@pytest.mark.parametrize("hw, n, min_px, max_px, total_px, expected", [
    # TimeZero's settings (min 16*28*28, total 3584*28*28) on a 480x270 Charades-like frame
    ((270, 480), 40, 12544, 256 * 28 * 28, 2809856, (280, 476)),  # budget 140492.8 per frame: sides rounded
    ((270, 480), 200, 12544, 602112, 2809856, (112, 196)),  # budget 28098.56: scaled down, floored
    ((270, 480), 768, 12544, 602112, 2809856, (84, 140)),  # budget max(7317, int(12544 * 1.05)); ends under min
    ((240, 320), 4, 12544, 200704, 2809856, (252, 308)),  # the given max_pixels binds
    ((56, 56), 10, 3136, 3136, 3136 * 128, (56, 56)),  # the demo's fixed 56x56
    ((1080, 1920), 100, 128 * 28 * 28, 768 * 28 * 28, int(128000 * 28 * 28 * 0.9), (560, 1008)),  # qwen's defaults
])
def test_frame_size(hw, n, min_px, max_px, total_px, expected):
    assert qwen_frame_size(*hw, n, min_pixels=min_px, max_pixels=max_px, total_pixels=total_px) == expected


def test_where_the_project_default_differs_in_size():
    # 768 frames: qwen-vl-utils floors to 84x140 = 11760 px, under min_pixels; the project keeps min_pixels
    h, w = clip_frame_size(270, 480, 768, min_pixels=12544, max_pixels=602112, total_pixels=2809856)
    assert h * w >= 12544 and (h, w) != (84, 140)
    # ceil overshoot: qwen-vl-utils keeps the ceil (over max), the project lets max win
    assert qwen_smart_resize(30, 100, min_pixels=6000, max_pixels=6100) == (56, 168)
    with pytest.raises(ValueError, match="max_pixels 10 < min_pixels 20"):
        qwen_smart_resize(28, 28, min_pixels=20, max_pixels=10)


def test_decoded_frames_follow_the_rules(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, 5.3, (2.0, 3.0), fps=10)  # 53 frames; the square is on frames 20-29
    video = decode(path, fps=2.0, max_frames=768, min_pixels=3136, max_pixels=3136, total_pixels=3136 * 128,
                   frame_sampling="qwen")
    expected = [0, 6, 12, 17, 23, 29, 35, 40, 46, 52]
    assert len(video) == 10 and video.fps == pytest.approx(10 / 53 * 10)
    assert np.allclose(video.timestamps, np.array(expected) / 10)
    red = video.frames[:, 8:40, 8:40, 0].mean(axis=(1, 2)) > 120
    assert red.tolist() == [20 <= i < 30 for i in expected]
    exact = decode(path, fps=2.0, max_frames=256, min_pixels=3136, max_pixels=3136, total_pixels=3136 * 128)
    assert len(exact) == 11 and exact.fps == 2.0  # ceil(5.3 * 2) frames at k / 2 s


def test_cache_keeps_the_two_samplings_apart(tmp_path):
    from tempsamp.video.cache import sample_frames

    path = tmp_path / "v.mp4"
    write_video(path, 5.3, (2.0, 3.0), fps=10)
    kw = dict(fps=2.0, max_frames=256, min_pixels=3136, max_pixels=3136, total_pixels=3136 * 128, cache_dir=tmp_path / "c")
    exact, qwen = sample_frames(path, **kw), sample_frames(path, frame_sampling="qwen", **kw)
    assert (len(exact), len(qwen)) == (11, 10)
    assert len(list((tmp_path / "c").rglob("*.json"))) == 2
    assert len(sample_frames(path, frame_sampling="qwen", **kw)) == 10  # a hit, not the exact entry


def test_config_and_cli_carry_the_option():
    from tempsamp.cli import build_parser
    from tempsamp.evaluation.run_cli import _video_settings, resolve_settings
    from tempsamp.train.config import TrainConfig

    with pytest.raises(ValueError, match="frame_sampling"):
        TrainConfig(frame_sampling="uniform").validate()
    assert TrainConfig(frame_sampling="qwen").validate().frame_sampling == "qwen"

    def video(argv, trained=None):
        args = build_parser().parse_args(argv)
        return _video_settings(resolve_settings(args, trained, say=lambda _: None), args.frame_cache)

    settings = video(["predict", "--model", "m", "v.mp4", "q", "--frame-sampling", "qwen"])
    assert (settings.frame_sampling, settings.max_frames) == ("qwen", 768)
    assert video(["predict", "--model", "m", "v.mp4", "q"]).max_frames == 256
    # a run trained with qwen sampling is evaluated with it unless told otherwise
    assert video(["predict", "--model", "m", "v.mp4", "q"], {"frame_sampling": "qwen"}).frame_sampling == "qwen"


def test_resume_reads_a_config_saved_before_the_option_as_its_default(tmp_path):
    import json

    from tempsamp.train import loop
    from tempsamp.train.config import load_config

    cfg = load_config("tiny_cpu", [f"output_dir={tmp_path}"])
    saved = {k: v for k, v in json.loads(json.dumps(cfg.to_dict())).items() if k != "frame_sampling"}
    (tmp_path / "checkpoint-1").mkdir()
    (tmp_path / "checkpoint-1" / "state.json").write_text(json.dumps({"step": 1, "config": saved}))
    loop.check_resume_config(tmp_path / "checkpoint-1", cfg)  # written with the default: fine
    with pytest.raises(ValueError, match="frame_sampling"):
        loop.check_resume_config(tmp_path / "checkpoint-1", load_config("tiny_cpu", [f"output_dir={tmp_path}",
                                                                                     "frame_sampling=qwen"]))
