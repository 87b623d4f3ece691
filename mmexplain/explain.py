"""High-level explainers: per-word caption maps, VQA answer grounding, class maps.

Each explainer runs ONE forward pass and explains many scalars from it through the
engine's batched backward: every word of a caption, or the top-k answers together
with their counterfactuals.

Models plug in through small adapters (``CaptionAdapter``, ``AnswerAdapter``): the
reference models of ``mx.zoo`` are adapted automatically; Hugging Face models get
theirs from ``mx.hf``. An adapter says how to load an image, what one teacher-forced
forward takes, and which logits/tokens score each word or answer; the explainers
and the engine stay model-agnostic.

Example:
    >>> import mmexplain as mx
    >>> captioner = mx.zoo.load("captioner")                     # doctest: +SKIP
    >>> ex = mx.explain_caption(captioner, mx.world.generate(7).image)   # doctest: +SKIP
    >>> ex.words, ex.maps.shape                                   # doctest: +SKIP
    (['a', 'small', 'red', 'circle'], torch.Size([4, 96, 96]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .methods import CAMResult, GradCAM, upsample_and_normalize
from .targets import AnswerScore, ClassLogit, Counterfactual, SequenceLogProb, Target, TopClass, logits_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "CaptionAdapter",
    "AnswerAdapter",
    "AnswerQuery",
    "CaptionExplanation",
    "AnswerExplanation",
    "ClassExplanation",
    "explain_caption",
    "explain_answer",
    "explain_class",
    "caption_adapter",
    "answer_adapter",
    "FUNCTION_WORDS",
]

# words a reader skips when looking for what a caption is about (plots may hide them)
FUNCTION_WORDS = frozenset({"a", "an", "the", "of", "and", "is", "are", "to", "with", "in", "on", "at", "there", "it"})

METHODS = ("gradcam", "guided")


# ---------------------------------------------------------------- adapter protocols


@runtime_checkable
class CaptionAdapter(Protocol):
    """How ``explain_caption`` drives a captioning model.

    Attributes:
        model: the ``nn.Module`` that the engine hooks and calls.
        default_layer: dotted name of the layer explained by default.
        reshape: ``tokens -> (B, D, h, w)`` for token-shaped layers, else None.
    """

    model: nn.Module
    default_layer: str
    reshape: Callable[[Tensor], Tensor] | None

    def load_image(self, image: Any) -> Tensor:
        """Path / PIL / array / tensor -> the model's pixels, (1, 3, H, W)."""

    def display_image(self, pixels: Tensor) -> Tensor:
        """The image the maps are drawn on: (3, H, W) in [0, 1], aligned with the maps."""

    def generate(self, pixels: Tensor) -> list[str]:
        """The model's caption of the image, as words a person reads."""

    def split_words(self, caption: str) -> list[str]:
        """A given caption -> its words; an unknown word raises ValueError naming it."""

    def teacher_forced(self, pixels: Tensor, words: Sequence[str]) -> tuple[Any, list[tuple[list[int], list[int]]]]:
        """Inputs of ONE teacher-forced forward, and per word (logit positions, token ids).

        The log-probability of word i is the sum over its tokens j of
        ``log_softmax(logits[:, positions[j]])[tokens[j]]`` (sub-word tokens merge here).
        """


@dataclass
class AnswerQuery:
    """One VQA forward pass, prepared by an ``AnswerAdapter``.

    Attributes:
        inputs: the model inputs (tensor, tuple or dict).
        targets: one target per explained answer (evidence for it).
        answers: the answer names, or a function of the model output giving them
            (when the targets follow the prediction, e.g. ``TopClass``).
        question_tokens: the question's tokens as the model reads them.
        token_positions: where those tokens sit along the sequence axis of the
            adapter's ``question_layer`` output.
        probabilities: output -> (k,) probability of each explained answer, if known.
    """

    inputs: Any
    targets: list[Target]
    answers: list[str] | Callable[[Any], list[str]]
    question_tokens: list[str] = field(default_factory=list)
    token_positions: list[int] = field(default_factory=list)
    probabilities: Callable[[Any], Tensor] | None = None


@runtime_checkable
class AnswerAdapter(Protocol):
    """How ``explain_answer`` drives a VQA model.

    Attributes:
        model, default_layer, reshape: as in ``CaptionAdapter``.
        question_layer: dotted name of the layer whose output (B, L, E) embeds the
            question tokens (gradient x embedding attributions), or None.
    """

    model: nn.Module
    default_layer: str
    reshape: Callable[[Tensor], Tensor] | None
    question_layer: str | None

    def load_image(self, image: Any) -> Tensor:
        """Path / PIL / array / tensor -> the model's pixels, (1, 3, H, W)."""

    def display_image(self, pixels: Tensor) -> Tensor:
        """(3, H, W) in [0, 1], aligned with the maps."""

    def query(self, pixels: Tensor, question: str, answer: str | None, top_k: int) -> AnswerQuery:
        """Inputs and targets for the given answer, or for the top-k predicted answers."""


