"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir():
    """A tiny random Qwen2.5-VL with the real Qwen2.5 vocabulary, built once into .cache/ and reused.

    The folder name carries a hash of the builder parameters (tempsamp.models.tiny.TinySpec), so a
    change to the builder rebuilds it. Load it with tempsamp.models.qwen_vl.load_policy or any
    transformers from_pretrained.
    """
    from tempsamp.models.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_small_vocab_model_dir():
    """Like tiny_model_dir, with the 1024-rank vocabulary (faster output layer; other token ids)."""
    from tempsamp.models.tiny import TinySpec, ensure_tiny_model

    return ensure_tiny_model(spec=TinySpec(vocab="small"))
