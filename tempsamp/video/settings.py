"""The video settings, declared once: which frames a model is shown, at what size, and the input preset
that lays the prompt out around them.

Training (``TrainConfig`` is a ``VideoSettings``, so recipes keep their flat keys: ``fps: 2.0``), the
supervised start model (``SFTConfig``), ``tempsamp eval`` / ``predict`` (their flags are made from the
fields below) and the input presets (``tempsamp.presets``: the values a preset fixes are fields here)
all read this one declaration. A new setting is one field here, with its default, its help, its
choices or its range; what it does is then one place in the code that uses it (``load`` below, for a frame setting).

A run's config.yaml holds these keys under these names, and an eval report's set-up shows the same
block (``block()``), so the two can be compared line for line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tempsamp.presets import PRESETS, TOKEN_PIXELS
from tempsamp.video.sampling import FACTOR


def _setting(default, help: str, *, choices: tuple | None = None, range: tuple | None = None, answers: bool = True,
             recorded_at_default: bool = True):
    """A video setting. range: for a number, (">" or ">=", bound, the range in words), which training
    checks (tempsamp.train.config.RANGES). answers=False: it does not change what the model sees (the
    frame cache). recorded_at_default=False: added after stored generations existed, so a record leaves
    it out at its default and those generations still match (``record()``)."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": range, "answers": answers,
                                            "recorded_at_default": recorded_at_default})


@dataclass
class VideoSettings:
    fps: float = _setting(2.0, "frames per second of video sampled (the paper: 2)", range=(">", 0, "> 0 frames per second"))
    max_frames: int = _setting(256, "frame cap; a longer video is sampled at a lower rate (qwen-vl-utils' own cap: 768)",
                               range=(">=", 1, ">= 1"))
    min_pixels: int = _setting(16 * TOKEN_PIXELS, "smallest frame, in pixels (Qwen-VL's min_pixels)", range=(">=", 1, ">= 1"))
    max_pixels: int = _setting(256 * TOKEN_PIXELS, "largest frame, in pixels (Qwen-VL's max_pixels)", range=(">=", 1, ">= 1"))
    total_pixels: int = _setting(3584 * TOKEN_PIXELS, "pixel budget of the whole clip, shared by its frames",
                                 range=(">=", 1, ">= 1"))
    frame_sampling: str = _setting(
        "exact", "exact: frames at k / fps s; qwen: qwen-vl-utils 0.0.14's frame count, indices and sizes "
        "(docs/evaluation.md, 'Frame sampling')", choices=("exact", "qwen"))
    resize: str = _setting("area", "frame resize filter: area (swscale) or bicubic (qwen-vl-utils' torchvision filter)",
                           choices=("area", "bicubic"), recorded_at_default=False)
    input_preset: str = _setting(
        "tempsamp", "what the model is shown, as a released checkpoint's own stack shows it: prompt, text/video order, "
        "system prompt, frames and their size (tempsamp/presets.py; docs/evaluation.md, 'Input presets'). A preset "
        "other than tempsamp fixes the frame settings above; setting one of them otherwise is refused",
        choices=tuple(PRESETS), recorded_at_default=False)
    frame_cache: str | None = _setting(None, "folder for the on-disk frame cache", answers=False)

    @classmethod
    def settings(cls) -> tuple[dataclasses.Field, ...]:
        """The video settings' fields (not those of a config that extends the record)."""
        return dataclasses.fields(VideoSettings)

    @classmethod
    def from_mapping(cls, values) -> VideoSettings:
        """The record from a mapping that holds its keys among others (a TrainConfig's dict, a config.yaml)."""
        return VideoSettings(**{f.name: values[f.name] for f in cls.settings() if f.name in values})

    @property
    def video(self) -> VideoSettings:
        """Just the video settings of this config."""
        return VideoSettings.from_mapping(vars(self))

    @property
    def preset(self):
        from tempsamp.presets import get_preset

        return get_preset(self.input_preset)

    def block(self) -> dict:
        """The settings that change what the model sees, as config.yaml and an eval report show them."""
        return {f.name: getattr(self, f.name) for f in self.settings() if f.metadata["answers"]}

    def record(self) -> dict:
        """``block()`` with numbers typed and later-added keys left out at their default (eval.json's
        record of how answers were made; older records stay valid)."""
        cast = {"float": float, "int": int}
        return {f.name: cast.get(f.type, lambda v: v)(getattr(self, f.name)) for f in self.settings()
                if f.metadata["answers"] and (f.metadata["recorded_at_default"] or getattr(self, f.name) != f.default)}

    def validate_video(self) -> None:
        """Choices checked; a preset's fixed values put in (a key set to a third value conflicts)."""
        for f in self.settings():
            choices, value = f.metadata["choices"], getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"{f.name}: {value!r} is not {' or '.join(choices) if len(choices) == 2 else 'one of ' + ', '.join(choices)}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key, value in self.preset.video.items():
            if getattr(self, key) not in (value, defaults[key]):
                raise ValueError(f"{key}: {getattr(self, key)!r} conflicts with input_preset={self.input_preset}, which "
                                 f"fixes it to {value!r}; drop the key or use input_preset=tempsamp")
            setattr(self, key, value)

    def load(self, path, factor: int = FACTOR):
        """The video's frames under these settings (tempsamp.video.cache.sample_frames).

        ``factor``, the multiple of the frames' sides, is the model's (patch x merge: qwen_vl.frame_factor),
        not a user setting, so it is an argument here and no field of the record or of a config."""
        from tempsamp.video.cache import sample_frames

        return sample_frames(path, fps=self.fps, max_frames=self.max_frames, min_pixels=self.min_pixels,
                             max_pixels=self.max_pixels, total_pixels=self.total_pixels, cache_dir=self.frame_cache,
                             frame_sampling=self.frame_sampling, resize=self.resize, factor=factor)
