"""High-level explainers: per-word caption maps, VQA answer grounding, class maps.

Each explainer runs ONE forward pass and explains many scalars from it through the
engine's batched backward: every word of a caption, or the top-k answers together
with their counterfactuals.

Models plug in through adapters (:mod:`mmexplain.adapters.protocols`): the reference
models of ``mx.zoo`` are adapted automatically (``adapters.as_caption_adapter`` /
``as_answer_adapter``); transformers models get theirs from ``mx.hf``. The explainers
and the engine stay model-agnostic.

``method=`` names any row of :data:`METHODS`: every map method of
:mod:`mmexplain.methods` (the CAM family, the forward-only maps, transformer
relevancy), and ``"guided"``: Grad-CAM combined with Guided Backprop (Guided Grad-CAM,
through :func:`mmexplain.methods.guided_gradcam`). Gradient methods explain every word
(or answer) from one forward and one batched backward; forward-only methods run their
own masked forwards.

Example:
    >>> import mmexplain as mx
    >>> captioner = mx.zoo.load("captioner")                     # doctest: +SKIP
    >>> ex = mx.explain_caption(captioner, mx.world.generate(7).image)   # doctest: +SKIP
    >>> ex.words, ex.maps.shape                                   # doctest: +SKIP
    (['a', 'small', 'red', 'circle'], torch.Size([4, 96, 96]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapters.classifier import as_class_adapter
from .adapters.zoo import as_answer_adapter, as_caption_adapter
from .methods import (
    METHODS, CAMResult, GradCAM, GradientMethod, MethodSpec, PerturbationMethod, method_spec, upsample_and_normalize,
)
from .targets import ClassLogit, Counterfactual, SequenceLogProb, Target, TopClass
from .words import FUNCTION_WORDS
from .errors import InputError, InputTypeError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .viz.report import ReportView

__all__ = [
    "CaptionExplanation",
    "AnswerExplanation",
    "ClassExplanation",
    "explain_caption",
    "explain_answer",
    "explain_class",
    "METHODS",
]

# ``METHODS`` is the registry itself (``mx.methods.METHODS``: name -> MethodSpec); ``mx.methods.register``
# adds a method that every explainer here then accepts.


# ---------------------------------------------------------------- results


class _PixelMaps:
    """``pixels``: the pixel-resolution maps (``guided``: (k, 3, H, W) or None), for ``MethodSpec.saliency_of``."""

    guided: Tensor | None

    @property
    def pixels(self) -> Tensor | None:
        return self.guided


class _Shown(_PixelMaps):
    def show(self, **options: Any) -> ReportView:
        """The interactive HTML report of this result: renders inline in a notebook; ``.save(path)`` writes it.

        Options go to ``mx.viz.caption_view`` / ``answer_view`` (``descriptions=``, ``methods=``, ``section_title=``).
        """
        from .viz import show

        return show(self, **options)



@dataclass
class CaptionExplanation(_Shown):
    """Per-word maps of a caption.

    Attributes:
        words: the caption's words (T of them), as a person reads them.
        maps: (T, H, W) Grad-CAM map of each word's log-probability, in [0, 1].
        logprobs: (T,) log p(word | image, previous words).
        caption_map: (H, W) map of the whole caption's log-probability, which equals
            ReLU(sum_t pre-ReLU map of word t) (the engine is linear in the target), smoothed as the
            word maps where the method smooths them.
        image: (3, H, W) in [0, 1], the picture the maps are aligned with.
        result: the engine's CAMResult, rows = words (batch of one).
        guided: (T, 3, H, W) Guided Grad-CAM per word when ``method="guided"``, else None.
    """

    words: list[str]
    maps: Tensor
    logprobs: Tensor
    caption_map: Tensor
    image: Tensor
    result: CAMResult
    guided: Tensor | None = None

    @property
    def caption(self) -> str:
        return " ".join(self.words)

    @property
    def content(self) -> list[int]:
        """Indices of the words that are not function words."""
        return [i for i, w in enumerate(self.words) if w not in FUNCTION_WORDS]

    def plot(self, *, hide_function_words: bool = False, path: str | None = None) -> Figure:
        """One panel per word (word and probability in the title) plus the whole caption."""
        from .viz import plot_caption, save_figure

        fig = plot_caption(self, hide_function_words=hide_function_words)
        if path is not None:
            save_figure(fig, path)
        return fig


@dataclass
class AnswerExplanation(_Shown):
    """Where a VQA model looks for its answer, and what argues against it.

    Attributes:
        question: the question asked.
        answers: the explained answers (top-k predicted, or the one given).
        scores: (k,) the explained scalar of each answer (logit, or summed log-prob).
        probabilities: (k,) each answer's probability, when the adapter knows it.
        maps: (k, H, W) Grad-CAM map of each answer.
        counterfactuals: (k, H, W) map of each negated answer score (paper Sec. 3.2).
        question_tokens: the question's tokens.
        token_attributions: (k, L) gradient x embedding of each question token, from
            the same backward (None when the adapter has no question layer).
        image: (3, H, W) in [0, 1].
        result: the engine's CAMResult, rows = answers then their counterfactuals.
        guided: (k, 3, H, W) Guided Grad-CAM per answer when ``method="guided"``, else None.
    """

    question: str
    answers: list[str]
    scores: Tensor
    probabilities: Tensor | None
    maps: Tensor
    counterfactuals: Tensor
    question_tokens: list[str]
    token_attributions: Tensor | None
    image: Tensor
    result: CAMResult
    guided: Tensor | None = None

    @property
    def answer(self) -> str:
        return self.answers[0]

    @property
    def score(self) -> float:
        return float(self.scores[0])

    @property
    def map(self) -> Tensor:  # (H, W)
        return self.maps[0]

    @property
    def counterfactual(self) -> Tensor:  # (H, W)
        return self.counterfactuals[0]

    def plot(self, *, path: str | None = None) -> Figure:
        """Image, answer map, counterfactual map and question-token bars."""
        from .viz import plot_answer, save_figure

        fig = plot_answer(self)
        if path is not None:
            save_figure(fig, path)
        return fig


@dataclass
class ClassExplanation(_PixelMaps):
    """Grad-CAM maps of a classifier's classes for one image.

    Attributes:
        labels: the explained class names (or indices as strings).
        indices: (k,) class indices.
        scores: (k,) logits.
        maps: (k, H, W).
        image: (3, H, W) in [0, 1].
        result: the engine's CAMResult.
        guided: (k, 3, H, W) Guided Grad-CAM per class when ``method="guided"``, else None.
    """

    labels: list[str]
    indices: Tensor
    scores: Tensor
    maps: Tensor
    image: Tensor
    result: CAMResult
    guided: Tensor | None = None

    def plot(self, *, path: str | None = None) -> Figure:
        from .viz import plot_maps, save_figure

        fig = plot_maps(self.image[None], self.maps[:, None], titles=[f"{l} ({float(s):.2f})" for l, s in zip(self.labels, self.scores)])
        if path is not None:
            save_figure(fig, path)
        return fig


# ---------------------------------------------------------------- explainers


@dataclass(frozen=True)
class _Method:
    """How one ``method=`` name runs, read from its :class:`~mmexplain.methods.MethodSpec`."""

    spec: MethodSpec

    @property
    def gradient(self) -> bool:
        """True when the method takes the gradient base's batched backward (extra layers, chunks)."""
        return issubclass(self.spec.cls, GradientMethod)

    @property
    def perturbs(self) -> bool:
        """True when the method runs forwards on edited copies of the image (no gradient)."""
        return issubclass(self.spec.cls, PerturbationMethod)

    def inputs_for(self, adapter: Any, pixels: Tensor, inputs: Any) -> Any:
        """The inputs this method edits: a perturbation method on an adapter whose processor makes the image
        tensor masks the picture and processes it again (``adapter.picture_inputs``)."""
        return adapter.picture_inputs(pixels, inputs) if self.perturbs and hasattr(adapter, "picture_inputs") else inputs

    @property
    def in_batch(self) -> bool:
        """True when the method may copy the targets along the batch axis."""
        return self.gradient and self.spec.cls.targets_in_batch_ok

    def build(self, model: nn.Module, layer: Any, reshape: Any) -> Any:
        """The method object, with the registry's defaults."""
        cls = self.spec.cls
        return cls(model, layer, reshape=reshape) if self.spec.needs_layer else cls(model, reshape=reshape)

    def run(self, model: nn.Module, layer: Any, reshape: Any, inputs: Any, targets: list[Target], *,
            size: tuple[int, int], extra: dict[str, str] | None = None, in_batch: bool = False,
            per_backward: int | None = None) -> CAMResult:
        """Build the method and call it on ``targets`` (:meth:`build`, then :meth:`call`)."""
        return self.call(self.build(model, layer, reshape), inputs, targets, size=size, extra=extra,
                         in_batch=in_batch, per_backward=per_backward)

    def call(self, method: Any, inputs: Any, targets: list[Target], *, size: tuple[int, int],
             extra: dict[str, str] | None = None, in_batch: bool = False, per_backward: int | None = None
             ) -> CAMResult:
        """Call a method object made by :meth:`build` on ``targets``."""
        if not self.gradient:
            return method(inputs, targets, size=size)
        options = {"targets_in_batch": True} if in_batch else {}
        return method(inputs, targets, size=size, extra_layers=extra, targets_per_backward=per_backward, **options)


