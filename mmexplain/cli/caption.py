"""``mmexplain caption``: per-word maps of a caption of one image.

``mmexplain caption IMAGE [--caption "..."] --out FIG.png`` explains every word of the
captioner's caption (or of the given one) and writes the per-word figure, or, for an
``.html`` ``--out`` (or ``--html FILE``), the interactive report: point at a word to
see its map over the image. It prints the words with their log-probabilities.

Example:
    $ mmexplain caption scene.png --out caption.png
    $ mmexplain caption scene.png --out caption.html
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Any

from .common import (
    FIGURE_SUFFIXES, CLIError, add_models, add_threads, apply_threads, check_image, check_out, load_zoo_model,
)

__all__ = ["add_caption_command", "add_explain_options", "print_methods", "check_outputs", "write_outputs"]

OUT_SUFFIXES = (*FIGURE_SUFFIXES, ".html")


def p_text(logprob: float) -> str:
    return f"{logprob:8.3f}  (p = {math.exp(logprob):.3f})"


def add_explain_options(p: argparse.ArgumentParser, kind: str) -> None:
    """Options shared by ``caption`` and ``vqa``."""
    p.add_argument("--method", default="gradcam", metavar="NAME",
                   help="explanation method (default gradcam); --method list prints them all")
    p.add_argument("--layer", default=None, help="dotted layer to explain (default: the model's default layer)")
    shipped = {"captioner": "captioner, tiny-ved, tiny-vlm", "vqa": "vqa, tiny-vilt, tiny-vlm"}[kind]
    p.add_argument("--model", default=None, metavar="DIR_OR_NAME",
                   help=f"checkpoint folder, or a shipped model: {shipped}, ... (default {kind})")
    add_models(p)
    p.add_argument("--out", default=None, metavar="FILE",
                   help="figure to write (.png, .pdf, .svg, ...) or interactive report (.html); "
                        "this or --html is required")
    p.add_argument("--html", default=None, metavar="FILE.html", help="also write the interactive HTML report")
    add_threads(p)


def print_methods(names: Mapping[str, Any]) -> int:
    """Print name and one line per method: a registry (name -> MethodSpec) or name -> description."""
    width = max(len(n) for n in names)
    for name, entry in names.items():
        print(f"{name:<{width}}  {getattr(entry, 'description', entry)}")
    return 0


def check_outputs(args: argparse.Namespace) -> tuple[Any, Any]:
    """(figure path or None, html path or None), checked before any work."""
    if args.out is None and args.html is None:
        raise CLIError("--out: give a figure (.png, ...) or a report (.html) to write, or --html FILE.html")
    out = check_out(args.out, kind="file", suffixes=OUT_SUFFIXES) if args.out is not None else None
    html = check_out(args.html, kind="file", suffixes=(".html",), option="--html") if args.html is not None else None
    if out is not None and out.suffix.lower() == ".html":
        if html is not None and html != out:
            raise CLIError("--html: --out already names an .html report; give one of them")
        out, html = None, out
    return out, html


def write_outputs(ex: Any, figure: Any, html: Any, **plot: Any) -> None:
    """Write the figure and/or the HTML report of an explanation, each atomically."""
    if figure is not None:
        from ..viz import save_figure

        save_figure(ex.plot(**plot), figure)
        print(f"wrote {figure}")
    if html is not None:
        from ..viz import write_report

        write_report(ex, html)
        print(f"wrote {html}")


def _caption_handler(args: argparse.Namespace) -> int:
    if args.method != "list":  # the checks that need no model (nor torch) first
        if args.image is None:
            raise CLIError("IMAGE: give an image file")
        figure, html = check_outputs(args)
        check_image(args.image)
        if args.caption is not None and not args.caption.strip():
            raise CLIError("--caption: expected at least one word, got an empty caption")
    from ..explain import METHODS, explain_caption

    if args.method == "list":
        return print_methods(METHODS)
    if args.method not in METHODS:
        raise CLIError(f"--method {args.method!r} is not a method; one of: {', '.join(METHODS)}")
    model = load_zoo_model("captioner", args.model, args.models)
    apply_threads(args)
    ex = explain_caption(model, args.image, args.caption, layer=args.layer, method=args.method)
    source = "given" if args.caption is not None else "generated"
    print(f"caption ({source}): {ex.caption}")
    print("word log-probs  log p(word | image, previous words):")
    width = max(len(w) for w in ex.words)
    for w, lp in zip(ex.words, ex.logprobs.tolist()):
        print(f"  {w:<{width}}  {p_text(lp)}")
    print(f"  {'total':<{width}}  {float(ex.logprobs.sum()):8.3f}")
    write_outputs(ex, figure, html, hide_function_words=args.hide_function_words)
    return 0


def add_caption_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``mmexplain caption IMAGE [--caption "..."] [--method NAME] [--layer L] [--model M] --out FILE``."""
    p = subparsers.add_parser(
        "caption", help="per-word maps of a caption of an image",
        description="Caption IMAGE with the captioner (or take --caption), explain every word's log-probability "
                    "from one forward pass, print the words with their log-probs and write the figure (one "
                    "panel per word plus the whole caption) or the interactive HTML report (point at a word).")
    p.add_argument("image", metavar="IMAGE", nargs="?", help="image file (PNG, JPEG, ...)")
    p.add_argument("--caption", default=None, help="explain this caption instead of the generated one")
    p.add_argument("--hide-function-words", action="store_true", help="leave 'a', 'of', ... out of the figure")
    add_explain_options(p, "captioner")
    p.set_defaults(func=_caption_handler)
    return p
