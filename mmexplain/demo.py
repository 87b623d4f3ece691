"""The demo: the shipped models explained on held-out ShapeWorld scenes, with how far to trust each map.

:func:`run_demo` writes, to one folder:

- ``caption_<k>.png``: one panel per word of the captioner's caption of scene k, Grad-CAM
  and the method that points best on the captioner;
- ``vqa_<k>_<j>.png`` and ``vqa_<k>_<j>_<method>.png``: answer map, counterfactual and
  question-word bars for two questions about scene k, by Grad-CAM and by the method that
  points best on the VQA model;
- ``classes.png``: the classifier's class maps for the objects of one scene;
- ``real-photos.png``: EfficientNet-Lite0 on two photos (with the ``[real]`` extra);
- ``report.md`` and ``report.html`` (interactive: point at a word or an answer), with the
  same sections: captions, answers, classes, neuron names, real photos.

Each map is shown next to the measured pointing game of its method on that model
(:data:`POINTING`), so a reader knows how often such a map lies on the right object.
Everything is written to a temporary folder beside the output first and swapped in whole
only when all of it succeeded.

Example:
    >>> from mmexplain.demo import run_demo
    >>> run_demo("demo", n=2)                                   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["run_demo", "load_shipped", "pick_questions", "best_method", "method_label", "POINTING", "MODELS",
           "RealPhotos", "real_photos"]

MODELS = ("captioner", "vqa", "classifier")
# per scene: one question about an attribute of one object, then one about presence/number
# (kinds in order of preference within each group)
QUESTION_GROUPS = (("color", "shape", "size"), ("exist", "count", "size"))
QUESTIONS_PER_SCENE = 2
HEADLINE = {"captioner": "BLEU-4", "vqa": "accuracy", "classifier": "mAP"}

#: Pointing game (%, the map's maximum inside the referred object) of Grad-CAM and of the
#: best-pointing method on each shipped model: README's leaderboard, 100 held-out scenes
#: (``mmexplain evaluate grounding --methods all --scenes 100``; chance 4%).
POINTING: dict[str, dict[str, float]] = {
    "captioner": {"gradcam": 49.8, "guided": 76.8},
    "vqa": {"gradcam": 50.4, "scorecam": 96.9},
    "classifier": {"gradcam": 53.4, "guided": 99.5},
    "tiny-qwen2vl": {"gradcam": 23.6, "occlusion": 77.2, "pixel-gradxinput": 96.6},
}
LEADERBOARD = "`mmexplain evaluate grounding --methods all --scenes 100`"
ITEMS = {"captioner": "caption words", "vqa": "answers", "classifier": "class maps", "tiny-qwen2vl": "caption words"}
VLM = "tiny-qwen2vl"  # the LLM-based VLM shown beside the reference models (left out when its folder is missing)
#: where a model's pointing comes from, when not from :data:`LEADERBOARD`
MEASURED_BY = {VLM: f"`mmexplain evaluate grounding --on {VLM} --methods all --scenes 40`"}


def best_method(model: str) -> str:
    """The method that points best on the shipped ``model`` (a key of :data:`POINTING`)."""
    scores = POINTING[model]
    return max((m for m in scores if m != "gradcam"), key=scores.__getitem__)


def method_label(model: str, method: str, *, shipped: bool = True) -> str:
    """``"Score-CAM · points 96.9%"``: the method's name and its measured pointing on the shipped model."""
    from .methods import display_name

    name = display_name(method)
    if not shipped or method not in POINTING.get(model, {}):
        return name
    return f"{name} \u00b7 points {POINTING[model][method]:.1f}%"


