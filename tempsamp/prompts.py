"""What the policy is asked, and the off-policy completion written from the ground truth.

The off-policy completion must be the ground truth written *exactly as the policy is asked to
answer*, so the prompt templates and ``build_offpolicy_completion`` live side by side.

Decisions (docs/decisions.md):
- The prompt states the video's duration: the answer is in absolute seconds and the duration bounds
  the search; it costs a dozen tokens. Templates are plain format strings, overridable in recipes.
- Times are written with one decimal ("12.5 to 17.8"), the precision the prompts show; at 2 FPS a
  model cannot resolve finer than 0.5 s. ``decimals`` is a parameter.
- CoT mode: the ground truth's think part is a short, fixed, answer-free sentence
  (``GT_THINK``). It keeps the GT row well-formed (it earns the format reward like any good CoT
  answer, so the likelihood term does not teach the policy to skip reasoning or break the format),
  it holds no numbers (the timestamps are taught once, in the answer, not copied from a made-up
  rationale), and it is short, so template tokens do not dominate the GT row's token-mean loss.
- Highlights: windows are written "s to e (score x)" separated by "; ", score on the 0-4 scale.
"""

from __future__ import annotations

ANSWER = "answer"
COT = "cot"
# TimeLens' grounding prompt and answer format (TencentARC/TimeLens, training/data/grounding.py), for
# reproducing set-ups trained on TimeLens data; answer-only, grounding only, no duration stated.
TIMELENS = "timelens"
MODES = (ANSWER, COT, TIMELENS)

GROUNDING_TEMPLATES = {
    ANSWER: (
        "The video is {duration:.1f} seconds long. Find the moment that matches the query: \"{query}\"\n"
        "Answer with the start and end time in seconds inside <answer> </answer>, "
        "for example <answer> 12.5 to 17.8 </answer>."
    ),
    COT: (
        "The video is {duration:.1f} seconds long. Find the moment that matches the query: \"{query}\"\n"
        "First think about where it happens inside <think> </think>, then give the start and end time "
        "in seconds inside <answer> </answer>, for example <think> ... </think><answer> 12.5 to 17.8 </answer>."
    ),
    TIMELENS: (
        "Please find the visual event described by the sentence '{query}', determining its starting and ending "
        "times. The format should be: 'The event happens in <start time> - <end time> seconds'."
    ),
}

HIGHLIGHT_TEMPLATES = {
    ANSWER: (
        "The video is {duration:.1f} seconds long. Find every moment relevant to the query: \"{query}\"\n"
        "Answer with each moment's start and end time in seconds and how relevant it is from 0 to 4, "
        "inside <answer> </answer>, for example <answer> 12.0 to 18.0 (score 4); 30.0 to 34.0 (score 2) </answer>."
    ),
    COT: (
        "The video is {duration:.1f} seconds long. Find every moment relevant to the query: \"{query}\"\n"
        "First think inside <think> </think>, then give each moment's start and end time in seconds and how "
        "relevant it is from 0 to 4 inside <answer> </answer>, for example "
        "<think> ... </think><answer> 12.0 to 18.0 (score 4); 30.0 to 34.0 (score 2) </answer>."
    ),
}

GT_THINK = "I look for the moment the query describes and read off when it starts and when it ends."


def prompt_text(query: str, mode: str = ANSWER, *, duration: float, task: str = "grounding", template: str | None = None) -> str:
    """The user prompt for one query (the video goes beside it in the chat message)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if template is None:
        templates = HIGHLIGHT_TEMPLATES if task == "highlights" else GROUNDING_TEMPLATES
        if mode not in templates:
            raise ValueError(f"mode {mode!r} has no {task} prompt")
        template = templates[mode]
    return template.format(query=query.strip(), duration=duration)


def prompt_template(mode: str = ANSWER, task: str = "grounding", template: str | None = None) -> str:
    """The prompt with its placeholders, as reports show it: {query} and {duration} (the video's seconds).

    template: another prompt template (default: this module's for ``mode`` and ``task``)."""
    import re

    if template is None:
        template = (HIGHLIGHT_TEMPLATES if task == "highlights" else GROUNDING_TEMPLATES)[mode]
    return re.sub(r"\{duration(:[^}]*)?\}", "{duration}", template)


def _fmt(t: float, decimals: int) -> str:
    return f"{t:.{decimals}f}"


def build_offpolicy_completion(
    gt_spans,
    mode: str = ANSWER,
    *,
    scores=None,
    decimals: int = 1,
    think_text: str = GT_THINK,
) -> str:
    """The ground truth written as the policy is asked to answer.

    gt_spans: one (start, end) for grounding, or a list of them for highlights (then ``scores``,
    one 0-4 relevance per window, are written too). mode: "answer" or "cot".
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    spans = [gt_spans] if len(gt_spans) == 2 and not hasattr(gt_spans[0], "__len__") else list(gt_spans)
    if scores is None:
        body = "; ".join(f"{_fmt(s, decimals)} to {_fmt(e, decimals)}" for s, e in spans)
    else:
        body = "; ".join(
            f"{_fmt(s, decimals)} to {_fmt(e, decimals)} (score {_fmt(x, decimals)})" for (s, e), x in zip(spans, scores)
        )
    if mode == TIMELENS:
        if scores is not None:
            raise ValueError("mode 'timelens' has no highlight format")
        return "The event happens in " + ", ".join(f"{_fmt(s, decimals)} - {_fmt(e, decimals)} seconds" for s, e in spans) + "."
    answer = f"<answer> {body} </answer>"
    return answer if mode == ANSWER else f"<think> {think_text} </think><answer> {body} </answer>"
