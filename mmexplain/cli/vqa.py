"""``mmexplain vqa``: where a VQA model looks for its answer, and what argues against it.

``mmexplain vqa IMAGE "QUESTION" [--answer A] [--top-k K] --out FIG.png`` explains the
answer and its counterfactual and attributes it to the question words; an ``.html``
``--out`` (or ``--html FILE``) writes the interactive report instead.

Example:
    $ mmexplain vqa scene.png "what color is the square ?" --top-k 3 --out vqa.png
"""

from __future__ import annotations

import argparse
import math

from .caption import add_explain_options, check_outputs, print_methods, write_outputs
from .common import CLIError, apply_threads, check_image, load_zoo_model, positive_int

__all__ = ["add_vqa_command"]


def _vqa_handler(args: argparse.Namespace) -> int:
    if args.method != "list":  # the checks that need no model (nor torch) first
        if args.image is None or args.question is None:
            raise CLIError("IMAGE QUESTION: give an image file and a question")
        figure, html = check_outputs(args)
        check_image(args.image)
        if not args.question.strip():
            raise CLIError("QUESTION: expected a non-empty question")
        if args.answer is not None and not args.answer.strip():
            raise CLIError("--answer: expected an answer word, got an empty string")
    from ..explain import METHODS, explain_answer

    if args.method == "list":
        return print_methods(METHODS)
    if args.method not in METHODS:
        raise CLIError(f"--method {args.method!r} is not a method; one of: {', '.join(METHODS)}")
    from ..adapters import AnswerClassifier, as_answer_adapter

    adapter = as_answer_adapter(load_zoo_model("vqa", args.model, args.models))
    top_k = args.top_k
    if isinstance(adapter, AnswerClassifier):  # a fixed list of answers
        if args.answer is not None and args.answer not in adapter.labels:
            raise CLIError(f"--answer {args.answer!r} is not one of the model's answers: {', '.join(adapter.labels)}")
        top_k = min(top_k, len(adapter.labels))
    elif args.top_k > 1 and args.answer is None:
        raise CLIError(f"--top-k: this model generates its answer (no ranked alternatives); got --top-k {args.top_k}")
    apply_threads(args)
    ex = explain_answer(adapter, args.image, args.question, args.answer, top_k=top_k, layer=args.layer,
                        method=args.method)
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
    write_outputs(ex, figure, html)
    return 0


def add_vqa_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``mmexplain vqa IMAGE "QUESTION" [--answer A] [--top-k K] [--method NAME] [--model M] --out FILE``."""
    p = subparsers.add_parser(
        "vqa", help="where a VQA model looks for its answer, and what argues against it",
        description="Answer QUESTION about IMAGE, explain the answer (or --answer) and its counterfactual, "
                    "attribute it to the question words, print the answers with log-probs and write the "
                    "figure or the interactive HTML report.")
    p.add_argument("image", metavar="IMAGE", nargs="?", help="image file (PNG, JPEG, ...)")
    p.add_argument("question", metavar="QUESTION", nargs="?", help='e.g. "what color is the square ?"')
    p.add_argument("--answer", default=None, help="explain this answer instead of the prediction")
    p.add_argument("--top-k", type=positive_int, default=1, help="explain the K most likely answers (default 1)")
    add_explain_options(p, "vqa")
    p.set_defaults(func=_vqa_handler)
    return p
