"""``mmexplain demo``: the shipped models explained on held-out ShapeWorld scenes.

Writes, to ``--out`` (default ``./mmexplain-demo``):

- ``caption_<k>.png``: one panel per word of the captioner's caption of scene k;
- ``vqa_<k>_<j>.png``: answer map, counterfactual and question-word bars for two
  questions about scene k;
- ``classes.png``: the classifier's class maps for the objects of one scene;
- ``report.md``: a one-page report with the figures, captions, answers and word
  log-probabilities (and textual explanations from Network Dissection);
- ``report.html``: the same scenes as one interactive page (point at a word or an
  answer to see its map over the image), self-contained.

Everything is written to a temporary folder beside ``--out`` first and swapped in whole
only when all of it succeeded; a failure or an interrupt leaves ``--out`` as it was.

Example:
    $ mmexplain demo --out demo
    $ open demo/report.html
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

from .common import add_models, add_threads, apply_threads, check_out, nonnegative_int, positive_int, scene_seeds

__all__ = ["add_demo_command", "run_demo"]

MODELS = ("captioner", "vqa", "classifier")
# per scene: one question about an attribute of one object, then one about presence/number
# (kinds in order of preference within each group)
QUESTION_GROUPS = (("color", "shape", "size"), ("exist", "count", "size"))
QUESTIONS_PER_SCENE = 2


def load_shipped(root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The three reference models from ``root`` (default: the repository's ``models/``).

    Raises:
        FileNotFoundError: a model is missing; the message names it and the
            ``mmexplain train NAME`` command that makes it.
    """
    from .. import zoo

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


HEADLINE = {"captioner": "BLEU-4", "vqa": "accuracy", "classifier": "mAP"}


def _model_line(root: str | os.PathLike[str] | None) -> str:
    """The models' held-out headline metrics, as recorded in their ``config.json``."""
    import json

    from .. import zoo

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


def _naming_section(captioner: Any, explanation: Any, *, scenes: int = 200, seed: int = 0,
                    root: str | os.PathLike[str] | None = None) -> str:
    """Textual explanations (Grad-CAM paper, Sec. 7) of one caption's content words.

    Names the captioner's units with Network Dissection — from ``<root>/captioner/labels.json``
    when shipped, else by dissecting ``scenes`` validation scenes (a few seconds) — and
    lists, per content word, the named units with the largest and smallest Grad-CAM
    weights (``mx.describe``).

    Returns:
        A Markdown section, or ``""`` when ``scenes`` is 0.
    """
    from .. import dissect as dissection, zoo

    if scenes < 1:
        return ""
    shipped = (Path(root) if root is not None else zoo.default_root()) / "captioner" / "labels.json"
    if shipped.is_file():
        labels = dissection.NeuronLabels.load(shipped)
        source = f"shipped labels `{shipped.name}`"
    else:
        data = dissection.shapeworld_concepts(scenes, seed=seed, size=captioner.config.image_size)
        labels = dissection.dissect(captioner, captioner.default_layer, data, forward=dissection.image_forward, progress=False)
        source = f"Network Dissection of `{captioner.default_layer}` on {scenes} ShapeWorld scenes"
    content = explanation.content
    if not content:
        return ""
    weights = explanation.result.weights[content]  # (T', 1, K)
    sentences = dissection.describe(weights, labels, k=3, target_names=[explanation.words[i] for i in content])
    detectors = len(labels.detectors())
    lines = [
        "## Which named units carry each word",
        "",
        f"Units of the captioner named by {source} ({detectors} of {len(labels)} units are detectors, "
        "IoU > 0.04). For each content word of the first caption: the named units (IoU >= 0.05) with the "
        "largest Grad-CAM weight (evidence for the word) and the smallest (evidence against).",
        "",
    ]
    lines += [f"- {s}" for s in sentences]
    return "\n".join(lines) + "\n"