def _method(method: Any) -> _Method:
    """The :class:`_Method` for ``method``; ValueError naming the argument otherwise."""
    return _Method(method_spec(method))


def _pixels(res: CAMResult, rows: int | None = None) -> Tensor | None:
    """(N, C, H, W) the pixel-resolution maps of a batch-of-one result (Guided Grad-CAM), else None."""
    return None if res.pixels is None else res.pixels[:rows, 0]


def explain_caption(
    captioner: Any,
    image: Any,
    caption: str | None = None,
    *,
    layer: str | nn.Module | None = None,
    method: str = "gradcam",
    words_per_pass: int | None = None,
) -> CaptionExplanation:
    """Grad-CAM of every word of a caption: one forward pass, one batched backward.

    The explained scalar of word t is log p(w_t | image, w_<t) read from the
    teacher-forced logits (sub-word tokens summed). The map of word t depends on
    words up to t only; the whole-caption map is ReLU of the summed pre-ReLU word maps (then the
    method's own smoothing, where it has one: ``pixel-gradxinput``'s Gaussian).

    Args:
        captioner: an ``mx.zoo`` captioner or a ``CaptionAdapter`` (``mx.hf`` builds them).
        image: a path, PIL image, numpy array or (3, H, W) tensor in [0, 1].
        caption: the caption to explain; None explains the model's own caption.
        layer: the layer to explain (default: the adapter's ``default_layer``).
        method: a name in :data:`METHODS` (default ``"gradcam"``; ``"guided"`` adds Guided
            Grad-CAM per word; forward-only methods run their own masked forwards).
        words_per_pass: gradient methods: at most this many words per batched backward over
            the one forward's graph (bounds the backward's memory on large models; same maps).

    Returns:
        CaptionExplanation with ``words``, ``maps`` (T, H, W), ``logprobs`` (T,).
    """
    plan = _method(method)
    if caption is not None and not isinstance(caption, str):
        raise InputTypeError(f"caption: expected a str or None, got {type(caption).__name__}")
    adapter = as_caption_adapter(captioner)
    pixels = adapter.load_image(image)  # (1, 3, H, W)
    shown = adapter.display_image(pixels)  # (3, H, W)
    if caption is None:
        words = adapter.generate(pixels)
        if not words:
            raise InputError("the captioner generated an empty caption: nothing to explain")
    else:
        words = adapter.split_words(caption)
        if not words:
            raise InputError("caption: expected at least one word, got an empty caption")
    plain_inputs, spans = adapter.teacher_forced(pixels, words)
    # words through the batch axis only at the adapter's own layer, which it knows sits before the text
    in_batch = adapter.targets_in_batch and len(words) > 1 and plan.in_batch and layer is None
    inputs = adapter.teacher_forced(pixels, words, copies=len(words))[0] if in_batch else plain_inputs
    targets: list[Target] = [SequenceLogProb(tokens, positions=positions) for positions, tokens in spans]
    size = tuple(shown.shape[-2:])
    layer = layer if layer is not None else adapter.default_layer
    reshape = adapter.reshape_for(pixels)
    method_object = plan.build(adapter.model, layer, reshape)
    res = plan.call(method_object, plan.inputs_for(adapter, pixels, inputs), targets, size=size, in_batch=in_batch,
                    per_backward=words_per_pass)
    positive = getattr(method_object, "positive", F.relu)  # a method's own ReLU and smoothing, where it has them
    caption_map = upsample_and_normalize(positive(res.pre_relu.sum(dim=0)), size)[0]  # (H, W)
    return CaptionExplanation(list(words), res.maps[:, 0], res.scores[:, 0], caption_map, shown, res, _pixels(res))


