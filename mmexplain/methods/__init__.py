"""Every explanation method, one call form: ``Method(model, layer, ...)(inputs, targets) -> CAMResult``.

- ``base``: hook capture, ``CAMResult``, layer lookup, upsampling and normalisation.
- ``gradcam``: the gradient engine (Grad-CAM) that the gradient variants extend.
- ``cam``: CAM for GAP + linear models.
- ``guided``: pixel-space gradients (guided backprop, deconvolution, Guided Grad-CAM).
"""

from .base import CAMResult, call_model, find_image, module_name, resolve_layer, upsample_and_normalize
from .cam import CAM
from .gradcam import GradCAM
from .guided import Deconvolution, GuidedBackprop, GuidedGradCAM, guided_gradcam

__all__ = [
    "CAMResult", "call_model", "find_image", "module_name", "resolve_layer", "upsample_and_normalize",
    "GradCAM", "CAM", "GuidedBackprop", "Deconvolution", "GuidedGradCAM", "guided_gradcam",
]
