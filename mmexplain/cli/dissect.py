"""``mmexplain dissect MODEL --out DIR``: Network Dissection of a reference model.

Writes ``DIR/tally.csv`` (NetDissect columns: unit, category, label, score, then
every concept's IoU), ``DIR/labels.json`` (:class:`~mmexplain.dissect.NeuronLabels`)
and ``DIR/units.png`` (the unit gallery), and prints the summary.

Under torchrun every rank dissects its share of the scenes; the thresholds' histograms
and the IoU counts are all-reduced and rank 0 writes the folder (and draws the gallery).

Example:
    $ mmexplain dissect classifier --scenes 1000 --out runs/dissect_classifier
    $ torchrun --nproc-per-node 2 -m mmexplain dissect classifier --scenes 1000 --workers 2 --out runs/d
"""

from __future__ import annotations

import argparse

from .common import (
    CLIError, add_models, add_scenes, add_threads, apply_threads, check_out, nonnegative_int, positive_int, scene_seeds,
    show_progress,
)
from .explain_dataset import add_runner_options, runner_from_args


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


def add_dissect_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``mmexplain dissect MODEL [--layer L] [--scenes N] --out DIR``."""
    p = subparsers.add_parser(
        "dissect", help="name the units of a reference model's layer (Network Dissection)",
        description="Network Dissection (Bau et al. 2017) of a reference model on ShapeWorld concept masks "
                    "(colours, shapes, sizes): per-unit top-quantile thresholds, IoU with every concept, "
                    "label = best concept. Writes tally.csv, labels.json and units.png to --out.")
    p.add_argument("model", metavar="MODEL", help="a reference model: classifier, captioner or vqa")
    p.add_argument("--layer", default=None, help="dotted layer name (default: the model's default_layer)")
    add_scenes(p, default=1000, what="ShapeWorld validation scenes to dissect on")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="offset into the validation seeds")
    p.add_argument("--quantile", type=_fraction, default=0.005, help="top activation quantile per unit (default 0.005)")
    p.add_argument("--iou-threshold", type=_fraction, default=0.04, help="IoU above which a unit is a detector")
    p.add_argument("--batch-size", type=positive_int, default=32)
    add_models(p)
    p.add_argument("--units", type=positive_int, default=10, help="rows of the gallery (best detectors)")
    p.add_argument("--top", type=positive_int, default=4, help="images per unit in the gallery")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (replaced whole when complete)")
    p.add_argument("--no-gallery", action="store_true", help="skip units.png (the top images per unit)")
    add_threads(p)
    add_runner_options(p)
    p.set_defaults(func=_dissect_handler)
    return p


def _dissect_handler(args: argparse.Namespace) -> int:
    import mmexplain as mx

    from .._io import atomic_folder
    from ..dissect import dissect, image_forward, top_activating

    out = check_out(args.out, kind="folder")
    names = ("classifier", "captioner", "vqa")
    if args.model not in names:
        raise CLIError(f"MODEL must be one of {', '.join(names)}, got {args.model!r}")
    apply_threads(args)
    model = mx.zoo.load(args.model, root=args.models)
    layer = args.layer or model.default_layer
    size = getattr(getattr(model, "config", None), "image_size", 96)
    scene_seeds(args.scenes, start=args.seed, start_option="--seed", split="val")
    data = mx.world.concept_dataset(args.scenes, seed=args.seed, size=size)
    with runner_from_args(args) as runner:
        model.to(runner.device)
        labels = dissect(model, layer, data, quantile=args.quantile, iou_threshold=args.iou_threshold,
                         batch_size=args.batch_size, forward=image_forward, progress=show_progress(args), runner=runner)
        runner.report("dissect", 2 * len(runner.shard(len(data))))
        if not runner.main:
            return 0
        written = [out / "tally.csv", out / "labels.json"]
        with atomic_folder(out) as tmp:
            labels.save(tmp / "tally.csv")
            labels.save(tmp / "labels.json")
            if not args.no_gallery:
                units = [u.unit for u in labels.detectors()[:args.units] or labels.top(args.units)]
                tops = top_activating(model, layer, data, units, top=args.top, batch_size=args.batch_size,
                                      forward=image_forward, progress=show_progress(args))
                mx.viz.save_figure(mx.viz.plot_unit_gallery(tops, labels), tmp / "units.png")
                written.append(out / "units.png")
        print(f"{args.model} {labels.summary()}")
        print(f"wrote {', '.join(map(str, written))}")
    return 0
