"""Evaluation protocols: grounding on data with ground truth (pointing game, energy ratio, discrimination)."""