# ---------------------------------------------------------------- zoo adapters


class _ZooModel:
    """What the zoo adapters share: the model, its default layer and its image handling."""

    reshape = None

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.default_layer = model.default_layer

    def load_image(self, image: Any) -> Tensor:
        return self.model.preprocess(image)  # (1, 3, H, W) in [0, 1]

    def display_image(self, pixels: Tensor) -> Tensor:
        return pixels[0].detach().clamp(0, 1)  # the model normalises inside forward


class ZooCaptionAdapter(_ZooModel):
    """Adapter for ``mx.zoo`` captioners: ``forward(images, [<bos>, w1..wT]) -> (B, L, V)``."""

    def generate(self, pixels: Tensor) -> list[str]:
        return self.model.generate(pixels)[0]

    def split_words(self, caption: str) -> list[str]:
        words = caption.split()
        vocab = self.model.vocab
        unknown = [w for w in words if w not in vocab or vocab.stoi[w] in (vocab.pad, vocab.bos, vocab.eos, vocab.unk)]
        if unknown:
            raise ValueError(f"caption: unknown word {unknown[0]!r}; the captioner's vocabulary has {len(vocab) - 4} words")
        return words

    # the LSTM decoder's batched (vmap) backward gains nothing on CPU: explain the words
    # through the batch axis instead (the CNN still runs once; see GradCAM targets_in_batch)
    targets_in_batch = True

    def teacher_forced(
        self, pixels: Tensor, words: Sequence[str], *, copies: int = 1
    ) -> tuple[Any, list[tuple[list[int], list[int]]]]:
        ids = self.model.vocab.encode(list(words))
        tokens = torch.tensor([[self.model.vocab.bos, *ids]], dtype=torch.long, device=pixels.device)  # (1, T+1)
        tokens = tokens.repeat(copies, 1)  # (copies, T+1): one row per explained word
        return (pixels, tokens), [([t], [tok]) for t, tok in enumerate(ids)]  # word t+1 is read at position t


class ZooAnswerAdapter(_ZooModel):
    """Adapter for ``mx.zoo`` VQA models (answer classifiers over ``model.answers``)."""

    question_layer = "embed"

    def query(self, pixels: Tensor, question: str, answer: str | None, top_k: int) -> AnswerQuery:
        from .zoo.vocab import tokenize

        ids = self.model.encode_question(question).to(pixels.device)  # (L,)
        answers = list(self.model.answers)
        if answer is not None:
            if answer not in answers:
                raise ValueError(f"answer {answer!r} is not one of the model's {len(answers)} answers: {', '.join(answers)}")
            index = answers.index(answer)
            targets: list[Target] = [AnswerScore(index)]
            names: list[str] | Callable[[Any], list[str]] = [answer]
            picked = lambda out: torch.tensor([index])  # noqa: E731
        else:
            if top_k > len(answers):
                raise ValueError(f"top_k: the model has {len(answers)} answers, cannot explain the top {top_k}")
            targets = [TopClass(rank) for rank in range(top_k)]
            picked = lambda out: torch.stack([t.indices(out)[0] for t in targets])  # noqa: E731
            names = lambda out: [answers[int(i)] for i in picked(out)]  # noqa: E731
        probabilities = lambda out: logits_of(out)[0].softmax(-1)[picked(out).to(logits_of(out).device)]  # noqa: E731
        tokens = tokenize(question)
        return AnswerQuery((pixels, ids[None]), targets, names, tokens, list(range(len(tokens))), probabilities)


def caption_adapter(captioner: Any) -> CaptionAdapter:
    """The adapter for a captioner: itself if it is one, else the zoo adapter."""
    if isinstance(captioner, CaptionAdapter):
        return captioner
    if isinstance(captioner, nn.Module) and all(hasattr(captioner, a) for a in ("vocab", "generate", "preprocess", "default_layer")):
        return ZooCaptionAdapter(captioner)
    raise TypeError(
        f"captioner: expected an mx.zoo captioner or a CaptionAdapter (e.g. mx.hf.caption_adapter(model, processor)), "
        f"got {type(captioner).__name__}"
    )


