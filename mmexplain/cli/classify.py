"""``mmexplain classify``: explain a torchvision classifier's decision on one image.

Example:
    mmexplain classify cat.jpg --arch resnet50 --weights resnet50.safetensors --out cat_cam.png
    mmexplain classify cat.jpg --arch vgg16 --weights vgg16.pth --method guided --target 281 --out g.png

Weights come from a local file only (no downloads): safetensors, or a torch state dict
read with ``torch.load(..., weights_only=True)`` (no pickled code runs). Without
``--weights`` the model is randomly initialised and the command says so: its map shows
nothing about the image.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .common import FIGURE_SUFFIXES, CLIError, add_threads, apply_threads, check_image, check_out, positive_int

__all__ = ["add_classify_command", "load_classifier", "load_image"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def add_classify_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mmexplain classify`` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "classify",
        help="explain a torchvision classifier's prediction on an image (Grad-CAM, Guided Grad-CAM)",
        description=(
            "Explain a torchvision classifier's score for one class on one image and write a figure. "
            "Weights are read from a local file (safetensors or a torch state dict); nothing is downloaded."
        ),
    )
    parser.add_argument("image", nargs="?", help="image file (PNG, JPEG, ...)")
    parser.add_argument("--arch", help="torchvision model name, e.g. resnet50, vgg16, densenet121")
    parser.add_argument("--model", default=None, metavar="PKG.MODULE:FACTORY",
                        help="instead of --arch: a callable that returns your nn.Module (its .classes, if any, name "
                             "the classes; its .default_layer, if any, is the default --layer)")
    parser.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN, metavar=("R", "G", "B"),
                        help="per-channel mean the model expects (default ImageNet's)")
    parser.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD, metavar=("R", "G", "B"),
                        help="per-channel standard deviation (default ImageNet's; --mean 0 0 0 --std 1 1 1: none)")
    parser.add_argument("--weights", help="local weights: .safetensors, or a torch state dict (.pt/.pth)")
    parser.add_argument("--layer", help="layer to explain (dotted name); default the last conv block of the arch")
    parser.add_argument("--target", type=int, help="class index to explain; default the predicted class")
    parser.add_argument("--method", default="gradcam", metavar="NAME",
                        help="gradcam (default), counterfactual, guided, or any map method; --method list prints them")
    parser.add_argument("--size", type=positive_int, help="input side in pixels; default 224 (299 for inception_v3)")
    parser.add_argument("--out", metavar="FILE", help="figure to write (.png, .pdf, .svg, ...); required")
    add_threads(parser)
    parser.set_defaults(func=run_classify)


# ----------------------------------------------------------------------------- pieces
def _check_arch(arch: str) -> None:
    from torchvision import models

    names = models.list_models(module=models)
    if arch not in names:
        nearest = difflib.get_close_matches(arch, names, n=3, cutoff=0.5)
        hint = f"; nearest: {', '.join(nearest)}" if nearest else "; see torchvision.models.list_models()"
        raise CLIError(f"--arch {arch!r} is not a torchvision classifier{hint}")


def _state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise CLIError(f"--weights {str(path)!r}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the user's file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CLIError(f"--weights {str(path)!r}: cannot read it as safetensors or a torch state dict ({first[:160]})") from exc
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CLIError(f"--weights {str(path)!r}: expected a state dict (name -> tensor); got {type(state).__name__}")
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CLIError(f"--weights {str(path)!r}: tensor {key!r} holds NaN or inf values")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _head_key(model: Any) -> str | None:
    from torch import nn

    heads = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return f"{heads[-1]}.weight" if heads else None


def load_classifier(arch: str, weights: str | Path | None) -> Any:
    """A torchvision classifier in eval mode, with the local weights if given.

    Without weights the model is randomly initialised from seed 0 (the caller's RNG state
    is left alone). With weights, the number of classes is read from the final linear layer.
    """
    from torchvision import models

    import torch

    _check_arch(arch)
    if weights is None:  # seeded, so a random model gives the same figure every run
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return models.get_model(arch, weights=None).eval()
    model = models.get_model(arch, weights=None)
    state = _state_dict(Path(weights))
    head = _head_key(model)
    if head is not None and head in state and state[head].shape[0] != model.get_submodule(head[: -len(".weight")]).out_features:
        model = models.get_model(arch, weights=None, num_classes=int(state[head].shape[0]))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit the architecture
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        detail = lines[0] if lines else (str(exc).strip().splitlines() or ["size mismatch"])[0]
        raise CLIError(f"--weights {str(weights)!r} do not fit --arch {arch}: {detail[:240]}") from exc
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[0]})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})")
    if problems:
        raise CLIError(f"--weights {str(weights)!r} do not fit --arch {arch}: keys {'; '.join(problems)}")
    return model.eval()


def load_image(path: str | Path, size: int) -> Any:
    """The image at ``path`` as a (3, size, size) float tensor in [0, 1].

    The shorter side is resized (bilinear) to ``size`` and the centre cropped to a square,
    as torchvision's ImageNet evaluation does (resize, centre crop), so nothing is squashed.
    """
    from ..adapters.images import load_image as read, resize

    image = read(check_image(str(path), name="IMAGE"), name="IMAGE")  # (3, H, W)
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    image = resize(image, (max(size, round(h * scale)), max(size, round(w * scale))))
    top, left = (image.shape[-2] - size) // 2, (image.shape[-1] - size) // 2
    return image[:, top:top + size, left:left + size].contiguous()  # (3, size, size)


def _categories(arch: str, num_classes: int) -> list[str] | None:
    if num_classes != 1000:
        return None
    try:  # metadata lives in torchvision's code: nothing is downloaded
        from torchvision import models

        return list(models.get_model_weights(arch).DEFAULT.meta["categories"])
    except Exception:  # noqa: BLE001 - names are a nicety
        return None


def _factory_model(spec: str, weights: str | None) -> Any:
    """``pkg.module:factory`` -> the nn.Module it returns (in eval mode), with ``weights`` loaded if given."""
    import importlib

    from torch import nn

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CLIError(f"--model {spec!r}: expected PKG.MODULE:FACTORY, e.g. mypkg.models:build")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CLIError(f"--model {spec!r}: cannot import it ({type(exc).__name__}: {exc})") from exc
    if not callable(factory):
        raise CLIError(f"--model {spec!r}: {attr} is not callable")
    model = factory()
    if not isinstance(model, nn.Module):
        raise CLIError(f"--model {spec!r}: the factory returned {type(model).__name__}, expected an nn.Module")
    if weights is not None:
        result = model.load_state_dict(_state_dict(Path(weights)), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CLIError(f"--weights {weights!r} do not fit --model {spec}: {len(result.missing_keys)} missing, "
                           f"{len(result.unexpected_keys)} unexpected keys")
    return model.eval()


# ----------------------------------------------------------------------------- command
def run_classify(args: argparse.Namespace) -> int:
    """Handler of ``mmexplain classify``; returns the exit status."""
    from ..explain import METHODS

    methods = {"counterfactual": "counterfactual Grad-CAM (negated gradient, paper Sec. 3.2)",
               **{k: spec.description for k, spec in METHODS.items() if not spec.requires & {"attention", "lm"}}}
    if args.method == "list":
        from .caption import print_methods

        return print_methods(methods)
    if args.method not in methods:
        raise CLIError(f"--method {args.method!r} is not a method; one of: {', '.join(methods)}")
    for value, what in ((args.image, "IMAGE: give an image file"), (args.out, "--out: give the figure to write")):
        if value is None:
            raise CLIError(what)
    if (args.arch is None) == (args.model is None):
        raise CLIError("--arch / --model: give one of them (a torchvision name, or PKG.MODULE:FACTORY)")
    if any(v <= 0 for v in args.std):
        raise CLIError(f"--std: expected three positive numbers, got {args.std}")
    out = check_out(args.out, kind="file", suffixes=FIGURE_SUFFIXES)
    if args.arch is not None:
        _check_arch(args.arch)
    apply_threads(args)
    size = args.size or (299 if args.arch == "inception_v3" else 224)
    if size < 32:
        raise CLIError(f"--size must be at least 32 pixels; got {size}")
    image = load_image(args.image, size)  # (3, H, W) in [0, 1]
    if args.weights is None and args.model is None:
        print(
            f"warning: no --weights given: {args.arch} is randomly initialised, so its map explains "
            "nothing about the image; pass --weights FILE (safetensors or a torch state dict)",
            file=sys.stderr,
        )
    model = load_classifier(args.arch, args.weights) if args.arch is not None else _factory_model(args.model, args.weights)
    name = args.arch or args.model

    import torch

    import mmexplain as mx

    from ..adapters.torchvision import default_layer
    from ..viz.core import overlay, save_figure, to_image_array

    if args.layer:
        layer, reshape = args.layer, None
    elif args.arch is not None:
        layer, reshape = default_layer(args.arch, model)
    elif isinstance(getattr(model, "default_layer", None), str):
        layer, reshape = model.default_layer, None
    else:
        raise CLIError(f"--layer: {args.model} has no default_layer; name the layer to explain")
    from ..adapters import ClassifierAdapter

    cam = mx.GradCAM(model, layer, reshape=reshape)  # bad --layer: ValueError naming the nearest layers
    x = ClassifierAdapter(model, mean=args.mean, std=args.std).load_image(image)  # (1, 3, H, W) normalised
    with torch.no_grad():
        logits = mx.targets.logits_of(model(x))  # (1, C)
    num_classes = logits.shape[1]
    target_class = int(logits[0].argmax()) if args.target is None else args.target
    if not 0 <= target_class < num_classes:
        raise CLIError(f"--target {target_class} out of range: the model has {num_classes} classes (0..{num_classes - 1})")
    own = getattr(model, "classes", None)
    if args.model is not None:
        names = list(own) if isinstance(own, (list, tuple)) and len(own) == num_classes else None
    else:
        names = _categories(args.arch, num_classes) if args.weights is not None else None
    label = f"class {target_class}" + (f" ({names[target_class]})" if names else "")
    target = mx.targets.ClassLogit(target_class)
    adapter = ClassifierAdapter(model, layer=layer, reshape=reshape, classes=names, mean=args.mean, std=args.std)
    guided = None
    if args.method == "counterfactual":
        res = cam(x, mx.targets.Counterfactual(target))
        heat = res.maps[0]  # (H, W)
    else:  # every registered method, through the classifier adapter
        ex = mx.explain_class(adapter, image, [target_class], method=args.method)
        res, heat, guided = ex.result, ex.maps[0], ex.guided
    panels = 3 if args.method == "guided" else 2

    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * panels + 0.6, 4.4), layout="constrained")
    axes = fig.subplots(1, panels)
    axes[0].imshow(to_image_array(image), interpolation="nearest")
    axes[0].set_title("input", fontsize=10)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    what = {"counterfactual": "counterfactual Grad-CAM (negated gradient)", "guided": "Grad-CAM"}.get(
        args.method, mx.methods.display_name(args.method))
    empty = bool(res.raw.amax() <= 0)  # ReLU removed everything: nothing raises this score
    note = "\n(map is zero: no region raises this score)" if empty else ""
    overlay(image, heat, ax=axes[1], title=f"{what}, {layer}{note}", colorbar=True)
    if guided is not None:  # (1, 3, H, W): guided backprop x the middle panel's map
        axes[2].imshow(to_image_array(guided[0], normalize=True), interpolation="nearest")
        axes[2].set_title("Guided Grad-CAM\n(guided backprop x Grad-CAM)", fontsize=10)
        axes[2].set_xticks([])
        axes[2].set_yticks([])
    score = float(logits[0, target_class])
    random_note = "  [RANDOM WEIGHTS: explains nothing]" if args.weights is None and args.model is None else ""
    fig.suptitle(f"{name}: {label}, logit {score:.3g}{random_note}", fontsize=11)
    save_figure(fig, out)
    print(f"{name}: {label}, logit {score:.4g}, method {args.method}, layer {layer} -> {out}")
    if empty:
        print("note: the Grad-CAM map is zero everywhere (sum_k alpha_k A^k <= 0 at every location)", file=sys.stderr)
    return 0
