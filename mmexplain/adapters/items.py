"""What every adapter answers for the evaluation protocols: an item's inputs and targets, a target's probability.

An :class:`Item` is one image and the k scalars explained on it: a classifier's
classes, words of a caption (teacher-forced), or the answer to a question. Every
adapter (zoo, transformers captioners and VQA, LLM-based VLMs, classifiers) inherits
:class:`ItemQuestions`, which answers from the adapter's own explainer methods
(``teacher_forced``, ``query``, ``class_inputs``):

* ``item_inputs(pixels, item)``: the inputs of one forward and the item's k targets;
* ``probability(images, item, index)``: ``(N, 3, H, W) -> (N,)``, the probability of the
  item's ``index``-th target on N edited copies of the image (what faithfulness, ROAD
  and sanity checks read); the images are in the space ``display_image`` shows, in [0, 1];
* ``capabilities``: what the model offers a method (``mx.methods.CAPABILITIES``).

Example:
    >>> import mmexplain as mx
    >>> from mmexplain.adapters import Item, as_caption_adapter
    >>> captioner = as_caption_adapter(mx.zoo.load("captioner"))                     # doctest: +SKIP
    >>> scene = mx.world.generate(7)
    >>> item = Item("caption", scene.image, ["red"], caption=scene.caption, words=[2])  # doctest: +SKIP
    >>> shown = captioner.display_image(captioner.load_image(scene.image))[None]       # doctest: +SKIP
    >>> captioner.probability(shown, item, 0)     # p(word 2 | image, words 0..1), (1,)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..methods import call_model
from ..methods.guided import relu_units
from ..targets import ClassLogit, SequenceLogProb, Target, logits_of
from ..errors import InputError, InputTypeError

__all__ = ["Item", "ItemQuestions", "KINDS", "stack_inputs"]

#: what an item explains: a classifier's classes, caption words, or a question's answer
KINDS = ("class", "caption", "answer")


@dataclass
class Item:
    """One image and the targets explained on it.

    Attributes:
        kind: ``"class"``, ``"caption"`` or ``"answer"``.
        image: (3, H, W) in [0, 1].
        labels: the k explained words / answers / classes, for display.
        classes: ``class``: the k class indices (none: the model's top class).
        caption: ``caption``: the caption (teacher-forced; empty: the model's own caption).
        words: ``caption``: indices into ``caption.split()`` of the k explained words
            (none: every word).
        question, answer: ``answer``: the question and the explained answer (empty: the
            model's own answer).
        masks: per target the referred object's (H, W) bool mask, when known.
        boxes: per target its box, when known.
    """

    kind: str
    image: Tensor
    labels: list[str]
    classes: list[int] = field(default_factory=list)
    caption: str = ""
    words: list[int] = field(default_factory=list)
    question: str = ""
    answer: str = ""
    masks: list[Tensor | None] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int] | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")


def stack_inputs(rows: Sequence[Any]) -> Any:
    """N batch-of-one model inputs -> one batch of N: tensors concatenated along dim 0, other values shared.

    Args:
        rows: inputs of the same structure (tensor, tuple or dict); a non-tensor value
            (e.g. ``logits_to_keep``) must be the same in every row.
    """
    first = rows[0]
    if isinstance(first, Tensor):
        return torch.cat(list(rows), dim=0) if first.dim() > 0 else first
    if isinstance(first, Mapping):
        return {k: stack_inputs([r[k] for r in rows]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(stack_inputs([r[i] for r in rows]) for i in range(len(first)))
    if any(r != first for r in rows[1:]):
        raise InputError(f"inputs: a non-tensor input differs between rows ({first!r} vs {rows[1]!r})")
    return first


class ItemQuestions:
    """The evaluation questions, answered from an adapter's explainer methods (see the module docstring).

    Attributes an adapter sets: ``model``, ``tasks`` (the item kinds it explains) and
    ``base_capabilities`` (``"relu"`` is added when ``model`` has ReLU-like units);
    ``activation`` (``"softmax"`` / ``"sigmoid"``) turns logit targets into probabilities.
    """

    model: nn.Module
    tasks: frozenset[str] = frozenset()
    base_capabilities: frozenset[str] = frozenset({"layer", "pixels"})
    activation: str = "softmax"

    @property
    def capabilities(self) -> frozenset[str]:
        """What the model offers a method: a subset of ``mx.methods.CAPABILITIES`` (an editable image
        tensor, ``"pixels"``, is also a picture perturbation methods can mask and an image gradient)."""
        found = set(self.base_capabilities) | ({"relu"} if relu_units(self.model) else set())
        return frozenset(found | ({"picture", "image-gradient"} if "pixels" in found else set()))

    def check_item(self, item: Any) -> Item:
        """``item`` if this adapter explains its kind; TypeError / ValueError naming it otherwise."""
        if not isinstance(item, Item):
            raise InputTypeError(f"item: expected an mmexplain Item, got {type(item).__name__}")
        if item.kind not in self.tasks:
            raise InputError(f"item: {type(self).__name__} explains {' and '.join(sorted(self.tasks))} items, "
                             f"not {item.kind!r}")
        return item

    def item_inputs(self, pixels: Tensor, item: Item) -> tuple[Any, list[Target]]:
        """Inputs of one forward over the item (pixels from ``load_image``) and its k targets.

        Caption items: the caption teacher-forced, one ``SequenceLogProb`` per explained
        word (all its tokens); answer items: the given answer's target; class items:
        ``ClassLogit`` per class.
        """
        self.check_item(item)
        if not (item.classes if item.kind == "class" else item.caption if item.kind == "caption" else item.answer):
            raise InputError(f"item: a {item.kind} item without its classes / caption / answer has no fixed targets")
        if item.kind == "caption":
            inputs, spans = self.teacher_forced(pixels, item.caption.split())  # type: ignore[attr-defined]
            words = item.words or range(len(spans))
            return inputs, [SequenceLogProb(spans[i][1], positions=spans[i][0]) for i in words]
        if item.kind == "answer":
            query = self.query(pixels, item.question, item.answer, 1)  # type: ignore[attr-defined]
            return query.inputs, list(query.targets)
        return self.class_inputs(pixels), [ClassLogit(c) for c in item.classes]  # type: ignore[attr-defined]

    def probability_of(self, output: Any, target: Target) -> Tensor:
        """(N,) the probability a target stands for: ``exp`` of a log-probability, else the activation of a logit."""
        if isinstance(target, ClassLogit):  # a class or answer logit (AnswerScore too)
            logits = logits_of(output).float()  # (N, C)
            probs = logits.softmax(dim=-1) if self.activation == "softmax" else logits.sigmoid()
            return probs[:, target.index]  # (N,)
        return target(output).float().exp()  # (N,) log-probability targets

    def probability(self, images: Tensor, item: Item, index: int) -> Tensor:
        """(N,) probability of the item's ``index``-th target on each of N images (N, 3, H, W) in [0, 1].

        Each image goes through ``load_image`` (the model's own resizing and
        normalisation), the N inputs are stacked into one batch, and one forward
        without gradients reads the target.
        """
        self.check_item(item)
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise InputError(f"images: expected (N, 3, H, W), got {getattr(images, 'shape', type(images).__name__)}")
        rows, targets = [], []
        for image in images:
            inputs, targets = self.item_inputs(self.load_image(image), item)  # type: ignore[attr-defined]
            rows.append(inputs)
        if not 0 <= index < len(targets):
            raise InputError(f"index: the item has {len(targets)} targets, got {index!r}")
        with torch.no_grad():
            output = call_model(self.model, stack_inputs(rows))
        return self.probability_of(output, targets[index]).detach()  # (N,)
