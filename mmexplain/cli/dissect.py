"""``mmexplain dissect MODEL --out DIR``: Network Dissection of a reference model.

Writes ``DIR/tally.csv`` (NetDissect columns: unit, category, label, score, then
every concept's IoU), ``DIR/labels.json`` (:class:`~mmexplain.dissect.NeuronLabels`)
and ``DIR/units.png`` (the unit gallery), and prints the summary.

Example:
    $ mmexplain dissect classifier --n 1000 --out runs/dissect_classifier
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_dissect_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``mmexplain dissect MODEL [--layer L] [--n N] --out DIR``."""
    p = subparsers.add_parser(
        "dissect", help="name the units of a reference model's layer (Network Dissection)",
        description="Network Dissection (Bau et al. 2017) of a reference model on ShapeWorld concept masks "
                    "(colours, shapes, sizes): per-unit top-quantile thresholds, IoU with every concept, "
                    "label = best concept. Writes tally.csv, labels.json and units.png to --out.")
    p.add_argument("model", metavar="MODEL", help="a reference model: classifier, captioner or vqa")
    p.add_argument("--layer", default=None, help="dotted layer name (default: the model's default_layer)")
    p.add_argument("--n", type=int, default=1000, help="ShapeWorld validation scenes to dissect on (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="offset into the validation seeds")
    p.add_argument("--quantile", type=float, default=0.005, help="top activation quantile per unit (default 0.005)")
    p.add_argument("--iou-threshold", type=float, default=0.04, help="IoU above which a unit is a detector")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--root", default=None, help="models directory (default: the repository's models/)")
    p.add_argument("--units", type=int, default=10, help="rows of the gallery (best detectors)")
    p.add_argument("--top", type=int, default=4, help="images per unit in the gallery")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_dissect_handler)
    return p


def _dissect_handler(args: argparse.Namespace) -> int:
    import mmexplain as mx

    from ..dissect import dissect, image_forward, top_activating

    if args.n < 1:
        raise ValueError(f"--n must be a positive number of scenes, got {args.n}")
    for flag, value in (("--units", args.units), ("--top", args.top), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be positive, got {value}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    names = mx.zoo.NAMES
    if args.model not in names:
        raise ValueError(f"MODEL must be one of {', '.join(names)}, got {args.model!r}")
    model = mx.zoo.load(args.model, root=args.root)
    layer = args.layer or model.default_layer
    size = getattr(getattr(model, "config", None), "image_size", 96)
    data = mx.world.concept_dataset(args.n, seed=args.seed, size=size)
    labels = dissect(model, layer, data, quantile=args.quantile, iou_threshold=args.iou_threshold,
                     batch_size=args.batch_size, forward=image_forward, progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    labels.save(out / "tally.csv")
    labels.save(out / "labels.json")
    units = [u.unit for u in labels.detectors()[:args.units] or labels.top(args.units)]
    tops = top_activating(model, layer, data, units, top=args.top, batch_size=args.batch_size,
                          forward=image_forward, progress=not args.quiet)
    fig = mx.viz.plot_unit_gallery(tops, labels)
    mx.viz.save_figure(fig, out / "units.png")
    print(f"{args.model} {labels.summary()}")
    print(f"wrote {out / 'tally.csv'}, {out / 'labels.json'}, {out / 'units.png'}")
    return 0
