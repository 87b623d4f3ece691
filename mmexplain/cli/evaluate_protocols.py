"""``mmexplain evaluate`` subcommands for the paper's protocols beyond grounding.

* ``sanity``: cascading / independent weight randomisation (Adebayo et al. 2018);
* ``faithfulness``: deletion / insertion (RISE) and ROAD (Rong et al. 2022) AUCs;
* ``localization``: weakly-supervised localisation error (Grad-CAM paper, Sec. 4.1);
* ``occlusion``: VQA maps against occlusion maps (paper Sec. 7.1) and question-word attributions;
* ``diagnosis``: adversarial pointing (PGD) and dataset bias (paper Sec. 6).

``sanity`` and ``faithfulness`` run on the shipped models named by ``--on`` (``classifier``,
``captioner``, ``vqa``, the transformers ones ``tiny-ved``, ``tiny-vilt``, ``tiny-vlm``, and
``efficientnet``: the ImageNet EfficientNet-Lite0 of the ``[real]`` extra, on scikit-image's
photos), each through its adapter.

Example:
    $ mmexplain evaluate sanity --on classifier --scenes 4 --plot sanity.png
    $ mmexplain evaluate faithfulness --on classifier,efficientnet --methods gradcam,guided
    $ mmexplain evaluate sanity --on tiny-vlm,tiny-ved --scenes 2 --methods gradcam,relevancy
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import CLIError, add_models, add_scenes, add_threads, apply_threads, check_out, positive_int, scene_seeds

__all__ = ["add_protocol_commands"]

_ON = ("classifier", "captioner", "vqa", "tiny-ved", "tiny-vilt", "tiny-vlm", "efficientnet")  # for --help



def _names(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise CLIError(f"{option}: expected names from {', '.join(allowed)}, got {text!r}")
    return names


def _methods(text: str) -> list[str]:
    from ..explain import METHODS

    if text == "all":
        return list(METHODS)
    return _names(text, tuple(METHODS), "--methods")


def _model(name: str, models: str | None) -> Any:
    from .common import load_zoo_model

    if name == "efficientnet":
        from ..zoo.efficientnet import load_efficientnet, missing_reason

        reason = missing_reason()
        if reason is not None:
            raise CLIError(f"--on efficientnet: {reason}")
        return load_efficientnet()
    from .. import zoo

    if name in zoo.NAMES:
        return load_zoo_model(name, None, models)
    if not zoo.folder(name, models).is_dir():
        raise CLIError(f"--on {name}: the model is missing ({zoo.folder(name, models)}); "
                       f"train it with `mmexplain train {name}`")
    return zoo.load(name, models)


def photo_items(model: Any) -> list[Any]:
    """scikit-image's cat and coffee photos as class items of the EfficientNet (their ImageNet classes)."""
    import skimage.data

    from ..adapters.images import load_image
    from ..adapters import Item, as_class_adapter
    from ..evaluation.real_photos import PHOTOS

    adapter = as_class_adapter(model)
    return [Item("class", load_image(getattr(skimage.data, name)()), adapter.class_names([c]), classes=[c])
            for name, c in PHOTOS.items()]


def _targets(args: argparse.Namespace) -> list[str]:
    from ..zoo.tasks import shipped_names

    return _names(args.on, (*shipped_names(), "efficientnet"), "--on")


def _write_json(args: argparse.Namespace, reports: list[dict[str, Any]]) -> None:
    if args.json is not None:
        from .._io import write_json

        write_json(args.json, reports if len(reports) > 1 else reports[0])
        print(f"wrote {args.json}")


def _sanity_handler(args: argparse.Namespace) -> int:
    from ..evaluation.sanity import format_sanity, sanity_check

    if args.json is not None:
        check_out(args.json, kind="file", suffixes=(".json",), option="--json")
    if args.plot is not None:
        from .common import FIGURE_SUFFIXES

        check_out(args.plot, kind="file", suffixes=FIGURE_SUFFIXES, option="--plot")
    reports = _on_each_model(args, lambda model, seeds, items, methods, name: sanity_check(
        model, seeds, items=items, methods=methods, max_stages=args.stages, name=name), format_sanity)
    if args.plot is not None:
        from pathlib import Path

        from ..viz import plot_sanity, save_figure

        for report in reports:
            path = Path(args.plot)
            target = path if len(reports) == 1 else path.with_name(f"{path.stem}-{report['model']}{path.suffix}")
            save_figure(plot_sanity(report), str(target))
            print(f"wrote {target}")
    _write_json(args, reports)
    return 0