def trust_note(model: str, *, shipped: bool) -> str:
    """One sentence: how often Grad-CAM and the best method point at the referred object on ``model``."""
    from .methods import display_name

    best = best_method(model)
    names = f"{display_name('gradcam')} and {display_name(best)}"
    if not shipped:
        return f"{names}; their pointing was measured on the shipped {model}, not on these weights."
    p = POINTING[model]
    return (f"How far to trust these maps: on held-out scenes the map's maximum lies on the referred object for "
            f"{p['gradcam']:.1f}% of {ITEMS[model]} with {display_name('gradcam')}, {p[best]:.1f}% with "
            f"{display_name(best)} (chance 4%; {MEASURED_BY.get(model, LEADERBOARD)}).")


def load_shipped(root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The three reference models from ``root`` (default: the package's ``models/``).

    Raises:
        FileNotFoundError: a model is missing; the message names it and the
            ``mmexplain train NAME`` command that makes it.
    """
    from . import zoo

    base = Path(root) if root is not None else zoo.default_root()
    missing = [name for name in MODELS if not (base / name / zoo.WEIGHTS).is_file()]
    if missing:
        how = "; ".join(f"`mmexplain train {name}`" for name in missing)
        raise FileNotFoundError(
            f"the shipped model{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"{'are' if len(missing) > 1 else 'is'} missing from {base} (no {zoo.WEIGHTS}); "
            f"train {'them' if len(missing) > 1 else 'it'} with {how}"
        )
    return {name: zoo.load(name, base) for name in MODELS}


def pick_questions(scene: Any) -> list[Any]:
    """One question per group of ``QUESTION_GROUPS``, each referring to at least one object."""
    chosen: list[Any] = []
    for group in QUESTION_GROUPS:
        for kind in group:
            match = [q for q in scene.questions if q.kind == kind and q.objects and q not in chosen]
            if match:
                chosen.append(match[0])
                break
    return chosen[:QUESTIONS_PER_SCENE]


def _words_line(words: list[str], logprobs: list[float]) -> str:
    return " ".join(f"{w}&nbsp;<sub>{lp:.2f}</sub>" for w, lp in zip(words, logprobs))


def _model_line(root: str | os.PathLike[str] | None) -> str:
    """The models' held-out headline metrics, as recorded in their ``config.json``."""
    import json

    from . import zoo

    base = Path(root) if root is not None else zoo.default_root()
    parts = []
    for name in MODELS:
        try:
            metrics = json.loads((base / name / zoo.CONFIG).read_text(encoding="utf-8")).get("metrics") or {}
        except (OSError, ValueError):
            metrics = {}
        value = metrics.get(HEADLINE[name])
        parts.append(f"{name} ({HEADLINE[name]} {value:.3f})" if isinstance(value, float) else name)
    return "Models: " + ", ".join(parts) + f" from `{base}` (see each CARD.md)."


@dataclass
class Naming:
    """Textual explanations of one caption's content words: the source of the unit names and one sentence per word."""

    source: str
    detectors: int
    units: int
    sentences: list[str]

    def markdown(self) -> str:
        lines = ["## Which named units carry each word", "", self.lead(), ""]
        return "\n".join(lines + [f"- {s}" for s in self.sentences]) + "\n"

    def lead(self) -> str:
        return (f"Units of the captioner named by {self.source} ({self.detectors} of {self.units} units are "
                "detectors, IoU > 0.04). For each content word of the first caption: the named units (IoU >= 0.05) "
                "with the largest Grad-CAM weight (evidence for the word) and the smallest (evidence against).")


def naming(captioner: Any, explanation: Any, *, scenes: int = 200, seed: int = 0,
           root: str | os.PathLike[str] | None = None) -> Naming | None:
    """Textual explanations (Grad-CAM paper, Sec. 7) of one caption's content words.

    Names the captioner's units with Network Dissection (from ``<root>/captioner/labels.json``
    when shipped, else by dissecting ``scenes`` validation scenes) and lists, per content
    word, the named units with the largest and smallest Grad-CAM weights (``mx.describe``).

    Returns:
        The sentences, or None when ``scenes`` is 0 or the caption has no content word.
    """
    from . import dissect as dissection, zoo

    if scenes < 1 or not explanation.content:
        return None
    shipped = (Path(root) if root is not None else zoo.default_root()) / "captioner" / "labels.json"
    if shipped.is_file():
        labels = dissection.NeuronLabels.load(shipped)
        source = f"the shipped labels `{shipped.name}`"
    else:
        data = dissection.shapeworld_concepts(scenes, seed=seed, size=captioner.config.image_size)
        labels = dissection.dissect(captioner, captioner.default_layer, data, forward=dissection.image_forward,
                                    progress=False)
        source = f"Network Dissection of `{captioner.default_layer}` on {scenes} ShapeWorld scenes"
    content = explanation.content
    weights = explanation.result.weights[content]  # (T', 1, K)
    sentences = dissection.describe(weights, labels, k=3, target_names=[explanation.words[i] for i in content])
    return Naming(source, len(labels.detectors()), len(labels), list(sentences))


@dataclass
class RealPhotos:
    """EfficientNet-Lite0's class maps on scikit-image's photos: one row per photo."""

    rows: list[tuple[str, str, float]] = field(default_factory=list)  # (photo, class name, probability)
    figure: str = "real-photos.png"

    def markdown(self) -> str:
        return "\n".join([
            "## Real photos (EfficientNet-Lite0, ImageNet)", "",
            "Grad-CAM of the predicted class at the last 7 x 7 map and its counterfactual (negated gradient, "
            "paper Sec. 3.2). No grounding was measured for this model: judge the maps by eye.", "",
            "| photo | class | probability |", "|---|---|---|",
            *[f"| {photo} | {name} | {p:.2f} |" for photo, name, p in self.rows], "",
            f"![real photos]({self.figure})"])


def real_photos(out_dir: str | os.PathLike[str]) -> RealPhotos | str:
    """Grad-CAM of EfficientNet-Lite0 on ``skimage.data.chelsea()`` and ``coffee()``; writes ``real-photos.png``.

    Returns:
        The rows drawn, or, without the ``[real]`` extra (or scikit-image), one sentence
        saying why nothing was drawn.
    """
    from .zoo.efficientnet import missing_reason

    reason = missing_reason()
    try:
        import skimage.data
    except ImportError:
        reason = reason or "it needs scikit-image (pip install scikit-image)"
    if reason is not None:
        return f"Real photos skipped: {reason}."
    import torch

    from .evaluation.real_photos import PHOTOS
    from .explain import explain_class
    from .methods import GradCAM
    from .targets import ClassLogit, Counterfactual
    from .viz import plot_maps, save_figure
    from .zoo.efficientnet import load_efficientnet

    model = load_efficientnet()
    images, maps, result = [], [], RealPhotos()
    for photo, c in PHOTOS.items():
        pixels = model.preprocess(getattr(skimage.data, photo)())  # (1, 3, 224, 224)
        ex = explain_class(model, pixels[0], [c])
        counter = GradCAM(model, model.default_layer)(pixels, Counterfactual(ClassLogit(c)), size=(224, 224)).maps[0]
        p = float(model(pixels).softmax(-1)[0, c].detach())
        images.append(pixels[0])
        maps.append(torch.stack([ex.maps[0], counter]))  # (2, H, W)
        result.rows.append((photo, model.classes[c], p))
    figure = plot_maps(torch.stack(images), torch.stack(maps, dim=1),  # (2, B, H, W)
                       titles=["Grad-CAM of the class", "against the class"],
                       image_titles=[f"{name} (p = {p:.2f})" for _, name, p in result.rows])
    save_figure(figure, Path(out_dir) / result.figure)
    return result


def vlm_caption(out_dir: Path, seed: int, *, root: str | os.PathLike[str] | None,
                shipped: bool) -> tuple[list[str], dict[str, Any]] | str:
    """The LLM-based VLM's caption of scene ``seed``: per-word maps by Grad-CAM (its vision tower) and by the
    method that points best on it; the figures go to ``out_dir``. Returns (report.md lines, report section),
    or a sentence saying why the section is left out."""
    from . import world, zoo
    from .evaluation.items import image_size
    from .explain import explain_caption
    from .methods import display_name, method_spec
    from .viz import caption_view, plot_caption, save_figure

    base = Path(root) if root is not None else zoo.default_root()
    if not (base / VLM / "config.json").is_file():
        return f"The LLM-based VLM section is left out: no `{VLM}` folder in {base} (`mmexplain train {VLM}`)."
    vlm = zoo.load(VLM, base)
    scene = world.generate(seed, size=image_size(vlm))
    best = best_method(VLM)
    ex = explain_caption(vlm, scene.image)
    other = explain_caption(vlm, scene.image, ex.caption, method=best)
    gc, bm = method_label(VLM, "gradcam", shipped=shipped), method_label(VLM, best, shipped=shipped)
    names = ["vlm_caption.png", f"vlm_caption_{best}.png"]
    save_figure(plot_caption(ex, note=gc), out_dir / names[0])
    save_figure(plot_caption(other, note=bm), out_dir / names[1])
    same = "matches the reference" if ex.caption == scene.caption else f"reference: `{scene.caption}`"
    lead = (f"{VLM} (a Qwen2-VL: vision transformer, 2 x 2 patch merger, Qwen2 language model with M-RoPE, "
            f"byte-level BPE) captions scene seed {scene.seed}: **{ex.caption}** ({same}). Each word's "
            f"log-probability (its sub-word tokens summed) is explained by Grad-CAM on the vision layer the language "
            f"model reads, and by {display_name(best)}: {method_spec(best).description}.")
    md = ["## An LLM-based VLM: one map per word", "", lead, "", trust_note(VLM, shipped=shipped), "",
          " ".join(f"![per-word maps, {VLM}]({name})" for name in names), ""]
    view = caption_view(ex, methods={bm: other}, title=f"{VLM} (seed {scene.seed}): caption", method=gc)
    return md, view


def _rename(section: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """A report section with its method entries renamed (``names``: old -> new)."""
    for entry in section.get("methods", []):
        entry["name"] = names.get(entry["name"], entry["name"])
    return section


def run_demo(out: str | os.PathLike[str], *, seed: int = 0, n: int = 4, root: str | os.PathLike[str] | None = None,
             naming_scenes: int = 200, with_real_photos: bool = True, log: Callable[[str], Any] = print) -> Path:
    """Explain the shipped models on ``n`` held-out scenes; write figures, ``report.md`` and ``report.html``.

    Args:
        out: output folder (created; an existing one is replaced whole once the new one is complete).
        seed: offset into the test split: scenes are ``mx.world.split_seeds("test", n, start=seed)``.
        n: number of scenes.
        root: models directory (default: the package's ``models/``). Measured pointing is
            quoted only for the shipped models (``root`` None).
        naming_scenes: scenes dissected for the textual explanations (0: leave them out).
        with_real_photos: add EfficientNet-Lite0 on two real photos when the ``[real]`` extra is
            installed (``log`` says so when it is not).
        log: receives one line per step.

    Returns:
        The path of ``report.md``.
    """
    from . import world
    from ._io import atomic_folder, write_text
    from .methods import display_name
    from .explain import explain_answer, explain_caption, explain_class
    from .viz import (
        answer_view, caption_view, figure_view, plot_answer, plot_caption, plot_classes, save_figure, write_report,
    )

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"--scenes: expected a number of scenes >= 1, got {n!r}")
    if isinstance(naming_scenes, bool) or not isinstance(naming_scenes, int) or naming_scenes < 0:
        raise InputError(f"--naming-scenes: expected an integer >= 0, got {naming_scenes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"--seed: expected an integer >= 0, got {seed!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} exists and is not a folder")
    models = load_shipped(root)
    captioner, vqa, classifier = models["captioner"], models["vqa"], models["classifier"]
    shipped = root is None
    best = {name: best_method(name) for name in MODELS}
    label = {name: {m: method_label(name, m, shipped=shipped) for m in ("gradcam", best[name])} for name in MODELS}
    seeds = world.split_seeds("test", n, start=seed)
    start = time.perf_counter()

    with atomic_folder(out) as tmp:
        sections: list[Any] = []
        md = [
            "# mmexplain demo: what the reference models look at",
            "",
            f"Held-out ShapeWorld scenes (test split, seeds {seeds.start}-{seeds.stop - 1}), never seen in training. "
            "Each map is shown by Grad-CAM (Selvaraju et al.) at the model's last 12x12 conv block and by the method "
            "that points best on that model, each with its measured pointing game (how often the map's maximum lies "
            "on the object a word or answer refers to; chance is about 4%). Red = high, blue = low, each map "
            "scaled to 0-1.",
            "",
            _model_line(root),
            "",
            "## Captions: one map per word",
            "",
            "The captioner (CNN + LSTM, no attention) captions each scene; every word's log-probability "
            "log p(word | image, previous words) is explained from one forward pass. The last panel explains "
            "the whole caption (the sum of the words). Small numbers after each word: its log-probability.",
            "",
            trust_note("captioner", shipped=shipped),
            "",
        ]
        first_caption = None
        scenes = [world.generate(s, size=captioner.config.image_size) for s in seeds]
        for k, scene in enumerate(scenes):
            ex = explain_caption(captioner, scene.image)
            other = explain_caption(captioner, scene.image, ex.caption, method=best["captioner"])
            if k == 0:
                first_caption = ex
            title = f"Scene {k + 1} (seed {scene.seed}): caption"
            gc, bm = label["captioner"]["gradcam"], label["captioner"][best["captioner"]]
            if other.guided is not None:  # Guided Grad-CAM: its maps are Grad-CAM's, its guided images the method's
                view = _rename(caption_view(other, title=title, method=gc), {f"Guided {gc}": bm})
                figures = [(f"caption_{k}.png", plot_caption(other, note=f"maps: {gc}; second row: {bm}"))]
            else:
                view = caption_view(ex, methods={bm: other}, title=title, method=gc)
                figures = [(f"caption_{k}.png", plot_caption(ex, note=gc)),
                           (f"caption_{k}_{best['captioner']}.png", plot_caption(other, note=bm))]
            sections.append(view)
            for name, fig in figures:
                save_figure(fig, tmp / name)
            same = "matches the reference" if ex.caption == scene.caption else f"reference: `{scene.caption}`"
            md += [
                f"### Scene {k + 1} (seed {scene.seed})",
                "",
                f"Caption: **{ex.caption}** ({same}); log p = {float(ex.logprobs.sum()):.2f}",
                "",
                _words_line(ex.words, ex.logprobs.tolist()),
                "",
                " ".join(f"![per-word maps, scene {k + 1}]({name})" for name, _ in figures),
                "",
            ]
            log(f"scene {k + 1}/{n}: {ex.caption}")
        md += [
            "## Visual question answering: answer and counterfactual",
            "",
            "For each question, the map of the predicted answer (where the evidence for it lies), the "
            "counterfactual map (what argues against it: the negated gradients, paper Sec. 3.2), and the "
            "question words that pushed the answer up (green) or down (red); left Grad-CAM, right "
            f"{display_name(best['vqa'])}.",
            "",
            trust_note("vqa", shipped=shipped),
            "",
        ]
        gc, bm = label["vqa"]["gradcam"], label["vqa"][best["vqa"]]
        for k, scene in enumerate(scenes):
            for j, qa in enumerate(pick_questions(scene)):
                ax = explain_answer(vqa, scene.image, qa.question, top_k=3)
                other = explain_answer(vqa, scene.image, qa.question, top_k=3, method=best["vqa"])
                sections.append(answer_view(ax, methods={bm: other}, method=gc,
                                            title=f"Scene {k + 1} (seed {scene.seed}): {qa.question}"))
                names = [f"vqa_{k}_{j}.png", f"vqa_{k}_{j}_{best['vqa']}.png"]
                save_figure(plot_answer(ax, note=gc), tmp / names[0])
                save_figure(plot_answer(other, method=display_name(best["vqa"]), note=bm), tmp / names[1])
                p = float(ax.probabilities[0]) if ax.probabilities is not None else math.nan
                verdict = "correct" if ax.answer == qa.answer else f"wrong; truth: {qa.answer}"
                md += [
                    f"**Scene {k + 1}, Q: {qa.question}** \u2192 **{ax.answer}** "
                    f"(p = {p:.2f}, log p = {math.log(max(p, 1e-45)):.2f}; {verdict})",
                    "",
                    " ".join(f"![answer grounding, scene {k + 1}, question {j + 1}]({name})" for name in names),
                    "",
                ]
                log(f"scene {k + 1}/{n}: {qa.question} -> {ax.answer}")
        # the classifier on the scene with the most objects: one map per object's class
        scene = max(scenes, key=lambda s: len(s.objects))
        classes = list(dict.fromkeys(f"{o.color} {o.shape}" for o in scene.objects))
        cx = explain_class(classifier, scene.image, classes, method=best["classifier"])
        gc, bm = label["classifier"]["gradcam"], label["classifier"][best["classifier"]]
        note = f"maps: {gc}; second row: {bm}" if cx.guided is not None else gc
        save_figure(plot_classes(cx, note=note), tmp / "classes.png")
        class_text = [
            f"Scene seed {scene.seed} (\u201c{scene.caption}\u201d): the map of each present class's logit "
            f"({', '.join(cx.labels)}; panel titles: class and logit). The classifier (CNN, global average "
            "pooling, linear) is CAM-compatible, so its Grad-CAM maps equal CAM's.",
            trust_note("classifier", shipped=shipped),
        ]
        md += ["## Classifier: one map per class", "", *[t + "\n" for t in class_text], "![class maps](classes.png)", ""]
        sections.append(figure_view(tmp / "classes.png", kicker="Classifier", title="One map per class",
                                    paragraphs=class_text))
        vlm = vlm_caption(tmp, seeds.start, root=root, shipped=shipped)
        if isinstance(vlm, str):
            md += [vlm, ""]
            log(vlm)
        else:
            md += vlm[0]
            sections.append(vlm[1])
            log(f"{VLM}: {' '.join(vlm[1]['words'])}")
        names = naming(captioner, first_caption, scenes=naming_scenes, root=root)
        if names is not None:
            md += [names.markdown()]
            sections.append(figure_view(None, kicker="Neuron names", title="Which named units carry each word",
                                        paragraphs=[names.lead()], items=names.sentences))
        if with_real_photos:
            photos = real_photos(tmp)
            if isinstance(photos, str):
                md += [photos, ""]
                log(photos)
            else:
                md += [photos.markdown(), ""]
                sections.append(figure_view(
                    tmp / photos.figure, kicker="Real photos", title="EfficientNet-Lite0 (ImageNet) on two photos",
                    paragraphs=["Grad-CAM of the class at the last 7 x 7 map and its counterfactual (negated "
                                "gradient). No grounding was measured for this model: judge the maps by eye."],
                    items=[f"{photo}: {name}, p = {p:.2f}" for photo, name, p in photos.rows]))
                log(f"real photos: {', '.join(name for _, name, _ in photos.rows)}")
        md += [
            "The interactive version of these scenes: [report.html](report.html) (point at a word or an answer).",
            "",
            f"_Made by `mmexplain demo --seed {seed} --scenes {n}` in {time.perf_counter() - start:.0f} s._",
            "",
        ]
        write_report(sections, tmp / "report.html", title="mmexplain demo")
        write_text(tmp / "report.md", "\n".join(md))
    return out / "report.md"

