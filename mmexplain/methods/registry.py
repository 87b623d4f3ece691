"""The one registry of map methods: name -> :class:`MethodSpec`.

Everything that takes a method by name reads :data:`METHODS`: ``mx.explain_caption`` /
``explain_answer`` / ``explain_class`` (``method=``), the command line (``--method``,
``--method list``), the evaluation protocols and their tables (display names,
applicability). :func:`register` adds a user's method to all of them at once.

A method applies to a model when the model (or its adapter) has every capability the
method ``requires``; adapters say what they have in ``capabilities``, a subset of
:data:`CAPABILITIES`:

- ``"layer"``: a layer to hook (its activation and gradient);
- ``"pixels"``: an editable float image tensor (B, C, H, W) among the model's inputs;
- ``"picture"``: an image perturbation methods can mask: the pixels themselves, or a picture
  the adapter processes again for every masked copy (``methods.pictures.PictureInputs``);
- ``"relu"``: ReLU-like units, so guided backprop's rule is defined;
- ``"attention"``: transformers attention that the relevancy recorder can see;
- ``"lm"``: an LLM-based VLM (image tokens inside a language model's sequence);
- ``"image-gradient"``: a gradient at the image tensor the model reads that lays onto one
  picture (a (B, C, H, W) tensor, or flattened patches the adapter lays out; not tiles).

Example:
    >>> import mmexplain as mx
    >>> spec = mx.methods.method_spec("hirescam")
    >>> spec.display, spec.needs_layer, spec.uses_gradient
    ('HiResCAM', True, True)
    >>> mx.methods.method_spec("relevancy").why_not(frozenset({"layer", "pixels"}))
    'Relevancy needs transformers attention the relevancy recorder can see (attention)'
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .gradcam import GradCAM
from .gated import OcclusionGradientXInput, RISEGradientXInput
from .gradient_free import AblationCAM, EigenCAM, ScoreCAM
from .input_gradient import PixelGradientXInput
from .guided import GuidedGradCAM
from .occlusion import Occlusion
from .rise import RISE
from .relevancy import Relevancy
from .variants import EigenGradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from ..errors import InputError, InputTypeError

__all__ = ["CAPABILITIES", "SALIENCY", "MethodSpec", "METHODS", "register", "get_method", "method_spec", "display_name"]

#: what a model (or its adapter) can offer a method, with what each one means
CAPABILITIES: dict[str, str] = {
    "layer": "a layer to hook",
    "pixels": "an editable float image tensor (B, C, H, W) among the inputs",
    "picture": "an image masked before the model runs: its pixel tensor, or a picture the adapter processes again",
    "relu": "ReLU-like units for guided backprop",
    "attention": "transformers attention the relevancy recorder can see",
    "lm": "an LLM-based VLM (image tokens in a language model's sequence)",
    "image-gradient": "a gradient at the image tensor the model reads, laid on one picture (pixels or flattened patches)",
}

#: how a result is read as one saliency map per target and sample (N, B, H, W)
SALIENCY: dict[str, str] = {
    "map": "res.maps as they are",
    "abs-channel-sum": "|res.pixels| summed over the colour channels (a pixel-resolution map)",
}


@dataclass(frozen=True)
class MethodSpec:
    """What the library knows about one map method.

    Attributes:
        name: the registry name (lower case), e.g. ``"gradcam++"``.
        cls: the method class, called ``cls(model, layer, reshape=...)(inputs, targets)``
            (``cls(model, reshape=...)`` when ``needs_layer`` is False).
        description: one line: the paper and what the method computes.
        display: the name tables and figures show, e.g. ``"Grad-CAM++"``.
        needs_layer: the method reads a layer (False: it reads the image or the attention).
        uses_gradient: the method takes a backward pass (False: forward passes only).
        requires: capabilities (see :data:`CAPABILITIES`) a model must have.
        saliency: how its result is read as a saliency map (a key of :data:`SALIENCY`).
    """

    name: str
    cls: type
    description: str
    display: str
    needs_layer: bool = True
    uses_gradient: bool = True
    requires: frozenset[str] = frozenset()
    saliency: str = "map"

    def why_not(self, capabilities: Iterable[str]) -> str | None:
        """None when a model with ``capabilities`` can run this method, else a one-line reason."""
        missing = [c for c in CAPABILITIES if c in self.requires and c not in set(capabilities)]
        if not missing:
            return None
        return f"{self.display} needs " + "; ".join(f"{CAPABILITIES[c]} ({c})" for c in missing)

    def saliency_of(self, result: Any, *, signed: bool = False) -> Tensor:
        """The saliency maps of a CAMResult: (N, B, H, W), or (B, H, W) for a one-target result.

        ``"abs-channel-sum"`` sums ``|res.pixels|`` over the colour axis (``signed=True``: the
        signed sum, as sanity checks compare it); ``"map"`` returns ``res.maps``.
        """
        if self.saliency == "map":
            return result.maps
        pixels = getattr(result, "pixels", None)
        if pixels is None:
            raise InputError(f"{self.display}: its result holds no pixel-resolution map (res.pixels is None)")
        return pixels.sum(dim=-3) if signed else pixels.abs().sum(dim=-3)


def _uses_gradient(cls: type) -> bool:
    for attribute in ("uses_gradient", "needs_gradient"):
        value = getattr(cls, attribute, None)
        if isinstance(value, bool):
            return value
    return True


def register(
    name: str,
    cls: type,
    *,
    description: str,
    display: str | None = None,
    needs_layer: bool = True,
    uses_gradient: bool | None = None,
    requires: Iterable[str] | None = None,
    saliency: str = "map",
) -> MethodSpec:
    """Add a method under ``name``; from then on every ``method=`` / ``--method`` accepts it.

    Args:
        name: the new name (case-insensitive; stored lower case); an existing name raises.
        cls: the method class (see :class:`MethodSpec`).
        description: one line saying what it computes.
        display: the name tables show (default: ``name``).
        needs_layer: whether it reads a layer.
        uses_gradient: default from the class (``uses_gradient`` / ``needs_gradient``).
        requires: capabilities it needs (default ``{"layer"}`` when it needs a layer, else none).
        saliency: a key of :data:`SALIENCY`.

    Returns:
        The new MethodSpec (also in :data:`METHODS`).
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"name: expected a non-empty str, got {name!r}")
    key = name.strip().lower()
    if key in METHODS:
        raise InputError(f"name: {key!r} is already registered (to {METHODS[key].cls.__name__}); choose another name")
    if key == "list":
        raise InputError("name: 'list' is the command line's word for the list of methods; choose another name")
    if not isinstance(cls, type):
        raise InputTypeError(f"cls: expected a method class, got {type(cls).__name__}")
    if not isinstance(description, str) or not description.strip() or "\n" in description.strip():
        raise InputError(f"description: expected one non-empty line, got {description!r}")
    for flag, value in (("needs_layer", needs_layer), ("uses_gradient", uses_gradient)):
        if value is not None and not isinstance(value, bool):
            raise InputTypeError(f"{flag}: expected True or False, got {type(value).__name__}")
    needs = frozenset(({"layer"} if needs_layer else set()) if requires is None else requires)
    unknown = sorted(needs - set(CAPABILITIES))
    if unknown:
        raise InputError(f"requires: unknown capability {unknown[0]!r}; expected some of: {', '.join(CAPABILITIES)}")
    if saliency not in SALIENCY:
        raise InputError(f"saliency: expected one of {', '.join(SALIENCY)}, got {saliency!r}")
    spec = MethodSpec(key, cls, description.strip(), display or key, needs_layer,
                      _uses_gradient(cls) if uses_gradient is None else uses_gradient, needs, saliency)
    METHODS[key] = spec
    return spec