def _on_each_model(args: argparse.Namespace, run: Any, show: Any) -> list[dict[str, Any]]:
    """``run(model, seeds, items, methods, name)`` for each model of ``--on`` (photos for efficientnet), printed."""
    on, methods = _targets(args), _methods(args.methods)
    apply_threads(args)
    seeds = scene_seeds(args.scenes)
    reports = []
    for name in on:
        model = _model(name, args.models)
        items = photo_items(model) if name == "efficientnet" else None
        report = run(model, seeds, items, methods, name)
        print(show(report) + "\n")
        reports.append(report)
    return reports


def _faithfulness_handler(args: argparse.Namespace) -> int:
    from ..evaluation.faithfulness import faithfulness, format_faithfulness

    if args.json is not None:
        check_out(args.json, kind="file", suffixes=(".json",), option="--json")
    reports = _on_each_model(args, lambda model, seeds, items, methods, name: faithfulness(
        model, seeds, items=items, methods=methods, steps=args.steps, name=name), format_faithfulness)
    _write_json(args, reports)
    return 0


def _localization_handler(args: argparse.Namespace) -> int:
    from ..evaluation.grounding import applicable_methods
    from ..evaluation.localization import format_localization, localization_error, shapeworld_boxes

    if args.json is not None:
        check_out(args.json, kind="file", suffixes=(".json",), option="--json")
    if not 0 < args.threshold <= 1:
        raise CLIError(f"--threshold: expected a fraction of the map's maximum in (0, 1], got {args.threshold}")
    methods = _methods(args.methods)
    apply_threads(args)
    model = _model("classifier", args.models)
    data = shapeworld_boxes(scene_seeds(args.scenes), size=model.config.image_size, classes=model.classes)
    usable = [m for m in applicable_methods(model, methods) if m != "guided"]
    if not usable:
        raise CLIError(f"--methods: localisation needs a map method that applies to the classifier, got {args.methods!r} "
                       "(Guided Grad-CAM has no box of its own; relevancy reads transformers attention)")
    reports = [localization_error(model, data, method=m, threshold=args.threshold) for m in usable]
    print(format_localization(reports))
    _write_json(args, reports)
    return 0


def _common(parser: argparse.ArgumentParser, *, scenes: int, methods: str, on: bool = True) -> None:
    add_scenes(parser, default=scenes, what="held-out test scenes")
    if on:
        parser.add_argument("--on", default="classifier", metavar="NAMES",
                            help=f"models, comma-separated, from {', '.join(_ON)} (default classifier; efficientnet: "
                                 "the [real] extra's ImageNet model on scikit-image's cat and coffee photos)")
    parser.add_argument("--methods", default=methods, metavar="NAMES",
                        help=f"comma-separated method names, or 'all' (default {methods})")
    parser.add_argument("--json", default=None, metavar="FILE.json", help="also write the report as JSON")
    add_models(parser)
    add_threads(parser, default=None)