def answer_adapter(vqa: Any) -> AnswerAdapter:
    """The adapter for a VQA model: itself if it is one, else the zoo adapter."""
    if isinstance(vqa, AnswerAdapter):
        return vqa
    if isinstance(vqa, nn.Module) and all(hasattr(vqa, a) for a in ("answers", "encode_question", "preprocess", "default_layer")):
        return ZooAnswerAdapter(vqa)
    raise TypeError(
        f"vqa: expected an mx.zoo VQA model or an AnswerAdapter (e.g. mx.hf.answer_adapter(model, processor)), "
        f"got {type(vqa).__name__}"
    )


# ---------------------------------------------------------------- results


@dataclass
class CaptionExplanation:
    """Per-word maps of a caption.

    Attributes:
        words: the caption's words (T of them), as a person reads them.
        maps: (T, H, W) Grad-CAM map of each word's log-probability, in [0, 1].
        logprobs: (T,) log p(word | image, previous words).
        caption_map: (H, W) map of the whole caption's log-probability, which equals
            ReLU(sum_t pre-ReLU map of word t) (the engine is linear in the target).
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
class AnswerExplanation:
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
class ClassExplanation:
    """Grad-CAM maps of a classifier's classes for one image.

    Attributes:
        labels: the explained class names (or indices as strings).
        indices: (k,) class indices.
        scores: (k,) logits.
        maps: (k, H, W).
        image: (3, H, W) in [0, 1].
        result: the engine's CAMResult.
    """

    labels: list[str]
    indices: Tensor
    scores: Tensor
    maps: Tensor
    image: Tensor
    result: CAMResult

    def plot(self, *, path: str | None = None) -> Figure:
        from .viz import plot_maps, save_figure

        fig = plot_maps(self.image[None], self.maps[:, None], titles=[f"{l} ({float(s):.2f})" for l, s in zip(self.labels, self.scores)])
        if path is not None:
            save_figure(fig, path)
        return fig


# ---------------------------------------------------------------- explainers


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")


def explain_caption(
    captioner: Any,
    image: Any,
    caption: str | None = None,
    *,
    layer: str | nn.Module | None = None,
    method: str = "gradcam",
) -> CaptionExplanation:
    """Grad-CAM of every word of a caption: one forward pass, one batched backward.

    The explained scalar of word t is log p(w_t | image, w_<t) read from the
    teacher-forced logits (sub-word tokens summed). The map of word t depends on
    words up to t only; the whole-caption map is ReLU of the summed pre-ReLU word maps.

    Args:
        captioner: an ``mx.zoo`` captioner or a ``CaptionAdapter`` (``mx.hf`` builds them).
        image: a path, PIL image, numpy array or (3, H, W) tensor in [0, 1].
        caption: the caption to explain; None explains the model's own caption.
        layer: the layer to explain (default: the adapter's ``default_layer``).
        method: ``"gradcam"``, or ``"guided"`` to add Guided Grad-CAM per word.

    Returns:
        CaptionExplanation with ``words``, ``maps`` (T, H, W), ``logprobs`` (T,).
    """
    _check_method(method)
    if caption is not None and not isinstance(caption, str):
        raise TypeError(f"caption: expected a str or None, got {type(caption).__name__}")
    adapter = caption_adapter(captioner)
    pixels = adapter.load_image(image)  # (1, 3, H, W)
    shown = adapter.display_image(pixels)  # (3, H, W)
    if caption is None:
        words = adapter.generate(pixels)
        if not words:
            raise ValueError("the captioner generated an empty caption: nothing to explain")
    else:
        words = adapter.split_words(caption)
        if not words:
            raise ValueError("caption: expected at least one word, got an empty caption")
    plain_inputs, spans = adapter.teacher_forced(pixels, words)
    in_batch = bool(getattr(adapter, "targets_in_batch", False)) and len(words) > 1
    inputs = adapter.teacher_forced(pixels, words, copies=len(words))[0] if in_batch else plain_inputs
    targets: list[Target] = [SequenceLogProb(tokens, positions=positions) for positions, tokens in spans]
    size = tuple(shown.shape[-2:])
    cam = GradCAM(adapter.model, layer if layer is not None else adapter.default_layer, reshape=adapter.reshape)
    res = cam(inputs, targets, size=size, targets_in_batch=in_batch)
    caption_map = upsample_and_normalize(F.relu(res.pre_relu.sum(dim=0)), size)[0]  # (H, W)
    guided = None
    if method == "guided":
        from .methods import GuidedBackprop

        grads = GuidedBackprop(adapter.model)(plain_inputs, targets)[:, 0]  # (T, C, H, W), one forward
        if grads.shape[-2:] != res.maps.shape[-2:]:
            grads = F.interpolate(grads, size=res.maps.shape[-2:], mode="bilinear", align_corners=False)
        guided = grads * res.maps[:, 0, None]  # (T, C, H, W)
    return CaptionExplanation(list(words), res.maps[:, 0], res.scores[:, 0], caption_map, shown, res, guided)


def explain_answer(
    vqa: Any,
    image: Any,
    question: str,
    answer: str | None = None,
    *,
    top_k: int = 1,
    layer: str | nn.Module | None = None,
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
    """
    if not isinstance(question, str):
        raise TypeError(f"question: expected a str, got {type(question).__name__}")
    if not question.strip():
        raise ValueError("question: expected a non-empty question")
    if answer is not None and (not isinstance(answer, str) or not answer.strip()):
        raise ValueError(f"answer: expected a non-empty str or None, got {answer!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k: expected an int >= 1, got {top_k!r}")
    adapter = answer_adapter(vqa)
    pixels = adapter.load_image(image)
    shown = adapter.display_image(pixels)
    query = adapter.query(pixels, question, answer, top_k)
    k = len(query.targets)
    targets = [*query.targets, *(Counterfactual(t) for t in query.targets)]
    extra = {"question": adapter.question_layer} if adapter.question_layer else None
    cam = GradCAM(adapter.model, layer if layer is not None else adapter.default_layer, reshape=adapter.reshape)
    res = cam(query.inputs, targets, size=tuple(shown.shape[-2:]), extra_layers=extra)
    names = query.answers(res.output) if callable(query.answers) else list(query.answers)
    attributions = None
    if extra:
        embedding, grad = res.extra["question"]  # (1, L, E), (2k, 1, L, E)
        per_token = (grad[:k, 0] * embedding[0]).sum(dim=-1)  # (k, L)
        attributions = per_token[:, query.token_positions]
    probabilities = query.probabilities(res.output).detach() if query.probabilities else None
    return AnswerExplanation(
        question, names, res.scores[:k, 0], probabilities, res.maps[:k, 0], res.maps[k:, 0],
        list(query.question_tokens), attributions, shown, res,
    )


def explain_class(
    classifier: nn.Module,
    image: Any,
    classes: int | str | Sequence[int | str] | None = None,
    *,
    top_k: int = 1,
    layer: str | nn.Module | None = None,
) -> ClassExplanation:
    """Grad-CAM of a classifier's classes for one image (the paper's Sec. 4 setting).

    Args:
        classifier: an ``mx.zoo`` classifier, or any ``nn.Module`` mapping (1, 3, H, W)
            to (1, C) logits (then pass ``layer`` and an image tensor).
        image: a path, PIL image, numpy array or (3, H, W) tensor in [0, 1].
        classes: class indices or names to explain; default the top-k predicted.
        top_k: how many predicted classes to explain when ``classes`` is None.
        layer: the layer to explain (default ``classifier.default_layer``).
    """
    if layer is None:
        layer = getattr(classifier, "default_layer", None)
        if layer is None:
            raise ValueError("layer: this classifier has no default_layer; pass layer=")
    names = list(getattr(classifier, "classes", []))
    if hasattr(classifier, "preprocess"):
        pixels = classifier.preprocess(image)
    elif isinstance(image, Tensor) and image.dim() in (3, 4):
        pixels = image if image.dim() == 4 else image[None]
    else:
        raise TypeError(f"image: a plain nn.Module classifier takes a (3, H, W) tensor, got {type(image).__name__}")
    cam = GradCAM(classifier, layer)
    if classes is None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k: expected an int >= 1, got {top_k!r}")
        targets: list[Target] = [TopClass(rank) for rank in range(top_k)]
    else:
        wanted = [classes] if isinstance(classes, (int, str)) else list(classes)
        indices = []
        for c in wanted:
            if isinstance(c, str):
                if c not in names:
                    raise ValueError(f"classes: unknown class {c!r}; known: {', '.join(names) or '(no class names)'}")
                c = names.index(c)
            indices.append(c)
        targets = [ClassLogit(i) for i in indices]
    res = cam(pixels, targets)
    chosen = torch.stack([t.indices(res.output)[0] if isinstance(t, TopClass) else torch.tensor(t.index) for t in targets])
    labels = [names[int(i)] if names else str(int(i)) for i in chosen]
    shown = pixels[0].detach().clamp(0, 1)
    return ClassExplanation(labels, chosen, res.scores[:, 0], res.maps[:, 0], shown, res)