def explain_answer(
    vqa: Any,
    image: Any,
    question: str,
    answer: str | None = None,
    *,
    top_k: int = 1,
    layer: str | nn.Module | None = None,
    method: str = "gradcam",
) -> AnswerExplanation:
    """Grad-CAM of a VQA answer and of its counterfactual, plus question-token attributions.

    The top-k predicted answers (or the given answer) and their negations are
    explained from ONE forward pass; the gradient x embedding of the question
    tokens comes from the same backward.

    Args:
        vqa: an ``mx.zoo`` VQA model or an ``AnswerAdapter``.
        image: a path, PIL image, numpy array or (3, H, W) tensor in [0, 1].
        question: the question (non-empty).
        answer: explain this answer instead of the prediction.
        top_k: how many predicted answers to explain (ignored when ``answer`` is given).
        layer: the layer to explain (default: the adapter's ``default_layer``).
        method: a name in :data:`METHODS`; ``"guided"`` adds Guided Grad-CAM per answer. The
            question-word attributions always come from a gradient (one extra backward for
            forward-only methods).

    Returns:
        AnswerExplanation with ``answers``, ``maps`` (k, H, W), ``counterfactuals`` (k, H, W).
    """
    plan = _method(method)
    if not isinstance(question, str):
        raise InputTypeError(f"question: expected a str, got {type(question).__name__}")
    if not question.strip():
        raise InputError("question: expected a non-empty question")
    if answer is not None and (not isinstance(answer, str) or not answer.strip()):
        raise InputError(f"answer: expected a non-empty str or None, got {answer!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k: expected an int >= 1, got {top_k!r}")
    adapter = as_answer_adapter(vqa)
    pixels = adapter.load_image(image)  # (1, 3, H, W)
    shown = adapter.display_image(pixels)  # (3, H, W)
    query = adapter.query(pixels, question, answer, top_k)
    k = len(query.targets)
    targets = [*query.targets, *(Counterfactual(t) for t in query.targets)]
    extra = {"question": adapter.question_layer} if adapter.question_layer else None
    layer = layer if layer is not None else adapter.default_layer
    reshape = adapter.reshape_for(pixels)
    size = tuple(shown.shape[-2:])
    res = plan.run(adapter.model, layer, reshape, plan.inputs_for(adapter, pixels, query.inputs), targets, size=size,
                   extra=extra)
    names = adapter.answers(query, res.output)
    attributions = None
    if extra:
        # a forward-only method takes no gradient: the question words get one Grad-CAM backward
        grads = res if plan.gradient else GradCAM(adapter.model, layer, reshape=reshape)(
            query.inputs, list(query.targets), size=size, extra_layers=extra)
        embedding, grad = grads.extra["question"]  # (1, L, E), (k or 2k, 1, L, E)
        per_token = (grad[:k, 0] * embedding[0]).sum(dim=-1)  # (k, L)
        attributions = per_token[:, query.token_positions]  # (k, len(question_tokens))
    probabilities = adapter.probabilities(query, res.output)
    if probabilities is not None:
        probabilities = probabilities.detach()  # (k,)
    return AnswerExplanation(
        question, names, res.scores[:k, 0], probabilities, res.maps[:k, 0], res.maps[k:, 0],
        list(query.question_tokens), attributions, shown, res, _pixels(res, k),
    )