def add_protocol_commands(sub: Any) -> None:
    """Add the protocol subcommands to ``mmexplain evaluate``'s subparsers."""
    s = sub.add_parser("sanity", help="sanity checks: do maps change when the weights are randomised? (Adebayo et al.)",
                       description="Randomise the model's weights from the top down (cascading) and one layer at a "
                                   "time (independent), on a copy; print the Spearman rank correlation (signed and "
                                   "absolute) and SSIM of each method's maps against the trained model's, and flag "
                                   "methods whose maps survive full randomisation (mean |Spearman| > 0.5).")
    _common(s, scenes=4, methods="gradcam,guided,gradcam++,hirescam")
    s.add_argument("--stages", type=positive_int, default=6, metavar="N",
                   help="at most N randomisation stages, spread over the layers (default 6)")
    s.add_argument("--plot", default=None, metavar="FILE.png", help="also draw the curves (one file per model)")
    s.set_defaults(func=_sanity_handler)

    f = sub.add_parser("faithfulness", help="deletion / insertion and ROAD AUCs against random and centre maps",
                       description="Remove or insert pixels in each map's order and read the explained scalar's "
                                   "probability: RISE deletion (black) / insertion (into a blur) and ROAD (noisy "
                                   "linear imputation, most / least relevant first), per class, caption word and "
                                   "answer; beside a random map and the centre prior.")
    _common(f, scenes=4, methods="gradcam,guided,gradcam++,hirescam")
    f.add_argument("--steps", type=positive_int, default=16, metavar="N", help="deletion / insertion steps (default 16)")
    f.set_defaults(func=_faithfulness_handler)

    loc = sub.add_parser("localization", help="weakly-supervised localisation error of the classifier (paper Sec. 4.1)",
                         description="Box the largest segment of each top-5 class map binarised at --threshold of its "
                                     "maximum; top-1 / top-5 localisation error (IoU >= 0.5) on ShapeWorld.")
    _common(loc, scenes=100, methods="gradcam,gradcam++,hirescam,layercam", on=False)
    loc.add_argument("--threshold", type=float, default=0.15, metavar="F",
                     help="binarisation threshold, a fraction of the map's maximum (default 0.15, the paper's)")
    loc.set_defaults(func=_localization_handler)

    o = sub.add_parser("occlusion", help="VQA: rank correlation of each method's map with occlusion (paper: 0.60)",
                       description="Explain the ground-truth answers of held-out ShapeWorld questions by every method "
                                   "and by occlusion; print the Spearman rank correlation of each method's map with "
                                   "the occlusion map (paper, VQA val: Grad-CAM 0.60, guided backprop 0.42), and how "
                                   "often the most attributed question word names the referred object.")
    _common(o, scenes=20, methods="gradcam,guided,gradcam++,hirescam,scorecam", on=False)
    o.set_defaults(func=_occlusion_handler)

    d = sub.add_parser("diagnosis", help="adversarial pointing (PGD) and the dataset-bias classifier (paper Sec. 6)",
                       description="PGD-attack the classifier's top class (L-inf) and compare the pointing game of "
                                   "the original class's Grad-CAM before and after; with a biased classifier "
                                   "(models/classifier-biased: every circle red in training), compare its evidence "
                                   "for 'red circle' on red non-circles and on non-red circles with the unbiased model's.")
    add_scenes(d, default=30, what="held-out test scenes")
    d.add_argument("--eps", type=_eps, default=8.0, metavar="E", help="L-inf radius in 1/255 units, in (0, 255] (default 8)")
    d.add_argument("--biased", default=None, metavar="DIR", help="biased classifier folder (default models/classifier-biased)")
    d.add_argument("--json", default=None, metavar="FILE.json", help="also write the report as JSON")
    add_models(d)
    add_threads(d, default=None)
    d.set_defaults(func=_diagnosis_handler)


def _eps(text: str) -> float:
    """argparse type of ``--eps``: a radius in 1/255 units, in (0, 255]."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 255] (1/255 units), got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= 255:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 255] (1/255 units), got {text!r}")
    return value


def _occlusion_handler(args: argparse.Namespace) -> int:
    from ..evaluation.occlusion import format_occlusion, occlusion_agreement

    if args.json is not None:
        check_out(args.json, kind="file", suffixes=(".json",), option="--json")
    methods = _methods(args.methods)
    apply_threads(args)
    report = occlusion_agreement(_model("vqa", args.models), scene_seeds(args.scenes), methods=methods)
    print(format_occlusion(report))
    _write_json(args, [report])
    return 0


def _diagnosis_handler(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import zoo
    from ..evaluation.diagnosis import (
        adversarial_pointing, bias_evidence, failure_modes, format_adversarial, format_bias, format_failures,
    )

    if args.json is not None:
        check_out(args.json, kind="file", suffixes=(".json",), option="--json")
    if args.biased is not None and not (Path(args.biased) / zoo.WEIGHTS).is_file():
        what = "no such folder" if not Path(args.biased).is_dir() else f"no {zoo.WEIGHTS} in the folder"
        raise CLIError(f"--biased {args.biased!r}: {what}; give a classifier checkpoint folder "
                       "like models/classifier-biased")
    apply_threads(args)
    model = _model("classifier", args.models)
    seeds = scene_seeds(args.scenes)
    report: dict[str, Any] = {"adversarial": adversarial_pointing(model, seeds, eps=args.eps / 255)}
    print(format_adversarial(report["adversarial"]))
    biased = Path(args.biased) if args.biased else zoo.default_root() / "classifier-biased"
    if (biased / zoo.WEIGHTS).is_file():
        pair = {"unbiased": model, "biased (every circle red)": zoo.load("classifier", biased)}
        for decoy in ("color", "shape"):
            report[f"bias_{decoy}"] = bias_evidence(pair, scene_seeds(max(args.scenes, 200)), decoy=decoy)
            print("\n" + format_bias(report[f"bias_{decoy}"]))
    else:
        print(f"\nno biased classifier at {biased}: dataset-bias diagnosis left out")
    failures = failure_modes(_model("vqa", args.models), seeds)
    print("\n" + format_failures(failures))
    report["failures"] = {k: v for k, v in failures.items() if k != "cases"}
    _write_json(args, [report])
    return 0