def run_demo(out: str | os.PathLike[str], *, seed: int = 0, n: int = 4, root: str | os.PathLike[str] | None = None,
             naming_scenes: int = 200, real_photos: bool = True, log: Any = print) -> Path:
    """Explain the shipped models on ``n`` held-out scenes; write figures, ``report.md`` and ``report.html``.

    Args:
        out: output folder (created; an existing one is replaced whole once the new one is complete).
        seed: offset into the test split: scenes are ``mx.world.split_seeds("test", n, start=seed)``.
        n: number of scenes.
        root: models directory (default: the repository's ``models/``).
        naming_scenes: scenes dissected for the textual explanations (0: leave them out).
        real_photos: add EfficientNet-Lite0 on two real photos (``real-photos.png``) when the
            ``[real]`` extra is installed (a line says so when it is not).
        log: where progress lines go.

    Returns:
        The path of ``report.md``.
    """
    from .. import world
    from .._io import atomic_folder, write_text
    from ..explain import explain_answer, explain_caption, explain_class
    from ..viz import answer_view, caption_view, save_figure, write_report

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--scenes: expected a number of scenes >= 1, got {n!r}")
    if isinstance(naming_scenes, bool) or not isinstance(naming_scenes, int) or naming_scenes < 0:
        raise ValueError(f"--naming-scenes: expected an integer >= 0, got {naming_scenes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed: expected an integer >= 0, got {seed!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    models = load_shipped(root)
    captioner, vqa, classifier = models["captioner"], models["vqa"], models["classifier"]
    seeds = world.split_seeds("test", n, start=seed)
    start = time.perf_counter()

    with atomic_folder(out) as tmp:
        sections: list[Any] = []
        md = [
            "# mmexplain demo: what the reference models look at",
            "",
            f"Held-out ShapeWorld scenes (test split, seeds {seeds.start}-{seeds.stop - 1}), never seen in training. "
            "Maps are Grad-CAM (Selvaraju et al.) at each model's last 12x12 conv block, upsampled to the "
            "96x96 image; red = high, blue = low, each map scaled to 0-1.",
            "",
            _model_line(root),
            "",
            "## Captions: one map per word",
            "",
            "The captioner (CNN + LSTM, no attention) captions each scene; every word's log-probability "
            "log p(word | image, previous words) is explained from one forward pass. The last panel explains "
            "the whole caption (the sum of the words). Small numbers after each word: its log-probability.",
            "",
        ]
        first_caption = None
        scenes = [world.generate(s, size=captioner.config.image_size) for s in seeds]
        for k, scene in enumerate(scenes):
            ex = explain_caption(captioner, scene.image)
            sections.append(caption_view(ex, title=f"Scene {k + 1} (seed {scene.seed}): caption"))
            if k == 0:
                first_caption = ex
            name = f"caption_{k}.png"
            save_figure(ex.plot(), tmp / name)
            same = "matches the reference" if ex.caption == scene.caption else f"reference: `{scene.caption}`"
            md += [
                f"### Scene {k + 1} (seed {scene.seed})",
                "",
                f"Caption: **{ex.caption}** ({same}); log p = {float(ex.logprobs.sum()):.2f}",
                "",
                _words_line(ex.words, ex.logprobs.tolist()),
                "",
                f"![per-word maps, scene {k + 1}]({name})",
                "",
            ]
            log(f"scene {k + 1}/{n}: {ex.caption}")
        md += [
            "## Visual question answering: answer and counterfactual",
            "",
            "For each question, the map of the predicted answer (where the evidence for it lies), the "
            "counterfactual map (what argues against it: the negated gradients, paper Sec. 3.2), and the "
            "question words that pushed the answer up (green) or down (red).",
            "",
        ]
        for k, scene in enumerate(scenes):
            for j, qa in enumerate(pick_questions(scene)):
                ax = explain_answer(vqa, scene.image, qa.question, top_k=3)
                sections.append(answer_view(ax, title=f"Scene {k + 1} (seed {scene.seed}): {qa.question}"))
                name = f"vqa_{k}_{j}.png"
                save_figure(ax.plot(), tmp / name)
                p = float(ax.probabilities[0]) if ax.probabilities is not None else math.nan
                verdict = "correct" if ax.answer == qa.answer else f"wrong; truth: {qa.answer}"
                md += [
                    f"**Scene {k + 1}, Q: {qa.question}** \u2192 **{ax.answer}** "
                    f"(p = {p:.2f}, log p = {math.log(max(p, 1e-45)):.2f}; {verdict})",
                    "",
                    f"![answer grounding, scene {k + 1}, question {j + 1}]({name})",
                    "",
                ]
                log(f"scene {k + 1}/{n}: {qa.question} -> {ax.answer}")
        # the classifier on the scene with the most objects: one map per object's class
        scene = max(scenes, key=lambda s: len(s.objects))
        classes = list(dict.fromkeys(f"{o.color} {o.shape}" for o in scene.objects))
        cx = explain_class(classifier, scene.image, classes)
        save_figure(cx.plot(), tmp / "classes.png")
        md += [
            "## Classifier: one map per class",
            "",
            f"Scene seed {scene.seed} (\u201c{scene.caption}\u201d): the Grad-CAM map of each present class's "
            "logit (title: class and logit). The classifier (CNN, global average pooling, linear) is "
            "CAM-compatible, so these maps equal CAM's.",
            "",
            "![class maps](classes.png)",
            "",
        ]
        naming_md = _naming_section(captioner, first_caption, scenes=naming_scenes, root=root)
        if naming_md:
            md += [naming_md]
        if real_photos:
            from ..evaluation.real_photos import real_photo_section

            md += [real_photo_section(tmp), ""]
        md += [
            "The interactive version of these scenes: [report.html](report.html) (point at a word or an answer).",
            "",
            f"_Made by `mmexplain demo --seed {seed} --scenes {n}` in {time.perf_counter() - start:.0f} s._",
            "",
        ]
        write_report(sections, tmp / "report.html", title="mmexplain demo")
        write_text(tmp / "report.md", "\n".join(md))
    return out / "report.md"


def _demo_handler(args: argparse.Namespace) -> int:
    check_out(args.out, kind="folder")
    scene_seeds(args.scenes, start=args.seed, start_option="--seed")
    apply_threads(args)
    start = time.perf_counter()
    report = run_demo(args.out, seed=args.seed, n=args.scenes, root=args.models, naming_scenes=args.naming_scenes,
                      real_photos=not args.no_real_photos)
    files = sorted(p.name for p in report.parent.iterdir() if p.name.endswith((".png", ".md", ".html")))
    print(f"wrote {len(files)} files to {report.parent} in {time.perf_counter() - start:.0f} s; "
          f"open {report.with_suffix('.html')} (interactive) or {report}")
    return 0


def add_demo_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``mmexplain demo [--out DIR] [--seed N] [--n SCENES]``."""
    p = subparsers.add_parser(
        "demo", help="explain the shipped models on held-out scenes: figures, report.md, report.html",
        description="Run the shipped captioner, VQA model and classifier on held-out ShapeWorld scenes and "
                    "write per-word caption maps, VQA answer/counterfactual maps, class maps, a one-page "
                    "report (report.md) and an interactive one (report.html: point at a word) to DIR.")
    p.add_argument("--out", default="mmexplain-demo", metavar="DIR", help="output folder (default ./mmexplain-demo)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="offset into the held-out test scenes (default 0)")
    p.add_argument("--scenes", "--n", dest="scenes", type=positive_int, default=4, metavar="N",
                   help="number of scenes (default 4)")
    add_models(p)
    p.add_argument("--naming-scenes", type=nonnegative_int, default=200, metavar="N",
                   help="scenes dissected to name units for the textual explanations (0: skip; default 200)")
    p.add_argument("--no-real-photos", action="store_true",
                   help="leave out EfficientNet-Lite0 on two real photos (needs the [real] extra)")
    add_threads(p)
    p.set_defaults(func=_demo_handler)
    return p
