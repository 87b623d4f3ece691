"""What answer-classifier VQA adapters share (the zoo VQA model, ViLT): targets, names, probabilities.

An answer classifier scores a fixed list of answers with one logit each. A given
answer is explained through its logit (``AnswerScore``); otherwise the top-k
predictions of the same forward pass (``TopClass``), whose names are read from the
output afterwards.

Example:
    >>> import torch
    >>> vqa = AnswerClassifier(["red", "blue", "green"])
    >>> targets = vqa.answer_targets(None, 2)          # the top two answers
    >>> query = AnswerQuery(torch.zeros(1), targets, [], [])
    >>> logits = torch.tensor([[0.1, 2.0, 1.0]])
    >>> vqa.answers(query, logits)
    ['blue', 'green']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..targets import AnswerScore, Target, TopClass, logits_of
from .protocols import AnswerQuery
from ..errors import InputError, InputTypeError

__all__ = ["AnswerClassifier"]

_ACTIVATIONS = ("softmax", "sigmoid")


class AnswerClassifier:
    """Answer targets, names and probabilities of a model with one logit per answer.

    Args:
        labels: the answer names in logit order.
        activation: ``"softmax"`` (one answer is right) or ``"sigmoid"`` (independent
            answer scores, as ViLT's VQA head trained with binary cross-entropy).
    """

    def __init__(self, labels: Sequence[str], *, activation: str = "softmax") -> None:
        if activation not in _ACTIVATIONS:
            raise InputError(f"activation: expected one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        self.labels = [str(label) for label in labels]
        self.activation = activation

    def answer_targets(self, answer: str | None, top_k: int) -> list[Target]:
        """``[AnswerScore(index of answer)]``, or ``TopClass`` targets for the top ``top_k``."""
        if answer is not None:
            if answer not in self.labels:
                shown = ", ".join(self.labels[:30]) + (", ..." if len(self.labels) > 30 else "")
                raise InputError(f"answer {answer!r} is not one of the model's {len(self.labels)} answers: {shown}")
            return [AnswerScore(self.labels.index(answer))]
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(self.labels):
            raise InputError(f"top_k: expected an int in [1, {len(self.labels)}] (the model's answers), got {top_k!r}")
        return [TopClass(rank) for rank in range(top_k)]

    def answer_indices(self, query: AnswerQuery, output: Any) -> Tensor:
        """(k,) long: the logit index each target explains (the first sample's)."""
        indices = []
        for i, target in enumerate(query.targets):
            if isinstance(target, TopClass):
                indices.append(int(target.indices(output)[0]))
            elif isinstance(target, AnswerScore) and isinstance(target.index, int):
                indices.append(target.index)
            else:
                raise InputTypeError(f"query.targets[{i}]: expected AnswerScore(int) or TopClass, got {target!r}")
        return torch.tensor(indices, dtype=torch.long)

    def answers(self, query: AnswerQuery, output: Any) -> list[str]:
        """The names of the explained answers, read from the output for ``TopClass`` targets."""
        return [self.labels[i] for i in self.answer_indices(query, output).tolist()]

    def probabilities(self, query: AnswerQuery, output: Any) -> Tensor:
        """(k,) probability of each explained answer: softmax or sigmoid of the logits, detached."""
        logits = logits_of(output).detach()[0]  # (A,)
        probs = logits.softmax(-1) if self.activation == "softmax" else logits.sigmoid()  # (A,)
        return probs[self.answer_indices(query, output).to(probs.device)]  # (k,)
