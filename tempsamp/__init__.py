"""tempsamp: TempSamp-R1 mixed-policy reinforcement fine-tuning for video temporal grounding.

The paper's algorithm is a handful of pure functions, importable from here:

    parse_span, parse_spans, parse_scored_spans, temporal_iou   (tempsamp.spans)
    iou_reward, format_reward, timestamp_reward                  (tempsamp.rewards)
    shape_rewards, group_advantages                              (tempsamp.advantages)
    build_offpolicy_completion, prompt_text                      (tempsamp.prompts)
    grpo_loss                                                    (tempsamp.loss)

They are imported on first use (PEP 562), so `import tempsamp.data` or `tempsamp --help` does
not pay for importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "STRATEGIES": "tempsamp.advantages",
    "group_advantages": "tempsamp.advantages",
    "shape_rewards": "tempsamp.advantages",
    "LossStats": "tempsamp.loss",
    "grpo_loss": "tempsamp.loss",
    "build_offpolicy_completion": "tempsamp.prompts",
    "prompt_text": "tempsamp.prompts",
    "clips_from_windows": "tempsamp.rewards",
    "format_reward": "tempsamp.rewards",
    "iou_reward": "tempsamp.rewards",
    "timestamp_reward": "tempsamp.rewards",
    "parse_scored_spans": "tempsamp.spans",
    "parse_span": "tempsamp.spans",
    "parse_spans": "tempsamp.spans",
    "spans_to_array": "tempsamp.spans",
    "temporal_iou": "tempsamp.spans",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'tempsamp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
