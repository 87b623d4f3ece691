"""``mmexplain evaluate``: measure explanations against ground truth.

``mmexplain evaluate grounding`` explains the ground-truth caption words and VQA answers
of held-out ShapeWorld scenes and prints pointing game, energy ratio, discrimination and
localisation tables (see :mod:`mmexplain.evaluation.grounding`). With ``--methods all``
or ``--on NAMES`` it prints one leaderboard instead: every applicable method on every
named shipped model (captioner, vqa, classifier, tiny-ved, tiny-vilt, ...).

Example:
    $ mmexplain evaluate grounding --scenes 500 --json grounding.json
    $ mmexplain evaluate grounding --methods all --scenes 200
    $ torchrun --nproc-per-node 2 -m mmexplain evaluate grounding --scenes 500 --workers 2
"""

from __future__ import annotations

import argparse
from typing import Any

from .evaluate_protocols import add_protocol_commands
from .common import (
    CLIError, add_models, add_scenes, add_threads, apply_threads, check_out, nonnegative_int, scene_seeds,
)
from .explain_dataset import add_runner_options, runner_from_args

__all__ = ["add_evaluate_command"]


def _grounding_handler(args: argparse.Namespace) -> int:
    from .. import zoo
    from .._io import write_json
    from ..evaluation import grounding

    if args.json is not None:
        check_out(args.json, kind="file", suffixes=(".json",), option="--json")
    methods = _methods(args)
    from ..zoo.tasks import shipped_names

    on = None if args.on is None else [n.strip() for n in args.on.split(",") if n.strip()]
    if on is not None:
        unknown = [n for n in on if n not in shipped_names()]
        if unknown or not on:
            raise CLIError(f"--on: expected shipped model names from {', '.join(shipped_names())}, got {args.on!r}")
    if args.coco is not None:
        return _coco_handler(args, methods)
    apply_threads(args)
    seeds = scene_seeds(args.scenes, start=args.start)
    with runner_from_args(args) as runner:
        if on is not None or args.methods == "all":
            names = on or [n for n in zoo.ALL_NAMES + zoo.VLM_NAMES if (zoo.folder(n, args.models)).is_dir()]
            models = {n: _placed(zoo.load(n, args.models), runner.device) for n in names}
            report = grounding.leaderboard(models, seeds, methods=methods, seed=args.seed, runner=runner)
            text = grounding.format_leaderboard(report)
        else:
            captioner = _placed(zoo.load("captioner", args.models), runner.device)
            vqa = _placed(zoo.load("vqa", args.models), runner.device)
            report = grounding.grounding_report(captioner, vqa, seeds, methods=methods, layer=args.layer,
                                                vqa_layer=args.vqa_layer, seed=args.seed, runner=runner)
            text = grounding.format_report(report)
        runner.report("evaluate grounding", len(runner.shard(len(seeds))))
        if runner.main:
            print(text)
            if args.json is not None:
                write_json(args.json, report)
                print(f"wrote {args.json}")
    return 0


def _coco_handler(args: argparse.Namespace, methods: list[str] | str) -> int:
    """``--coco``: caption words matched to annotated categories, scored like ShapeWorld's."""
    from .. import zoo
    from .._io import write_json
    from ..evaluation.coco import coco_grounding, coco_items
    from ..evaluation.grounding import method_label
    from ..evaluation.scoring import metric_tables

    if args.images is None:
        raise CLIError("--coco needs --images DIR, the folder of its images")
    if args.captions is None:
        raise CLIError("--coco: caption-word grounding needs --captions CAPTIONS.json")
    apply_threads(args)
    captioner = zoo.load("captioner", args.models)
    items = coco_items(args.coco, args.images, captions=args.captions, word_map=args.word_map,
                       size=captioner.config.image_size, limit=args.scenes)
    report = coco_grounding(captioner, items, methods=["gradcam"] if methods == "all" else methods, seed=args.seed)
    print(f"COCO grounding: {report['words']} matched caption words on {report['items']} images")
    order = sorted(report["groups"], key=lambda g: g != "all")
    print("\n".join(metric_tables("Caption words matched to annotated categories", report["groups"], order,
                                  report["methods"], {m: method_label(m) for m in report["methods"]})))
    if args.json is not None:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def _placed(model: Any, device: str) -> Any:
    """``model`` (a zoo module or an adapter) with its weights on ``device``."""
    (model if hasattr(model, "parameters") else model.model).to(device)
    return model


def _methods(args: argparse.Namespace) -> list[str] | str:
    from ..explain import METHODS

    if args.methods == "all":
        return "all"
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.no_guided:
        names = [m for m in names if m != "guided"]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise CLIError(f"--methods: expected 'all' or names from {', '.join(METHODS)}, got {args.methods!r}")
    return names


def add_evaluate_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mmexplain evaluate grounding``."""
    parser = subparsers.add_parser("evaluate", help="measure how well explanations ground what models say",
                                   description="Measure explanations against ShapeWorld ground truth.")
    sub = parser.add_subparsers(dest="evaluation", metavar="EVALUATION")
    g = sub.add_parser("grounding", help="pointing game / energy ratio / discrimination of caption words and VQA answers",
                       description="Explain the ground-truth caption words and VQA answers of held-out ShapeWorld "
                                   "scenes and compare each map with the referred object's mask.")
    add_scenes(g, default=500, what="held-out test scenes")
    g.add_argument("--offset", "--start", dest="start", type=nonnegative_int, default=0,
                   help="offset into the test split (default 0; --start is kept for plain runs, torchrun reads it "
                        "as its --start-method)")
    g.add_argument("--layer", default=None, help="layer to explain (default: the models' default_layer)")
    g.add_argument("--vqa-layer", default=None, help="VQA layer, if not --layer")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random-map baseline (default 0)")
    g.add_argument("--json", default=None, metavar="FILE.json", help="also write the report as JSON")
    add_models(g)
    g.add_argument("--coco", default=None, metavar="INSTANCES.json",
                   help="score the captioner on your COCO-format data instead of ShapeWorld (with --captions, --images)")
    g.add_argument("--captions", default=None, metavar="CAPTIONS.json", help="COCO captions (with --coco)")
    g.add_argument("--images", default=None, metavar="DIR", help="the image folder of --coco")
    g.add_argument("--word-map", default=None, metavar="FILE.json",
                   help="caption word -> COCO category name, overriding the default map (with --coco)")
    g.add_argument("--methods", default="gradcam,guided", metavar="NAMES",
                   help="comma-separated method names, or 'all' for the leaderboard (default gradcam,guided)")
    g.add_argument("--on", default=None, metavar="NAMES",
                   help="shipped models for the leaderboard, comma-separated (default with --methods all: every one)")
    g.add_argument("--no-guided", action="store_true", help="leave Guided Grad-CAM out (faster)")
    add_threads(g, default=None)
    add_runner_options(g)
    g.set_defaults(func=_grounding_handler)
    add_protocol_commands(sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    return parser
