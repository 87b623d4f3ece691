"""The demo's real-photo section: EfficientNet-Lite0 (the ``[real]`` extra) on scikit-image's photos.

:func:`real_photo_section` draws Grad-CAM of "Egyptian cat" on ``skimage.data.chelsea()``
and of "espresso" on ``skimage.data.coffee()`` with their counterfactuals, and returns
the Markdown the demo report embeds; without the extra it only says why.
"""

from __future__ import annotations

import os

import torch

__all__ = ["real_photo_section", "PHOTOS"]

PHOTOS = {"chelsea": 285, "coffee": 967}  # scikit-image photo -> ImageNet class ("Egyptian cat", "espresso")


def real_photo_section(out_dir: str | os.PathLike) -> str:
    """The demo's real-photo section: Grad-CAM of EfficientNet-Lite0 on scikit-image's cat and coffee photos.

    Writes ``real-photos.png`` (photo, the class map, its counterfactual) into ``out_dir``
    and returns Markdown; without the ``[real]`` extra (or scikit-image) it writes nothing
    and returns one line saying why.
    """
    from pathlib import Path

    from ..zoo.efficientnet import load_efficientnet, missing_reason

    reason = missing_reason()
    try:
        import skimage.data
    except ImportError:
        reason = reason or "the real-photo section needs scikit-image (pip install scikit-image)"
    if reason is not None:
        return f"Real photos: skipped, {reason}."
    from ..adapters import Item, as_class_adapter
    from ..explain import explain_class
    from ..methods import GradCAM
    from ..targets import ClassLogit, Counterfactual
    from ..viz import plot_maps, save_figure

    adapter = as_class_adapter(load_efficientnet())
    images, maps, lines = [], [], []
    for name, c in PHOTOS.items():
        photo = getattr(skimage.data, name)()
        pixels = adapter.load_image(photo)  # (1, 3, 224, 224)
        shown = adapter.display_image(pixels)  # (3, 224, 224)
        ex = explain_class(adapter, photo, [c])
        counter = GradCAM(adapter.model, adapter.default_layer)(
            adapter.class_inputs(pixels), Counterfactual(ClassLogit(c)), size=tuple(shown.shape[-2:])).maps[0]
        label = adapter.class_names([c])[0]
        p = float(adapter.probability(shown[None], Item("class", shown, [label], classes=[c]), 0)[0])
        images.append(shown)
        maps.append(torch.stack([ex.maps[0], counter]))  # (2, H, W)
        lines.append(f"| {name} | {label} | {p:.2f} |")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot_maps(torch.stack(images), torch.stack(maps, dim=1), titles=["class map", "counterfactual"])  # (2, B, H, W)
    save_figure(figure, str(out / "real-photos.png"))
    return "\n".join(["## Real photos (EfficientNet-Lite0, ImageNet)", "",
                      "Grad-CAM at the last 7 x 7 map and its counterfactual (negated gradient, paper Sec. 3.2).", "",
                      "| photo | class | probability |", "|---|---|---|", *lines, "", "![real photos](real-photos.png)"])
