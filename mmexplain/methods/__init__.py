"""Every explanation method, one call form: ``Method(model, layer, ...)(inputs, targets) -> CAMResult``.

- ``base``: ``CAMResult``, layer lookup, inputs, upsampling and normalisation, checks.
- ``hooks``: the one hook context (a layer's tensor at its k-th call, for one forward).
- ``core``: the score validator, the gradient path and the two public bases:
  ``GradientMethod`` (override ``weights(activation, gradient)``) and
  ``PerturbationMethod`` (forward passes only; override ``weights(activation, run)``).
- ``gradcam``: Grad-CAM, the gradient base's mean-gradient weights.
- ``variants``: Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM, Eigen-Grad-CAM.
- ``gradient_free``: Score-CAM, Ablation-CAM, Eigen-CAM (forward passes only).
- ``occlusion``: sliding-window occlusion (forward passes only, no layer needed).
- ``rise``: RISE, the score of randomly masked images (forward passes only, no layer needed).
- ``relevancy``: transformer relevancy (Chefer et al. 2021) through recorded attention; no layer.
- ``cam``: CAM for GAP + linear models.
- ``lm_maps``: maps inside an LLM-based VLM's language model (attention, TAM, LM Grad-CAM, gradient x input).
- ``guided``: pixel-space gradients (guided backprop, deconvolution, Guided Grad-CAM).
- ``input_gradient``: gradient x input on the image tensor the model reads, per pixel (no layer).
- ``gated``: that map gated by occlusion's or RISE's map (fine x coarse, as Guided Grad-CAM).

- ``registry``: ``METHODS`` (name -> ``MethodSpec``: class, one-line description, display
  name, needs a layer, uses gradients, required capabilities, how its saliency is read);
  ``register(name, cls, description=...)`` adds a method everywhere; ``get_method(name)``
  returns the class, ``method_spec(name)`` the spec.

Example:
    >>> import mmexplain as mx
    >>> mx.methods.get_method("hirescam").__name__
    'HiResCAM'
"""

from .base import CAMResult, call_model, find_image, module_name, replace_image, resolve_layer, upsample_and_normalize
from .core import GradientMethod, PerturbationMethod, Run
from .cam import CAM
from .gradcam import GradCAM
from .gradient_free import AblationCAM, EigenCAM, ScoreCAM
from .occlusion import Occlusion
from .rise import RISE
from .relevancy import Relevancy
from .guided import Deconvolution, GuidedBackprop, GuidedGradCAM, guided_gradcam
from .input_gradient import PixelGradientXInput
from .gated import OcclusionGradientXInput, RISEGradientXInput
from .variants import EigenGradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from .lm_maps import GradientXInput, LMAttention, LMGradCAM, TokenActivationMap
from .registry import CAPABILITIES, METHODS, SALIENCY, MethodSpec, display_name, get_method, method_spec, register


__all__ = [
    "CAMResult", "call_model", "find_image", "module_name", "replace_image", "resolve_layer", "upsample_and_normalize",
    "GradientMethod", "PerturbationMethod", "Run", "GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "EigenGradCAM",
    "ScoreCAM", "AblationCAM", "EigenCAM", "Occlusion", "RISE", "Relevancy",
    "CAM", "GuidedBackprop", "Deconvolution", "GuidedGradCAM", "guided_gradcam",
    "LMAttention", "TokenActivationMap", "LMGradCAM", "GradientXInput", "PixelGradientXInput",
    "OcclusionGradientXInput", "RISEGradientXInput",
    "METHODS", "MethodSpec", "CAPABILITIES", "SALIENCY", "register", "get_method", "method_spec", "display_name",
]
