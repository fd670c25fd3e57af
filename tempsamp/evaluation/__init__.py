"""Evaluation: metrics identical to the references (grounding, QVHighlights), scoring, inference."""
