"""Figures for caption and VQA explanations: one panel per word; answer + counterfactual.

Built on :mod:`mmexplain.viz.core` (aligned overlays, fixed 0-1 colour scale). matplotlib
is imported inside the functions; figures are plain ``matplotlib.figure.Figure``
objects (no pyplot state), so they display in a notebook and save with
:func:`~mmexplain.viz.core.save_figure`.

Example:
    >>> import mmexplain as mx
    >>> ex = mx.explain_caption(captioner, image)            # doctest: +SKIP
    >>> fig = mx.viz.plot_caption(ex, hide_function_words=True)   # doctest: +SKIP
    >>> mx.viz.save_figure(fig, "caption.png")               # doctest: +SKIP
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING

import numpy as np

from ..words import FUNCTION_WORDS
from .core import add_colorbar, overlay, to_image_array

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..explain import AnswerExplanation, CaptionExplanation, ClassExplanation

__all__ = ["plot_caption", "plot_answer", "plot_classes"]

PANEL = 2.1  # inches per panel side
MAX_COLUMNS = 6  # panels per row before a caption wraps onto the next row
CMAP = "jet"


def _blank(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _image(ax: Axes, image, title: str | None = None) -> None:
    ax.imshow(to_image_array(image), interpolation="nearest")
    _blank(ax)
    if title is not None:
        ax.set_title(title, fontsize=10)


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width=max(width, 20))) or text


def plot_caption(ex: CaptionExplanation, *, hide_function_words: bool = False, note: str | None = None) -> Figure:
    """One panel per caption word, then the whole-caption map; the caption as the title.

    Panels read left to right and wrap onto new rows (at most ``MAX_COLUMNS`` per row):
    the image, then each word's Grad-CAM map over the image titled with the word and
    its probability p(word | image, previous words), then the map of the whole
    caption's log-probability. With ``method="guided"`` explanations, a row of Guided
    Grad-CAM images sits under each row of maps. All maps share one 0-1 colour bar.

    Args:
        ex: the result of :func:`mmexplain.explain_caption`.
        hide_function_words: leave out "a", "of", ... (``mmexplain.words.FUNCTION_WORDS``);
            the whole-caption map still covers every word.
        note: a line under the title (e.g. how often each map points at the right object).

    Returns:
        The figure.
    """
    from matplotlib.figure import Figure

    words = list(ex.words)
    shown = [i for i, w in enumerate(words) if not (hide_function_words and w in FUNCTION_WORDS)]
    probs = ex.logprobs.detach().exp().cpu()  # (T,)
    # panels: image, one per shown word, whole caption
    panels: list[tuple[str, int | None]] = [("image", None)] + [("word", i) for i in shown] + [("caption", None)]
    guided = ex.guided is not None
    cols = min(len(panels), MAX_COLUMNS)
    rows = math.ceil(len(panels) / cols)
    per_row = 2 if guided else 1  # map row (+ guided row) per wrapped line
    title = f"\u201c{ex.caption}\u201d"
    title_lines = _wrap(title, int(cols * PANEL * 9)).count("\n") + 1
    if note:
        title = f"{_wrap(title, int(cols * PANEL * 9))}\n{_wrap(note, int(cols * PANEL * 11))}"
        title_lines = title.count("\n") + 1
    fig = Figure(figsize=(PANEL * cols + 0.9, PANEL * 1.05 * rows * per_row + 0.35 * title_lines + 0.2),
                 layout="constrained")
    axes = np.asarray(fig.subplots(rows * per_row, cols, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    mappable = None
    map_axes = []
    image = ex.image
    for n, (kind, i) in enumerate(panels):
        r, c = divmod(n, cols)
        ax = axes[r * per_row, c]
        ax.set_axis_on()
        if kind == "image":
            _image(ax, image, "image")
        elif kind == "word":
            overlay(image, ex.maps[i], ax=ax, cmap=CMAP, colorbar=False,
                    title=f"{i + 1}. {words[i]}\np = {float(probs[i]):.2f}")
            mappable = ax.images[-1]
            map_axes.append(ax)
        else:
            overlay(image, ex.caption_map, ax=ax, cmap=CMAP, colorbar=False,
                    title=f"whole caption\nlog p = {float(ex.logprobs.sum()):.2f}")
            mappable = ax.images[-1]
            map_axes.append(ax)
            for spine in ax.spines.values():  # set the sum apart from the words
                spine.set_edgecolor("black")
                spine.set_linewidth(2)
        if guided and kind == "word":
            gax = axes[r * per_row + 1, c]
            gax.set_axis_on()
            gax.imshow(to_image_array(ex.guided[i], normalize=True), interpolation="nearest")
            _blank(gax)
            gax.set_title(f"guided: {words[i]}", fontsize=9)
    if mappable is not None:
        add_colorbar(fig, mappable, map_axes)
    fig.suptitle(title if note else _wrap(title, int(cols * PANEL * 9)), fontsize=12)
    return fig


def plot_answer(ax: AnswerExplanation, *, method: str = "Grad-CAM", note: str | None = None) -> Figure:  # noqa: D417
    """Where a VQA model looks for its answer, and what argues against it.

    One row per explained answer (``top_k > 1`` gives several): the image; when the
    adapter provides them, a bar per question token (gradient x embedding, scaled to
    the row's largest; green supports the answer, red argues against it); the
    answer's Grad-CAM map (answer and probability in the title); and the
    counterfactual map ("against <answer>": regions whose removal would raise the
    answer's score). The question is the
    figure title; the maps share one 0-1 colour bar.

    Args:
        ax: the result of :func:`mmexplain.explain_answer`.
        method: the name of the maps' method, in the panel titles.
        note: a line under the title (e.g. how often the maps point at the right object).

    Returns:
        The figure.
    """
    from matplotlib.figure import Figure

    ex = ax
    k = len(ex.answers)
    bars = ex.token_attributions is not None and len(ex.question_tokens) > 0
    cols = 4 if bars else 3
    widths = [1, 1.35, 1, 1] if bars else [1, 1, 1]
    fig = Figure(figsize=(PANEL * sum(widths) + 1.0, PANEL * 1.12 * k + 0.55 + (0.3 if note else 0)), layout="constrained")
    axes = np.asarray(fig.subplots(k, cols, squeeze=False, gridspec_kw={"width_ratios": widths}))
    first_map = 2 if bars else 1  # image | (question words) | answer map | counterfactual | colour bar
    map_axes = []
    mappable = None
    probs = ex.probabilities.detach().cpu() if ex.probabilities is not None else None
    for row, answer in enumerate(ex.answers):
        p = f"p = {float(probs[row]):.2f}" if probs is not None else f"score {float(ex.scores[row]):.2f}"
        rank = f"#{row + 1} " if k > 1 else ""
        _image(axes[row, 0], ex.image, "image" if row == 0 else None)
        if bars:
            _token_bars(axes[row, 1], ex.question_tokens, ex.token_attributions[row].detach().cpu().numpy(),
                        title=f"question words for \u201c{answer}\u201d")
        a_ax, c_ax = axes[row, first_map], axes[row, first_map + 1]
        tag = "" if method == "Grad-CAM" else f"{method}, "
        overlay(ex.image, ex.maps[row], ax=a_ax, cmap=CMAP, colorbar=False, title=f"{rank}answer: {answer}\n{tag}{p}")
        overlay(ex.image, ex.counterfactuals[row], ax=c_ax, cmap=CMAP, colorbar=False,
                title=f"against \u201c{answer}\u201d\n(counterfactual)")  # the method: answer panel, note
        map_axes += [a_ax, c_ax]
        mappable = c_ax.images[-1]
    add_colorbar(fig, mappable, map_axes)
    fig.suptitle(f"Q: {ex.question}" + (f"\n{_wrap(note, int(PANEL * sum(widths) * 11))}" if note else ""), fontsize=12)
    return fig


def plot_classes(cx: ClassExplanation, *, note: str | None = None) -> Figure:
    """A classifier's class maps for one image: the image, then one map per class.

    With ``method="guided"`` explanations a row of Guided Grad-CAM images sits under the
    maps. Titles: class and logit; the maps share one 0-1 colour bar.

    Args:
        cx: the result of :func:`mmexplain.explain_class`.
        note: a line under the panels' title (e.g. how often the maps point at the object).

    Returns:
        The figure.
    """
    from matplotlib.figure import Figure

    k = len(cx.labels)
    guided = cx.guided is not None
    rows = 2 if guided else 1
    fig = Figure(figsize=(PANEL * (k + 1) + 0.9, PANEL * 1.1 * rows + (0.35 if note else 0) + 0.2), layout="constrained")
    axes = np.asarray(fig.subplots(rows, k + 1, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    axes[0, 0].set_axis_on()
    _image(axes[0, 0], cx.image, "image")
    map_axes = []
    for i, (label, score) in enumerate(zip(cx.labels, cx.scores.tolist())):
        ax = axes[0, i + 1]
        ax.set_axis_on()
        overlay(cx.image, cx.maps[i], ax=ax, cmap=CMAP, colorbar=False, title=f"{label}\nlogit {score:.2f}")
        map_axes.append(ax)
        if guided:
            gax = axes[1, i + 1]
            gax.set_axis_on()
            gax.imshow(to_image_array(cx.guided[i], normalize=True), interpolation="nearest")
            _blank(gax)
            gax.set_title(f"guided: {label}", fontsize=9)
    add_colorbar(fig, map_axes[-1].images[-1], map_axes)
    if note:
        fig.suptitle(_wrap(note, int((k + 1) * PANEL * 11)), fontsize=11)
    return fig


def _token_bars(ax: Axes, tokens: list[str], values: np.ndarray, *, title: str | None) -> None:
    """Horizontal bars, question order top to bottom, scaled to the row's largest |value|."""
    scale = float(np.abs(values).max()) or 1.0
    v = values / scale
    y = np.arange(len(tokens))
    ax.barh(y, v, color=["#2a9d3f" if x >= 0 else "#d62728" for x in v], height=0.7)
    ax.set_yticks(y, tokens, fontsize=9)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(-1.1, 1.1)
    ax.set_xticks([-1, 0, 1])
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("grad \u00d7 embedding (scaled)", fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title is not None:
        ax.set_title(title, fontsize=10)
