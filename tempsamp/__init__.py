"""tempsamp: TempSamp-R1 mixed-policy reinforcement fine-tuning for video temporal grounding.

The paper's algorithm is a handful of pure functions, importable from here:

    parse_span, parse_spans, parse_scored_spans, temporal_iou   (tempsamp.spans)
    iou_reward, format_reward, timestamp_reward                  (tempsamp.rewards)
    shape_rewards, group_advantages                              (tempsamp.advantages)
    build_offpolicy_completion, prompt_text                      (tempsamp.prompts)
    grpo_loss                                                    (tempsamp.loss)
"""

from tempsamp.advantages import STRATEGIES, group_advantages, shape_rewards
from tempsamp.loss import LossStats, grpo_loss
from tempsamp.prompts import build_offpolicy_completion, prompt_text
from tempsamp.rewards import clips_from_windows, format_reward, iou_reward, timestamp_reward
from tempsamp.spans import parse_scored_spans, parse_span, parse_spans, spans_to_array, temporal_iou

__version__ = "0.1.0"

__all__ = [
    "STRATEGIES",
    "LossStats",
    "build_offpolicy_completion",
    "clips_from_windows",
    "format_reward",
    "grpo_loss",
    "group_advantages",
    "iou_reward",
    "parse_scored_spans",
    "parse_span",
    "parse_spans",
    "prompt_text",
    "shape_rewards",
    "spans_to_array",
    "temporal_iou",
    "timestamp_reward",
]