def method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` called ``name`` (case-insensitive).

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: an unknown name; the message names the nearest ones and lists all.
    """
    if not isinstance(name, str):
        raise InputTypeError(f"method: expected a name (str), got {type(name).__name__}")
    key = name.strip().lower()
    if key not in METHODS:
        nearest = difflib.get_close_matches(key, list(METHODS), n=3, cutoff=0.5)
        hint = f"; nearest: {', '.join(nearest)}" if nearest else ""
        raise InputError(f"method: unknown name {name!r}{hint}; expected one of: {', '.join(METHODS)}")
    return METHODS[key]


def get_method(name: str) -> type:
    """The method class called ``name`` (case-insensitive; see :data:`METHODS`)."""
    return method_spec(name).cls


def display_name(name: str) -> str:
    """The display name of a registered method; any other name (a baseline) as it is."""
    spec = METHODS.get(name)
    return spec.display if spec is not None else name


_LAYER = frozenset({"layer"})

#: name -> MethodSpec of every map method; :func:`register` adds more
METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("gradcam", GradCAM, "Grad-CAM (Selvaraju et al.): channel weights = spatial mean of the gradient",
                   "Grad-CAM", requires=_LAYER),
        MethodSpec("gradcam++", GradCAMPlusPlus,
                   "Grad-CAM++ (Chattopadhyay et al.): higher-order pixel weights on the positive gradient",
                   "Grad-CAM++", requires=_LAYER),
        MethodSpec("xgradcam", XGradCAM, "XGrad-CAM (Fu et al.): gradient weighted by the normalised activation",
                   "XGrad-CAM", requires=_LAYER),
        MethodSpec("hirescam", HiResCAM, "HiResCAM (Draelos & Carin): gradient x activation element-wise, no spatial mean",
                   "HiResCAM", requires=_LAYER),
        MethodSpec("layercam", LayerCAM, "LayerCAM (Jiang et al.): positive gradient x activation element-wise",
                   "LayerCAM", requires=_LAYER),
        MethodSpec("eigengradcam", EigenGradCAM, "Eigen-Grad-CAM: first principal component of gradient x activation",
                   "Eigen-Grad-CAM", requires=_LAYER),
        MethodSpec("scorecam", ScoreCAM,
                   "Score-CAM (Wang et al.): softmax of the scores of activation-masked images; forward only",
                   "Score-CAM", uses_gradient=False, requires=frozenset({"layer", "picture"})),
        MethodSpec("ablationcam", AblationCAM,
                   "Ablation-CAM (Desai & Ramaswamy): relative score drop when a channel is zeroed; forward only",
                   "Ablation-CAM", uses_gradient=False,
                   requires=frozenset({"layer", "picture"})),  # its copies ride a batch axis of the image
        MethodSpec("eigencam", EigenCAM,
                   "Eigen-CAM (Muhammad & Yeasin): first principal component of the activation; forward only, no target",
                   "Eigen-CAM", uses_gradient=False, requires=_LAYER),
        MethodSpec("occlusion", Occlusion,
                   "Occlusion (Zeiler & Fergus): score drop when an image window is hidden; forward only, no layer",
                   "Occlusion", needs_layer=False, uses_gradient=False, requires=frozenset({"picture"})),
        MethodSpec("rise", RISE,
                   "RISE (Petsiuk et al.): score of randomly masked images, averaged per pixel over the masks that "
                   "keep it; forward only, no layer", "RISE", needs_layer=False, uses_gradient=False,
                   requires=frozenset({"picture"})),
        MethodSpec("guided", GuidedGradCAM,
                   "Guided Grad-CAM (Selvaraju et al.): Grad-CAM's map x guided backprop, at pixel resolution",
                   "Guided Grad-CAM", requires=frozenset({"layer", "pixels", "relu"}), saliency="abs-channel-sum"),
        MethodSpec("relevancy", Relevancy,
                   "Relevancy (Chefer et al. 2021): gradient-weighted attention through self- and cross-attention; "
                   "transformers models only", "Relevancy", needs_layer=False, requires=frozenset({"attention"})),
    )
}

# CAM is not in METHODS: it needs the model's global-pooling classifier (``fc``), which no capability names.

# LLM-based VLMs: maps read inside the language model (see ``lm_maps``); the image gradient of any model
from .lm_maps import GradientXInput, LMAttention, LMGradCAM, TokenActivationMap  # noqa: E402

for _spec in (
    MethodSpec("attention", LMAttention, "LM attention from the word's logit position to the image tokens, "
               "mean over heads and layers; forward only", "LM attention", needs_layer=False, uses_gradient=False,
               requires=frozenset({"lm"})),
    MethodSpec("tam", TokenActivationMap, "Token Activation Map (Li et al. 2025): image tokens through the LM head, "
               "earlier tokens' interference removed, rank Gaussian filter; forward only", "TAM", needs_layer=False,
               uses_gradient=False, requires=frozenset({"lm"})),
    MethodSpec("lm-gradcam", LMGradCAM, "Grad-CAM on an LM layer's hidden states at the image tokens (LLaVA-CAM)",
               "LM Grad-CAM", needs_layer=False, requires=frozenset({"lm"})),
    MethodSpec("gradxinput", GradientXInput, "gradient x input on the LM's image-token embeddings, summed over "
               "channels", "Gradient x Input", needs_layer=False, requires=frozenset({"lm"})),
    MethodSpec("pixel-gradxinput", PixelGradientXInput, "gradient x input (Shrikumar et al.) on the image tensor "
               "the model reads, per pixel, summed over channels, smoothed; no layer", "Gradient x Input (pixels)",
               needs_layer=False, requires=frozenset({"image-gradient"})),
    MethodSpec("occlusion-gradxinput", OcclusionGradientXInput, "gradient x input on the pixels times the "
               "occlusion map's ReLU (over its max, to the power 1/4), as Guided Grad-CAM fuses a fine and a "
               "coarse map; no layer", "Gradient x Input x Occlusion", needs_layer=False,
               requires=frozenset({"picture", "image-gradient"})),
    MethodSpec("rise-gradxinput", RISEGradientXInput, "gradient x input on the pixels times the RISE map's ReLU "
               "(over its max, to the power 1/4), as occlusion-gradxinput with random masks for the coarse map; "
               "no layer", "Gradient x Input x RISE", needs_layer=False,
               requires=frozenset({"picture", "image-gradient"})),
):
    METHODS[_spec.name] = _spec
