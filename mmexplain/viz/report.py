"""A self-contained interactive HTML report: point at a caption word, see its map over the image.

One HTML file holds every section (one image each): the image large on a ``<canvas>``, the
caption as words to point at or click (each with p = exp(log-probability)), the whole-caption
map, a toggle between methods, an opacity slider and a colour bar; for VQA the question with
its words coloured by attribution, the top-k answers with their probabilities and a
counterfactual toggle. Left/right arrow keys step through the words or answers.

The file makes no network request (no CDN, no web font) and works from ``file://``: maps
travel as one JSON of base64 uint8 arrays (``round(255 * map)``, error <= 1/510), the image
as a PNG data URI, and a small script draws them. All text reaches the page through JSON
and ``textContent``, so words such as ``<script>`` stay words.

Example:
    >>> import mmexplain as mx
    >>> ex = mx.explain_caption(mx.zoo.load("captioner"), mx.world.generate(7).image)  # doctest: +SKIP
    >>> ax = mx.explain_answer(mx.zoo.load("vqa"), mx.world.generate(7).image,
    ...                        "what color is the circle ?", top_k=3)                   # doctest: +SKIP
    >>> mx.viz.write_report([ex, ax], "report.html")                                   # doctest: +SKIP
    >>> mx.viz.show(ex)          # in a notebook the report renders inline              # doctest: +SKIP
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._io import write_text
from .core import to_image_array
from .embedded import check_data_image
from .report_template import CSS, SCRIPT
from ..errors import InputError, InputTypeError

__all__ = ["caption_view", "answer_view", "figure_view", "render_report", "write_report", "ReportView", "show"]

MAX_MAP_SIDE = 256  # maps larger than this (long side) are area-averaged down before embedding
_TOL = 1e-4  # float slack when checking that map values lie in [0, 1]


# ---------------------------------------------------------------- encoding


def _as_float(value: Any, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().cpu().float()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.asarray(value, dtype=np.float32))
    raise InputTypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(value).__name__}")


def _maps(value: Any, name: str, *, count: int, max_side: int | None) -> Tensor:
    """Validate ``count`` maps (count, H, W) in [0, 1]; area-average them down past ``max_side``."""
    m = _as_float(value, name)
    if m.dim() == 2:
        m = m[None]  # (1, H, W)
    if m.dim() != 3 or m.shape[0] != count:
        raise InputError(f"{name}: expected shape ({count}, H, W), got {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise InputError(f"{name}: contains NaN or inf")
    if m.numel() and (m.min() < -_TOL or m.max() > 1 + _TOL):
        raise InputError(f"{name}: values must lie in [0, 1] (normalized maps); got [{m.min():.3g}, {m.max():.3g}]")
    m = m.clamp(0, 1)
    if max_side is not None and max(m.shape[-2:]) > max_side:
        f = max_side / max(m.shape[-2:])
        size = (max(1, round(m.shape[-2] * f)), max(1, round(m.shape[-1] * f)))
        m = F.interpolate(m[None], size=size, mode="area")[0]  # (count, h, w)
    return m


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).decode("ascii")


def _quantize(maps: Tensor) -> str:
    """(N, h, w) in [0, 1] -> base64 of uint8 ``round(255 * map)``, row-major."""
    return _b64(torch.round(maps * 255).to(torch.uint8).numpy())


def _image_uri(image: Any, name: str) -> tuple[str, int, int]:
    """(3, H, W) in [0, 1] -> (PNG data URI, W, H)."""
    from PIL import Image

    pixels = (to_image_array(_as_float(image, name)) * 255).round().astype(np.uint8)  # (H, W, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), pixels.shape[1], pixels.shape[0]


def _texts(values: Any, name: str, *, count: int, extra: int = 0) -> list[str | None]:
    """Per-entry strings: None, a sequence of ``count`` (or ``count + extra``), or ``{index: text}``."""
    out: list[str | None] = [None] * (count + extra)
    if values is None:
        return out
    if isinstance(values, str):
        raise InputTypeError(f"{name}: expected one string per entry (a list or a dict), got a single str")
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    if not isinstance(values, Mapping) and len(values) not in (count, count + extra):
        sizes = f"{count}" + (f" or {count + extra}" if extra else "")
        raise InputError(f"{name}: expected {sizes} entries, got {len(values)}")
    for i, text in items:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count + extra:
            raise InputError(f"{name}: index {i!r} out of range 0..{count + extra - 1}")
        if text is not None and not isinstance(text, str):
            raise InputTypeError(f"{name}[{i}]: expected a str or None, got {type(text).__name__}")
        out[i] = text or None
    return out


def _numbers(value: Any) -> list[float]:
    """Floats to 7 significant digits (float32 precision), for the JSON."""
    return [float(f"{float(x):.7g}") for x in _as_float(value, "values").flatten()]


# ---------------------------------------------------------------- views


def caption_view(
    ex: Any,
    *,
    methods: Mapping[str, Any] | None = None,
    descriptions: Sequence[str | None] | Mapping[int, str] | None = None,
    title: str | None = None,
    method: str = "Grad-CAM",
    max_map_side: int | None = MAX_MAP_SIDE,
) -> dict[str, Any]:
    """A caption explanation as a JSON-able report section.

    Args:
        ex: a ``CaptionExplanation``: ``words`` (T), ``maps`` (T, H, W) in [0, 1],
            ``logprobs`` (T,), ``caption_map`` (H, W), ``image`` (3, H, W) in [0, 1] and
            ``guided`` (T, 3, H, W) or None (then a "Guided Grad-CAM" entry is added).
        methods: ``{name: CaptionExplanation}`` of the same words, to toggle between
            methods; ``ex`` joins them as ``method`` unless it is one of the values.
        descriptions: a text per word (T), optionally one more for the whole caption
            (T + 1), or ``{index: text}``; e.g. the units behind each word's map.
        title: the section heading (default: none; the words stand below it).
        method: the name of ``ex``'s method.
        max_map_side: maps with a longer side are area-averaged down to it (None: never).

    Returns:
        ``{"kind": "caption", "words", "probabilities", "methods": [{"name", "kind",
        "count", "maps"}], ...}``; ``maps`` is base64 of uint8 (count, h, w) (``kind
        "heat"``, words then the whole caption) or (T, h, w, 3) (``"rgb"``).
    """
    words = list(getattr(ex, "words", None) or [])
    if not words or not all(isinstance(w, str) for w in words):
        raise InputError("ex: expected a caption explanation with a non-empty list of words")
    T = len(words)
    chosen: dict[str, Any] = {}
    if methods is not None:
        if not isinstance(methods, Mapping) or not methods:
            raise InputTypeError("methods: expected a non-empty {name: CaptionExplanation} mapping")
        if not any(other is ex for other in methods.values()):
            if method in methods:
                raise InputError(f"methods: name {method!r} is taken; pass method= to name ex's method")
            chosen[method] = ex
        chosen.update(methods)
    else:
        chosen[method] = ex
    image, width, height = _image_uri(ex.image, "ex.image")
    entries = []
    shape = None
    for name, other in chosen.items():
        label = "ex" if other is ex else f"methods[{name!r}]"
        if list(getattr(other, "words", [])) != words:
            raise InputError(f"{label}: words differ from ex.words ({' '.join(words)!r})")
        stacked = torch.cat([_as_float(other.maps, f"{label}.maps"), _as_float(other.caption_map, f"{label}.caption_map")[None]])
        maps = _maps(stacked, f"{label}.maps", count=T + 1, max_side=max_map_side)  # (T + 1, h, w)
        if shape is not None and maps.shape != shape:
            raise InputError(f"{label}: maps of shape {tuple(maps.shape)} differ from the first method's {tuple(shape)}")
        shape = maps.shape
        entries.append({"name": str(name), "kind": "heat", "count": T + 1, "maps": _quantize(maps)})
        guided = getattr(other, "guided", None)
        if guided is not None:
            g = _as_float(guided, f"{label}.guided")
            if g.dim() != 4 or g.shape[0] != T or g.shape[1] not in (1, 3):
                raise InputError(f"{label}.guided: expected shape ({T}, 3, H, W), got {tuple(g.shape)}")
            g = F.interpolate(g, size=tuple(shape[-2:]), mode="area" if g.shape[-1] > shape[-1] else "bilinear")
            rgb = np.stack([to_image_array(g[t], normalize=True) for t in range(T)])  # (T, h, w, 3)
            entries.append({"name": f"Guided {name}", "kind": "rgb", "count": T, "maps": _b64(np.round(rgb * 255))})
    logprobs = _as_float(ex.logprobs, "ex.logprobs").flatten()
    if logprobs.numel() != T:
        raise InputError(f"ex.logprobs: expected {T} values (one per word), got {logprobs.numel()}")
    return {
        "kind": "caption",
        "title": str(title) if title is not None else None,
        "image": image, "width": width, "height": height,
        "map_width": int(shape[-1]), "map_height": int(shape[-2]),
        "words": words,
        "probabilities": _numbers(logprobs.exp()),
        "caption_probability": float(math.exp(float(logprobs.sum()))),
        "descriptions": _texts(descriptions, "descriptions", count=T, extra=1),
        "methods": entries,
        "start": T,  # the page opens on the whole-caption map
    }


def answer_view(
    ax: Any,
    *,
    methods: Mapping[str, Any] | None = None,
    descriptions: Sequence[str | None] | Mapping[int, str] | None = None,
    title: str | None = None,
    method: str = "Grad-CAM",
    max_map_side: int | None = MAX_MAP_SIDE,
) -> dict[str, Any]:
    """A VQA explanation as a JSON-able report section.

    Args:
        ax: an ``AnswerExplanation``: ``question``, ``answers`` (k), ``scores`` (k,),
            ``probabilities`` (k,) or None, ``maps`` and ``counterfactuals`` (k, H, W) in
            [0, 1], ``question_tokens`` (L), ``token_attributions`` (k, L) or None, ``image``.
        methods: ``{name: AnswerExplanation}`` of the same answers by other methods, to
            toggle between them; ``ax`` comes first, named ``method``.
        descriptions: a text per answer (k) or ``{index: text}``.
        title: the section heading (default: none; the question stands below it).
        method: the name of ``ax``'s method.
        max_map_side: maps with a longer side are area-averaged down to it (None: never).

    Returns:
        ``{"kind": "answer", "question", "answers", "probabilities", "maps",
        "counterfactuals", "tokens", "attributions", "methods": [{"name", "maps",
        "counterfactuals"}], ...}``; the maps are base64 of uint8 (k, h, w); the top-level
        ``maps``/``counterfactuals`` are ``ax``'s (the first method).
    """
    answers = list(getattr(ax, "answers", None) or [])
    if not answers or not all(isinstance(a, str) for a in answers):
        raise InputError("ax: expected an answer explanation with a non-empty list of answers")
    k = len(answers)
    question = str(ax.question)
    maps = _maps(ax.maps, "ax.maps", count=k, max_side=max_map_side)  # (k, h, w)
    counter = _maps(ax.counterfactuals, "ax.counterfactuals", count=k, max_side=max_map_side)
    if counter.shape != maps.shape:
        raise InputError(f"ax.counterfactuals: shape {tuple(counter.shape)} differs from ax.maps' {tuple(maps.shape)}")
    image, width, height = _image_uri(ax.image, "ax.image")
    tokens = [str(t) for t in (getattr(ax, "question_tokens", None) or [])]
    attributions = None
    if getattr(ax, "token_attributions", None) is not None and tokens:
        a = _as_float(ax.token_attributions, "ax.token_attributions")
        if tuple(a.shape) != (k, len(tokens)):
            raise InputError(f"ax.token_attributions: expected shape ({k}, {len(tokens)}), got {tuple(a.shape)}")
        attributions = [_numbers(row) for row in a]
    probabilities = None if ax.probabilities is None else _numbers(ax.probabilities)
    if probabilities is not None and len(probabilities) != k:
        raise InputError(f"ax.probabilities: expected {k} values, got {len(probabilities)}")
    entries = [{"name": str(method), "maps": _quantize(maps), "counterfactuals": _quantize(counter)}]
    if methods is not None:
        if not isinstance(methods, Mapping) or not methods:
            raise InputTypeError("methods: expected a non-empty {name: AnswerExplanation} mapping")
        for name, other in methods.items():
            if other is ax:
                continue
            if str(name) in (e["name"] for e in entries):
                raise InputError(f"methods: name {name!r} is taken; pass method= to name ax's method")
            if list(getattr(other, "answers", [])) != answers:
                raise InputError(f"methods[{name!r}]: answers differ from ax.answers ({', '.join(answers)})")
            m = _maps(other.maps, f"methods[{name!r}].maps", count=k, max_side=max_map_side)
            c = _maps(other.counterfactuals, f"methods[{name!r}].counterfactuals", count=k, max_side=max_map_side)
            if m.shape != maps.shape or c.shape != maps.shape:
                raise InputError(f"methods[{name!r}]: maps of shape {tuple(m.shape)} differ from ax's {tuple(maps.shape)}")
            entries.append({"name": str(name), "maps": _quantize(m), "counterfactuals": _quantize(c)})
    return {
        "kind": "answer",
        "title": str(title) if title is not None else None,
        "image": image, "width": width, "height": height,
        "map_width": int(maps.shape[-1]), "map_height": int(maps.shape[-2]),
        "question": question,
        "answers": answers,
        "scores": _numbers(ax.scores),
        "probabilities": probabilities,
        "maps": entries[0]["maps"],
        "counterfactuals": entries[0]["counterfactuals"],
        "methods": entries,
        "tokens": tokens,
        "attributions": attributions,
        "descriptions": _texts(descriptions, "descriptions", count=k),
    }


def figure_view(
    image: str | os.PathLike[str] | bytes | None = None,
    *,
    title: str,
    kicker: str = "Figure",
    paragraphs: Sequence[str] = (),
    items: Sequence[str] = (),
) -> dict[str, Any]:
    """A static report section: a heading, text, a bulleted list and a PNG figure.

    For results that have no interactive view (a classifier's class maps, neuron names).

    Args:
        image: a PNG file (path or bytes), drawn below the text; None: text only.
        title: the section heading.
        kicker: the small line above the heading.
        paragraphs: text paragraphs (plain text; shown as text, never as HTML).
        items: bullet points (plain text).

    Returns:
        ``{"kind": "figure", "title", "kicker", "paragraphs", "items", "image"}``; ``image``
        is a PNG data URI or None.
    """
    for name, value in (("title", title), ("kicker", kicker)):
        if not isinstance(value, str):
            raise InputTypeError(f"{name}: expected a str, got {type(value).__name__}")
    for name, values in (("paragraphs", paragraphs), ("items", items)):
        if isinstance(values, str) or not all(isinstance(v, str) for v in values):
            raise InputTypeError(f"{name}: expected a list of str")
    uri = None
    if image is not None:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise InputError(f"image: expected PNG data, got {str(image)[:80] if not isinstance(image, bytes) else 'other bytes'}")
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return {"kind": "figure", "title": title, "kicker": kicker, "paragraphs": list(paragraphs), "items": list(items),
            "image": uri}


def _sections(items: Any, **options: Any) -> list[dict[str, Any]]:
    """Sections from views and/or explanations (dispatch: ``.words`` caption, ``.answers`` VQA)."""
    if isinstance(items, Mapping) or hasattr(items, "words") or hasattr(items, "answers"):
        items = [items]
    elif isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise InputTypeError(f"sections: expected report sections or explanations (or a list of them), got {type(items).__name__}")
    if options and len(items) != 1:
        raise InputError(f"{', '.join(sorted(options))}: per-explanation options need exactly one explanation, "
                         f"got {len(items)}; build several sections with caption_view/answer_view")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            if options:
                raise InputError(f"{', '.join(sorted(options))}: sections[{i}] is already a view; pass the explanation")
            if item.get("kind") not in ("caption", "answer", "figure"):
                raise InputError(f"sections[{i}]: expected a section from caption_view, answer_view or figure_view")
            if not (item["kind"] == "figure" and item.get("image") is None):  # a text-only figure section
                check_data_image(item.get("image"), f"sections[{i}]['image']")
            out.append(dict(item))
        elif hasattr(item, "words"):
            out.append(caption_view(item, **options))
        elif hasattr(item, "answers"):
            out.append(answer_view(item, **options))
        else:
            raise InputTypeError(f"sections[{i}]: expected a section, a CaptionExplanation or an AnswerExplanation, "
                            f"got {type(item).__name__}")
    if not out:
        raise InputError("sections: expected at least one section")
    return out


# ---------------------------------------------------------------- documents


def _fragment(sections: list[dict[str, Any]], title: str, *, standalone: bool) -> str:
    """The report as one ``<div>`` (style, data and script inside), for a page or a notebook."""
    data = json.dumps({"version": 1, "sections": sections}, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # no "</script>" in the data
    rid = "mmx-" + hashlib.sha1(data.encode("ascii")).hexdigest()[:12]
    script = SCRIPT.replace("__RID__", json.dumps(rid))
    kinds = {"caption": "a caption word", "answer": "an answer"}
    present = [kinds[k] for k in kinds if any(s["kind"] == k for s in sections)]
    images = len({s["image"] for s in sections if s["kind"] in kinds})
    lead = (f"{images} image{'s' if images != 1 else ''}. Point at {' or '.join(present)} to draw its map over the image."
            if present else "")
    return (
        f'<div class="mmx-report" data-mmx-root="{rid}" data-standalone="{str(standalone).lower()}">\n'
        f"<style>{CSS}</style>\n"
        f'<h1 class="mmx-title">{html.escape(title)}</h1>\n'
        f'<p class="mmx-lead">{html.escape(lead)}</p>\n'
        "<noscript>This report draws its maps with JavaScript; enable it to see them.</noscript>\n"
        f'<script type="application/json" class="mmx-data">{data}</script>\n'
        f"<script>{script}</script>\n"
        "</div>"
    )


def render_report(sections: Any, *, title: str = "mmexplain report") -> str:
    """One self-contained HTML document of the given sections.

    Args:
        sections: views from :func:`caption_view` / :func:`answer_view`, explanations
            (``CaptionExplanation`` / ``AnswerExplanation``), or a list of them.
        title: the page title.

    Returns:
        The HTML text (no external resource: it works offline, from ``file://``).
    """
    if not isinstance(title, str):
        raise InputTypeError(f"title: expected a str, got {type(title).__name__}")
    body = _fragment(_sections(sections), title, standalone=True)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        '<link rel="icon" href="data:,">\n'
        f'</head>\n<body class="mmx-page">\n{body}\n</body>\n</html>\n'
    )


def write_report(sections_or_explanations: Any, path: str | os.PathLike[str], *, title: str = "mmexplain report") -> Path:
    """Render the report and write it to ``path`` atomically (temp file in its folder, then rename).

    Parent folders are created. When rendering or writing fails, no temporary file is
    left and an existing file at ``path`` stays as it was.

    Args:
        sections_or_explanations: as ``sections`` in :func:`render_report`.
        path: an ``.html`` (or ``.htm``) file.
        title: the page title.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"path {str(path)!r}: a report is an HTML file; use the .html extension")
    if path.is_dir():
        raise IsADirectoryError(f"path {str(path)!r} is a folder; give a file name such as report.html")
    return write_text(path, render_report(sections_or_explanations, title=title))


class ReportView:
    """A rendered report: displays itself inline in Jupyter, saves to an HTML file.

    Args:
        sections: as in :func:`render_report`.
        title: the page title.

    Example:
        >>> view = mx.viz.show([ex, ax])      # doctest: +SKIP
        >>> view                              # a notebook cell shows the report   # doctest: +SKIP
        >>> view.save("report.html")          # doctest: +SKIP
    """

    def __init__(self, sections: Any, *, title: str = "mmexplain report") -> None:
        if not isinstance(title, str):
            raise InputTypeError(f"title: expected a str, got {type(title).__name__}")
        self.sections = _sections(sections)
        self.title = title

    @property
    def html(self) -> str:
        """The whole HTML document."""
        return render_report(self.sections, title=self.title)

    def _repr_html_(self) -> str:
        return _fragment(self.sections, self.title, standalone=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report to ``path`` (``.html``) atomically; returns the path."""
        return write_report(self.sections, path, title=self.title)

    def __repr__(self) -> str:
        kinds = ", ".join(s["kind"] for s in self.sections)
        return f"ReportView({self.title!r}, sections=[{kinds}])"


def show(explanations: Any, *, title: str = "mmexplain report", **options: Any) -> ReportView:
    """The interactive report of one explanation or several, for a notebook cell.

    Args:
        explanations: a ``CaptionExplanation``, an ``AnswerExplanation``, a section
            from :func:`caption_view` / :func:`answer_view`, or a list of them.
        title: the page title.
        **options: passed to :func:`caption_view` / :func:`answer_view` (``methods=``,
            ``descriptions=``, ``title=`` of the section is ``section_title=``); one
            explanation only.

    Returns:
        A :class:`ReportView` (``_repr_html_`` renders it; ``.save(path)`` writes it).
    """
    if "section_title" in options:
        options["title"] = options.pop("section_title")
    return ReportView(_sections(explanations, **options), title=title)
