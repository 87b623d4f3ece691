"""Word lists shared by the explainers and the figures (no model, no plotting)."""

from __future__ import annotations

__all__ = ["FUNCTION_WORDS"]

# words a reader skips when looking for what a caption is about (plots may hide them)
FUNCTION_WORDS = frozenset({"a", "an", "the", "of", "and", "is", "are", "to", "with", "in", "on", "at", "there", "it"})