def explain_class(
    classifier: Any,
    image: Any,
    classes: int | str | Sequence[int | str] | None = None,
    *,
    top_k: int = 1,
    layer: str | nn.Module | None = None,
    method: str = "gradcam",
) -> ClassExplanation:
    """Grad-CAM of a classifier's classes for one image (the paper's Sec. 4 setting).

    Args:
        classifier: a ``ClassAdapter`` (``mx.adapters.ClassifierAdapter``: torchvision,
            EfficientNet-Lite0, any module), an ``mx.zoo`` classifier, or any ``nn.Module``
            mapping (1, 3, H, W) to (1, C) logits (then pass ``layer`` and an image tensor).
        image: a path, PIL image, numpy array or (3, H, W) tensor in [0, 1] (a plain
            module's tensor is taken as it is).
        classes: class indices or names to explain; default the top-k predicted.
        top_k: how many predicted classes to explain when ``classes`` is None.
        layer: the layer to explain (default the adapter's ``default_layer``).
        method: a name in :data:`METHODS`; ``"guided"`` adds Guided Grad-CAM per class.

    Returns:
        ClassExplanation with ``labels``, ``maps`` (k, H, W), ``scores`` (k,).
    """
    plan = _method(method)
    adapter = as_class_adapter(classifier)
    layer = layer if layer is not None else adapter.default_layer
    if layer is None and plan.spec.needs_layer:
        raise InputError("layer: this classifier has no default layer; pass layer=")
    pixels = adapter.load_image(image)  # (1, 3, H, W)
    shown = adapter.display_image(pixels)  # (3, H, W)
    inputs = adapter.class_inputs(pixels)
    if classes is None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k: expected an int >= 1, got {top_k!r}")
        targets: list[Target] = [TopClass(rank) for rank in range(top_k)]
    else:
        wanted = [classes] if isinstance(classes, (int, str)) else list(classes)
        targets = [ClassLogit(adapter.class_index(c)) for c in wanted]
    res = plan.run(adapter.model, layer, adapter.reshape_for(pixels), inputs, targets, size=tuple(shown.shape[-2:]))
    chosen = torch.stack([t.indices(res.output)[0] if isinstance(t, TopClass) else torch.tensor(t.index) for t in targets])
    labels = adapter.class_names([int(i) for i in chosen])
    return ClassExplanation(labels, chosen, res.scores[:, 0], res.maps[:, 0], shown, res, _pixels(res))
