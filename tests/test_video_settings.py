"""One video-settings record (tempsamp.video.settings.VideoSettings): training, the start model, eval,
predict and the presets read one declaration, and a trained run's settings reach eval unchanged."""

from __future__ import annotations

import dataclasses

import pytest

from tempsamp.cli import build_parser
from tempsamp.evaluation.inference import run_settings
from tempsamp.evaluation.run_cli import _video_settings, resolve_settings
from tempsamp.presets import PRESETS
from tempsamp.train.config import TrainConfig, load_config
from tempsamp.train.sft import SFTConfig
from tempsamp.video.settings import VideoSettings

NAMES = [f.name for f in VideoSettings.settings()]


def eval_settings(argv, trained=None) -> VideoSettings:
    args = build_parser().parse_args(argv)
    return _video_settings(resolve_settings(args, trained, say=lambda _: None), args.frame_cache)


def test_every_user_of_the_record_takes_every_setting_with_its_one_default():
    assert NAMES == ["fps", "max_frames", "min_pixels", "max_pixels", "total_pixels", "frame_sampling", "resize",
                     "input_preset", "frame_cache"]
    for config in (TrainConfig, SFTConfig):
        fields = {f.name: f for f in dataclasses.fields(config)}
        assert set(NAMES) <= set(fields), config
    train = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert all(train[f.name] == f.default for f in VideoSettings.settings())  # not redeclared
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["eval"]._actions}
    assert set(NAMES) <= flags
    for preset in PRESETS.values():
        assert set(preset.video) <= set(NAMES), preset.name


def test_a_trained_runs_block_is_the_eval_block():
    cfg = load_config("tiny_cpu", ["fps=1", "max_frames=64", "resize=bicubic", "output_dir=x"])
    assert (cfg.fps, cfg.max_frames, cfg.resize) == (1.0, 64, "bicubic")  # flat key=value overrides
    trained = cfg.to_dict()  # what config.yaml and state.json hold
    block = cfg.video.block()
    assert block == {k: trained[k] for k in block} and "frame_cache" not in block
    assert eval_settings(["predict", "--model", "m", "v.mp4", "q"], trained).block() == block
    peer = TrainConfig(input_preset="timezero").validate()
    assert eval_settings(["predict", "--model", "m", "v.mp4", "q"], peer.to_dict()).block() == peer.video.block()


def test_the_eval_record_leaves_later_keys_out_at_their_default():
    """Stored generations made before resize and input_preset existed still match."""
    at_default = run_settings("m", "d", VideoSettings(), 8, 0.0, "transformers")
    assert list(at_default) == ["model", "model_path", "fps", "max_frames", "min_pixels", "max_pixels", "total_pixels",
                                "frame_sampling", "max_new_tokens", "temperature", "engine"]
    assert isinstance(at_default["fps"], float) and isinstance(at_default["max_frames"], int)
    bicubic = run_settings("m", "d", VideoSettings(resize="bicubic"), 8, 0.0, "transformers")
    assert bicubic["resize"] == "bicubic" and "input_preset" not in bicubic


def test_choices_and_preset_conflicts_are_checked_for_every_config():
    with pytest.raises(ValueError, match="resize: 'nearest' is not area or bicubic"):
        SFTConfig(resize="nearest").validate_video()
    with pytest.raises(ValueError, match="conflicts with input_preset=qwen"):
        SFTConfig(input_preset="qwen", fps=1.0).validate_video()
    sft = SFTConfig(input_preset="qwen")
    sft.validate_video()
    assert (sft.frame_sampling, sft.resize, sft.min_pixels) == ("qwen", "bicubic", 128 * 28 * 28)


def test_the_start_models_digest_is_unchanged_by_keys_at_their_default(tmp_path):
    annotations = tmp_path / "a.jsonl"
    annotations.write_text("{}\n")
    assert SFTConfig().digest(annotations) != SFTConfig(resize="bicubic").digest(annotations)
    assert SFTConfig().digest(annotations) != SFTConfig(fps=1.0).digest(annotations)
