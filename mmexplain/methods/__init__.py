"""Every explanation method, one call form: ``Method(model, layer, ...)(inputs, targets) -> CAMResult``.

- ``base``: hook capture, ``CAMResult``, layer lookup, upsampling and normalisation.
- ``gradcam``: the gradient engine (Grad-CAM) that every CAM method extends.
- ``variants``: Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM, Eigen-Grad-CAM.
- ``gradient_free``: Score-CAM, Ablation-CAM, Eigen-CAM (forward passes only).
- ``occlusion``: sliding-window occlusion (forward passes only, no layer needed).
- ``relevancy``: transformer relevancy (Chefer et al. 2021) through recorded attention; no layer.
- ``cam``: CAM for GAP + linear models.
- ``guided``: pixel-space gradients (guided backprop, deconvolution, Guided Grad-CAM).

``METHODS`` names every map method (name -> class) and ``DESCRIPTIONS`` says each in one
line; ``get_method(name)`` looks one up.

Example:
    >>> import mmexplain as mx
    >>> mx.methods.get_method("hirescam").__name__
    'HiResCAM'
"""

from .base import CAMResult, call_model, find_image, module_name, replace_image, resolve_layer, upsample_and_normalize
from .cam import CAM
from .gradcam import GradCAM
from .gradient_free import AblationCAM, EigenCAM, ScoreCAM
from .occlusion import Occlusion
from .relevancy import Relevancy
from .guided import Deconvolution, GuidedBackprop, GuidedGradCAM, guided_gradcam
from .variants import EigenGradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM

# name -> class: every method here takes (model, layer, **keywords) and returns a CAMResult.
# Relevancy takes no layer (it reads the attention), so ``mx.explain.METHODS`` lists it beside these.
METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "eigengradcam": EigenGradCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
    "eigencam": EigenCAM,
    "occlusion": Occlusion,
}

DESCRIPTIONS: dict[str, str] = {
    "gradcam": "Grad-CAM (Selvaraju et al.): channel weights = spatial mean of the gradient",
    "gradcam++": "Grad-CAM++ (Chattopadhyay et al.): higher-order pixel weights on the positive gradient",
    "xgradcam": "XGrad-CAM (Fu et al.): gradient weighted by the normalised activation",
    "hirescam": "HiResCAM (Draelos & Carin): gradient x activation element-wise, no spatial mean",
    "layercam": "LayerCAM (Jiang et al.): positive gradient x activation element-wise",
    "eigengradcam": "Eigen-Grad-CAM: first principal component of gradient x activation",
    "scorecam": "Score-CAM (Wang et al.): softmax of the scores of activation-masked images; forward only",
    "ablationcam": "Ablation-CAM (Desai & Ramaswamy): relative score drop when a channel is zeroed; forward only",
    "eigencam": "Eigen-CAM (Muhammad & Yeasin): first principal component of the activation; forward only, no target",
    "occlusion": "Occlusion (Zeiler & Fergus): score drop when an image window is hidden; forward only, no layer",
}


def get_method(name: str) -> type:
    """The method class called ``name`` (case-insensitive; see ``METHODS``).

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    if not isinstance(name, str):
        raise TypeError(f"method: expected a name (str), got {type(name).__name__}")
    key = name.strip().lower()
    if key not in METHODS:
        raise ValueError(f"method: unknown name {name!r}; expected one of: {', '.join(METHODS)}")
    return METHODS[key]


__all__ = [
    "CAMResult", "call_model", "find_image", "module_name", "replace_image", "resolve_layer", "upsample_and_normalize",
    "GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "EigenGradCAM",
    "ScoreCAM", "AblationCAM", "EigenCAM", "Occlusion", "Relevancy",
    "CAM", "GuidedBackprop", "Deconvolution", "GuidedGradCAM", "guided_gradcam",
    "METHODS", "DESCRIPTIONS", "get_method",
]
