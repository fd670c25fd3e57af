"""Annotations -> Example records (readers, checks, the synthetic benchmark)."""

from tempsamp.data.example import GROUNDING, HIGHLIGHTS, TASKS, Example

__all__ = ["Example", "GROUNDING", "HIGHLIGHTS", "TASKS"]
