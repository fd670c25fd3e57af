"""Model-family adapter (qwen_vl) and the tiny offline test model (tiny)."""
