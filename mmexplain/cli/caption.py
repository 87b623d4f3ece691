"""``mmexplain caption`` and ``mmexplain vqa``: explain one image from the command line.

``mmexplain caption IMAGE [--caption "..."] --out FIG.png`` explains every word of the
captioner's caption (or of the given one) and writes the per-word figure;
``mmexplain vqa IMAGE "QUESTION" [--answer A] [--top-k K] --out FIG.png`` explains the
answer and its counterfactual. Both print what the model said, with log-probabilities.

Bad input (a missing path, a file that is not an image, an empty question, a word the
model does not know, an answer outside the model's answers) raises ``ValueError`` or
``FileNotFoundError``, which ``mmexplain.cli.main`` prints as one line with exit
status 2 (plain ``ValueError`` rather than ``CLIError``, so that the one-line message
also holds under ``python -m mmexplain.cli``, where ``CLIError`` is ``__main__``'s). The figure
is written only after everything succeeded, atomically.

Example:
    $ mmexplain caption scene.png --out caption.png
    $ mmexplain vqa scene.png "what color is the square ?" --top-k 3 --out vqa.png
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["add_caption_command", "add_vqa_command", "load_model"]

FIGURE_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def load_model(kind: str, spec: str | None) -> Any:
    """A reference model of ``kind`` from a name or a checkpoint directory.

    Args:
        kind: ``"captioner"``, ``"vqa"`` or ``"classifier"``: what the command needs.
        spec: None or ``kind`` for the shipped model in the repository's ``models/``;
            otherwise a directory holding ``<kind>/`` or the checkpoint files themselves.

    Raises:
        FileNotFoundError: the shipped model is missing (the message names
            ``mmexplain train <kind>``), or ``spec`` is a path that does not exist.
        ValueError: ``spec`` names another kind of model, or is not a directory.
    """
    from .. import zoo

    if spec is None or spec == kind:
        root = zoo.default_root()
        if not (root / kind / zoo.WEIGHTS).is_file():
            raise FileNotFoundError(
                f"the shipped {kind} model is missing ({root / kind / zoo.WEIGHTS}); "
                f"train it with `mmexplain train {kind}` (minutes on a CPU)"
            )
        return zoo.load(kind)
    if spec in zoo.NAMES:
        raise ValueError(f"--model: this command needs a {kind}, got {spec!r}")
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--model: no such model directory: {spec!r} (or give the name {kind!r})")
    if not path.is_dir():
        raise ValueError(f"--model: {spec!r} is not a directory")
    return zoo.load(kind, path)


def check_out(out: str) -> Path:
    """Validate ``--out`` before any work: a figure extension, not a folder. Nothing is created."""
    path = Path(out)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise ValueError(f"--out {out!r}: expected a figure file ending in {', '.join(FIGURE_FORMATS)}")
    if path.is_dir():
        raise ValueError(f"--out {out!r} is a folder; give a file name such as figure.png")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"--out {out!r}: {str(parent)!r} is not a folder")
    return path


def check_image(image: str) -> str:
    """A missing or unreadable IMAGE fails before any model is loaded."""
    path = Path(image)
    if not path.exists():
        raise FileNotFoundError(f"IMAGE: no such image file: {image!r}")
    if not path.is_file():
        raise ValueError(f"IMAGE: {image!r} is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"IMAGE: {image!r} is not readable")
    return image


def _p(logprob: float) -> str:
    return f"{logprob:8.3f}  (p = {math.exp(logprob):.3f})"


def _caption_handler(args: argparse.Namespace) -> int:
    import torch

    from ..explain import explain_caption
    from ..viz import save_figure

    out = check_out(args.out)
    check_image(args.image)
    if args.caption is not None and not args.caption.strip():
        raise ValueError("--caption: expected at least one word, got an empty caption")
    model = load_model("captioner", args.model)
    torch.set_num_threads(args.threads)
    ex = explain_caption(model, args.image, args.caption, layer=args.layer, method=args.method)
    fig = ex.plot(hide_function_words=args.hide_function_words)
    source = "given" if args.caption is not None else "generated"
    print(f"caption ({source}): {ex.caption}")
    print("word log-probs  log p(word | image, previous words):")
    width = max(len(w) for w in ex.words)
    for w, lp in zip(ex.words, ex.logprobs.tolist()):
        print(f"  {w:<{width}}  {_p(lp)}")
    print(f"  {'total':<{width}}  {float(ex.logprobs.sum()):8.3f}")
    save_figure(fig, out)
    print(f"wrote {out}")
    return 0


def _vqa_handler(args: argparse.Namespace) -> int:
    import torch

    from ..explain import explain_answer
    from ..viz import save_figure

    out = check_out(args.out)
    check_image(args.image)
    if not args.question.strip():
        raise ValueError("QUESTION: expected a non-empty question")
    if args.answer is not None and not args.answer.strip():
        raise ValueError("--answer: expected an answer word, got an empty string")
    if args.top_k < 1:
        raise ValueError(f"--top-k: expected an integer >= 1, got {args.top_k}")
    model = load_model("vqa", args.model)
    if args.answer is not None and args.answer not in model.answers:
        raise ValueError(f"--answer {args.answer!r} is not one of the model's answers: {', '.join(model.answers)}")
    torch.set_num_threads(args.threads)
    top_k = min(args.top_k, len(model.answers))
    ex = explain_answer(model, args.image, args.question, args.answer, top_k=top_k, layer=args.layer)
    fig = ex.plot()
    print(f"question: {args.question}")
    label = "answer (given)" if args.answer is not None else "answer"
    for i, answer in enumerate(ex.answers):
        prob = float(ex.probabilities[i]) if ex.probabilities is not None else float("nan")
        head = f"{label} #{i + 1}" if len(ex.answers) > 1 else label
        print(f"{head}: {answer}   log p = {math.log(max(prob, 1e-45)):.3f}  (p = {prob:.3f}, logit {float(ex.scores[i]):.3f})")
    if ex.token_attributions is not None:
        print(f"question-word attributions for {ex.answer!r} (gradient x embedding, + supports):")
        width = max(len(t) for t in ex.question_tokens)
        for tok, v in zip(ex.question_tokens, ex.token_attributions[0].tolist()):
            print(f"  {tok:<{width}}  {v:+.4f}")
    save_figure(fig, out)
    print(f"wrote {out}")
    return 0


def _common(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--layer", default=None, help="dotted layer to explain (default: the model's last 12x12 conv block)")
    p.add_argument("--model", default=None, metavar="DIR_OR_NAME",
                   help=f"checkpoint directory, or {kind!r} for the shipped model (default)")
    p.add_argument("--out", required=True, metavar="FIG.png", help="figure to write (.png, .pdf, .svg)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")


def add_caption_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``mmexplain caption IMAGE [--caption "..."] [--layer L] [--method gradcam|guided] [--model M] --out FIG``."""
    p = subparsers.add_parser(
        "caption", help="per-word Grad-CAM maps of a caption of an image",
        description="Caption IMAGE with the captioner (or take --caption), explain every word's log-probability "
                    "with Grad-CAM from one forward pass, print the words with their log-probs and write the "
                    "figure: one panel per word plus the whole caption.")
    p.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, ...)")
    p.add_argument("--caption", default=None, help="explain this caption instead of the generated one")
    p.add_argument("--method", choices=("gradcam", "guided"), default="gradcam",
                   help="gradcam (default) or guided (adds Guided Grad-CAM per word)")
    p.add_argument("--hide-function-words", action="store_true", help="leave 'a', 'of', ... out of the figure")
    _common(p, "captioner")
    p.set_defaults(func=_caption_handler)
    return p


def add_vqa_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``mmexplain vqa IMAGE "QUESTION" [--answer A] [--top-k K] [--model M] --out FIG``."""
    p = subparsers.add_parser(
        "vqa", help="where a VQA model looks for its answer, and what argues against it",
        description="Answer QUESTION about IMAGE, explain the answer (or --answer) and its counterfactual with "
                    "Grad-CAM, attribute it to the question words, print the answers with log-probs and write "
                    "the figure.")
    p.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, ...)")
    p.add_argument("question", metavar="QUESTION", help='e.g. "what color is the square ?"')
    p.add_argument("--answer", default=None, help="explain this answer instead of the prediction")
    p.add_argument("--top-k", type=int, default=1, help="explain the K most likely answers (default 1)")
    _common(p, "vqa")
    p.set_defaults(func=_vqa_handler)
    return p
