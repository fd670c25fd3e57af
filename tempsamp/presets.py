"""Input presets: what a model is shown, exactly as the stack its checkpoint was trained on shows it.

A released checkpoint answers best (and is only comparable with its published numbers) when it gets
the inputs it learnt on: prompt wording, where the text sits relative to the video, the system
prompt, which frames, at what size, with which resize filter. One setting, ``input_preset``, fixes
all of them for ``train``, ``eval`` and ``predict``:

- ``tempsamp``: the project's own inputs (video first, prompts.py's templates with the duration,
  frames at exact times k / fps, the clip budget shared by all frames, swscale's area filter).
  Every other setting (fps, pixels, frame_sampling, resize) stays configurable.
- ``timezero`` and ``videochat_r1``: those repositories' Charades-STA evaluation (TimeZero
  evaluate.py, VideoChat-R1 src_eval/evaluate_grounding.py): the query text BEFORE the video, no
  system message (the chat template's default "You are a helpful assistant."), their grounding
  template with the raw annotated sentence, qwen-vl-utils 0.0.10 frames (2 FPS, 4-768 frames,
  ``total_pixels`` 3584 x 28 x 28 counted per 2-frame slice, ``min_pixels`` 16 x 28 x 28, torchvision
  bicubic resize). Both ship the same chain-of-thought template; VideoChat-R1 also has an
  answer-only one, used here for ``--mode answer``.
- ``qwen``: Qwen2.5-VL as its model card serves it (qwen-vl-utils defaults: video first, the default
  system prompt, 128-768 tokens per frame, 2 FPS, up to 768 frames, bicubic), with the project's
  prompts. The baseline for a zero-shot Qwen2.5-VL-Instruct.

The rotary positions are not a preset: every preset gets the positions the checkpoints learnt
(tempsamp/models/qwen_vl/positions.py). docs/evaluation.md tabulates the presets and where
in each peer's code every value comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tempsamp.prompts import ANSWER, COT

# TimeZero evaluate.py GROUND_TEMPLATE == VideoChat-R1 src_eval/eval_prompts.py GROUND_TEMPLATE_THINK
# (byte-identical); their "[EVENT]" is written {query} here (the annotated sentence as it is).
PEER_COT_TEMPLATE = (
    'To accurately pinpoint the event "{query}" in the video, determine the precise time period of the event.\n\n'
    "Output your thought process within the <think> </think> tags, including analysis with either specific "
    "timestamps (xx.xx) or time ranges (xx.xx to xx.xx) in <timestep> </timestep> tags.\n\n"
    "Then, provide the start and end times (in seconds, precise to two decimal places) in the format "
    '"start time to end time" within the <answer> </answer> tags. For example: "12.54 to 17.83".'
)
# VideoChat-R1 src_eval/eval_prompts.py GROUND_TEMPLATE_NOTHINK
PEER_ANSWER_TEMPLATE = (
    'To accurately pinpoint the event "{query}" in the video, determine the precise time period of the event.\n\n'
    "Provide the start and end times (in seconds, precise to two decimal places) in the format "
    '"start time to end time" within the <answer> </answer> tags. For example: "12.54 to 17.83".'
)

TOKEN_PIXELS = 28 * 28  # one merged video token per 28 x 28 pixels (14-px patches, 2 x 2 merge)


@dataclass(frozen=True)
class InputPreset:
    name: str
    source: str  # where the values come from
    video_first: bool = True
    system_prompt: str | None = None  # None: no system message (the chat template's default applies)
    templates: dict[str, str] | None = None  # grounding prompt per mode; None: tempsamp.prompts' templates
    decimals: int = 1  # how the GT completion writes times (the precision the prompt asks for)
    # video settings the preset fixes (None: the project's defaults, configurable)
    video: dict = field(default_factory=dict)

    def template(self, mode: str, task: str = "grounding") -> str | None:
        """The prompt template (``{query}``, ``{duration}``) for tempsamp.prompts.prompt_text; None: its own
        (also for a mode the peer has no template for, e.g. ``timelens``)."""
        return self.templates.get(mode) if self.templates is not None and task == "grounding" else None

    def prompt(self, query: str, mode: str, *, duration: float, task: str = "grounding") -> str:
        from tempsamp.prompts import prompt_text

        return prompt_text(query, mode, duration=duration, task=task, template=self.template(mode, task))

    def describe(self) -> dict:
        """What the preset sets, for reports and config files."""
        return {"input_preset": self.name, "video_first": self.video_first, "system_prompt": self.system_prompt,
                "source": self.source, **({"fixes": dict(self.video)} if self.video else {})}


QWEN_VL_UTILS_0010 = {"fps": 2.0, "max_frames": 768, "frame_sampling": "qwen", "resize": "bicubic",
                      "max_pixels": 768 * TOKEN_PIXELS}

PRESETS: dict[str, InputPreset] = {
    "tempsamp": InputPreset("tempsamp", "this project (tempsamp/prompts.py, tempsamp/video/sampling.py)"),
    "timezero": InputPreset(
        "timezero", "TimeZero evaluate.py (inference, GROUND_TEMPLATE); qwen-vl-utils 0.0.10 fetch_video",
        video_first=False, templates={ANSWER: PEER_COT_TEMPLATE, COT: PEER_COT_TEMPLATE}, decimals=2,
        video={**QWEN_VL_UTILS_0010, "min_pixels": 16 * TOKEN_PIXELS, "total_pixels": 3584 * TOKEN_PIXELS}),
    "videochat_r1": InputPreset(
        "videochat_r1", "VideoChat-R1 src_eval/evaluate_grounding.py, eval_prompts.py; its qwen-vl-utils 0.0.10 copy",
        video_first=False, templates={ANSWER: PEER_ANSWER_TEMPLATE, COT: PEER_COT_TEMPLATE}, decimals=2,
        video={**QWEN_VL_UTILS_0010, "min_pixels": 16 * TOKEN_PIXELS, "total_pixels": 3584 * TOKEN_PIXELS}),
    "qwen": InputPreset(
        "qwen", "qwen-vl-utils 0.0.10 defaults (VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS, FPS_MAX_FRAMES)",
        video={**QWEN_VL_UTILS_0010, "min_pixels": 128 * TOKEN_PIXELS, "total_pixels": int(128000 * TOKEN_PIXELS * 0.9)}),
}


def get_preset(name: str) -> InputPreset:
    if name not in PRESETS:
        raise ValueError(f"input_preset: {name!r} is not one of {', '.join(PRESETS)}")
    return PRESETS[name]


