"""Loading a policy and the training set-up: frozen vision tower, LoRA, gradient checkpointing."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch

from tempsamp.errors import UserError
from tempsamp.models.qwen_vl.families import family_of, unwrap
from tempsamp.models.qwen_vl.positions import use_original_positions


# The modules LoRA adapts by default: the language model's attention and MLP projections.
# A regex (peft full-matches it) because the vision tower's MLP uses the same layer names.
LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def load_policy(
    path_or_hub_id: str,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    attn_implementation: str | None = None,
):
    """Load (model, processor) from a local folder or hub id, dispatching on config.model_type.

    dtype: e.g. torch.bfloat16 or "auto"; None keeps transformers' default.
    attn_implementation: "sdpa", "eager", "flash_attention_2", ...; None keeps the default.
    """
    import transformers
    from transformers import AutoConfig, AutoProcessor

    family = family_of(AutoConfig.from_pretrained(path_or_hub_id))
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if family.key_renames:
        kwargs["key_mapping"] = dict(family.key_renames)
    model, loading = getattr(transformers, family.model_class).from_pretrained(
        path_or_hub_id, output_loading_info=True, **kwargs)
    # transformers initialises missing weights at random and only prints a report; a policy with,
    # say, a random vision tower still runs and its results mean nothing, so refuse it.
    missing = sorted(loading["missing_keys"])
    if missing:
        raise UserError(f"{path_or_hub_id}: the checkpoint lacks {len(missing)} of the model's weights "
                        f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); it was written for "
                        f"another layout or is incomplete")
    if device is not None:
        model.to(device)
    use_original_positions(model)
    processor = AutoProcessor.from_pretrained(path_or_hub_id)
    return model, processor


def vision_tower(model) -> torch.nn.Module:
    return unwrap(model).model.visual


def freeze_vision_tower(model) -> None:
    """No gradients for the vision encoder and its merger (the paper's set-up keeps them frozen)."""
    for parameter in vision_tower(model).parameters():
        parameter.requires_grad_(False)


def apply_lora(
    model,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | Sequence[str] | None = None,
    freeze_vision: bool = True,
):
    """Wrap the model with peft LoRA adapters on the language model's linear layers.

    The reference policy is then the same model with the adapters off: ``with
    model.disable_adapter(): ...`` (no second copy of the weights). The adapters start at zero
    (LoRA's B = 0), so the wrapped model initially computes exactly the base model.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=LANGUAGE_LORA_TARGETS if target_modules is None else target_modules,
        bias="none",
    )
    with warnings.catch_warnings():  # peft 0.21 reads transformers' deprecated alias; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    if freeze_vision:
        freeze_vision_tower(peft_model)
    return peft_model


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass (non-reentrant: works with frozen inputs and LoRA)."""
    inner = unwrap(model)
    inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    inner.config.use_cache = False
