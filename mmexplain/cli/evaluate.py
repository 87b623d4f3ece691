"""``mmexplain evaluate``: measure explanations against ground truth.

``mmexplain evaluate grounding`` explains the ground-truth caption words and VQA answers
of held-out ShapeWorld scenes and prints pointing game, energy ratio, discrimination and
localisation tables (see :mod:`mmexplain.evaluation.grounding`).

Example:
    $ mmexplain evaluate grounding --scenes 500 --json grounding.json
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_models, add_scenes, add_threads, apply_threads, check_out, nonnegative_int, positive_int

__all__ = ["add_evaluate_command"]


def _grounding_handler(args: argparse.Namespace) -> int:
    from .. import world, zoo
    from .._io import write_json
    from ..evaluation.grounding import format_report, grounding_report

    if args.json is not None:
        check_out(args.json, kind="file", suffixes=(".json",))
    apply_threads(args)
    captioner = zoo.load("captioner", args.models)
    vqa = zoo.load("vqa", args.models)
    seeds = world.split_seeds("test", args.scenes, start=args.start)
    report = grounding_report(captioner, vqa, seeds, layer=args.layer, vqa_layer=args.vqa_layer, seed=args.seed,
                              guided=not args.no_guided, batch_size=args.batch_size)
    print(format_report(report))
    if args.json is not None:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def add_evaluate_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mmexplain evaluate grounding``."""
    parser = subparsers.add_parser("evaluate", help="measure how well explanations ground what models say",
                                   description="Measure explanations against ShapeWorld ground truth.")
    sub = parser.add_subparsers(dest="evaluation", metavar="EVALUATION")
    g = sub.add_parser("grounding", help="pointing game / energy ratio / discrimination of caption words and VQA answers",
                       description="Explain the ground-truth caption words and VQA answers of held-out ShapeWorld "
                                   "scenes and compare each map with the referred object's mask.")
    add_scenes(g, default=500, what="held-out test scenes")
    g.add_argument("--start", type=nonnegative_int, default=0, help="offset into the test split (default 0)")
    g.add_argument("--layer", default=None, help="layer to explain (default: the models' default_layer)")
    g.add_argument("--vqa-layer", default=None, help="VQA layer, if not --layer")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random-map baseline (default 0)")
    g.add_argument("--json", default=None, metavar="FILE.json", help="also write the report as JSON")
    add_models(g)
    g.add_argument("--no-guided", action="store_true", help="skip Guided Grad-CAM (faster)")
    g.add_argument("--batch-size", type=positive_int, default=32, help="scenes / questions per engine call (default 32)")
    add_threads(g, default=None)
    g.set_defaults(func=_grounding_handler)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    return parser
