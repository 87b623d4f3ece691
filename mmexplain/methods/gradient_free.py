"""Methods that take no gradient: Score-CAM, Ablation-CAM, Eigen-CAM (occlusion: ``occlusion.py``).

Each is a :class:`~mmexplain.methods.core.PerturbationMethod`: one clean forward reads the
layer, then, for Score-CAM, Ablation-CAM and occlusion, forward passes on perturbed copies
of the batch:

==============  ============================================  =====================
method          perturbed copy p of the batch                 weight / map value
==============  ============================================  =====================
Score-CAM       image ⊙ normalised upsampled A_k              softmax_k y(copy k)
Ablation-CAM    channel k of the layer's tensor set to 0      (y - y(copy k)) / |y|
Occlusion       window p of the image set to the baseline     y - y(copy p)
Eigen-CAM       (none: first principal component of A)        projection on it
==============  ============================================  =====================

Copies are batched: one forward holds ``batch_size // B`` copies of the whole batch,
copy-major (rows j*B .. (j+1)*B are copy j), every other batched input repeated with
them, so a target that takes one index per sample reads its own rows, and every
target of a list is scored on the same forwards. The image is the first floating 4-D
tensor of the inputs (``find_image``), so tuple/dict inputs of multimodal models work.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import LayerSpec, batch_rows, call_model, detach_all, find_image, replace_image
from .core import PerturbationMethod, Run, score_of
from .variants import first_component, safe_div
from ..errors import InputError, InputTypeError

__all__ = ["ScoreCAM", "AblationCAM", "EigenCAM"]


class ScoreCAM(PerturbationMethod):
    r"""Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for
    Convolutional Neural Networks", CVPR Workshops 2020, Algorithm 1).

    .. math::
        H_k = s(\mathrm{up}(A_k)),\qquad
        w_k = \mathrm{softmax}_k\big(y(X \odot H_k) - y(X_b)\big),\qquad
        L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    ``up`` is bilinear upsampling to the image, ``s`` min-max normalisation per channel
    (a constant channel gives a zero mask), ``y`` the target's score. The softmax over
    channels is the paper's Algorithm 1 and what pytorch-grad-cam and torchcam compute;
    under it the baseline term ``y(X_b)`` cancels. ``softmax=False`` gives the paper's
    channel-wise increase of confidence itself (Definition 2), softmax-free:
    ``w_k = y(X ⊙ H_k) - y(X_b)`` with ``X_b`` the image filled with ``baseline``
    (one more forward pass).

    No gradient is taken; the K masked copies of the batch
    run ``batch_size`` rows per forward, and a list of targets is scored on the same
    forwards. ``res.weights`` holds ``w``.

    Args:
        model, layer: as for :class:`GradCAM`.
        batch_size: masked inputs per forward pass (``batch_size // B`` copies of the batch).
        softmax: normalise the channel scores with a softmax over channels (default).
        baseline: the value of ``X_b`` (only read with ``softmax=False``).
        **options: ``reshape``, ``relu``, ``input``, ``call`` as for :class:`GradCAM`.

    Example:
        >>> import torch, torchvision, mmexplain as mx
        >>> model = torchvision.models.resnet18(num_classes=10).eval()
        >>> cam = mx.ScoreCAM(model, "layer3", batch_size=64)
        >>> res = cam(torch.rand(1, 3, 32, 32), mx.targets.ClassLogit(3))
        >>> res.maps.shape, res.weights.shape, round(float(res.weights.sum()), 4)
        (torch.Size([1, 32, 32]), torch.Size([1, 256]), 1.0)

    Departures from the paper: none with ``softmax=True``. The masks are built at the
    image's size, upsampled first and normalised after, as in the paper (torchcam
    normalises at the layer's size and upsamples after).
    """

    def __init__(
        self, model: nn.Module, layer: LayerSpec, *, softmax: bool = True, baseline: float = 0.0, **options: Any
    ) -> None:
        super().__init__(model, layer, **options)
        if not isinstance(softmax, bool):
            raise InputTypeError(f"softmax: expected True or False, got {type(softmax).__name__}")
        self.softmax = softmax
        if isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
            raise InputTypeError(f"baseline: expected a number (the value of the baseline image), got {type(baseline).__name__}")
        self.baseline = float(baseline)

    def weights(self, activation: Tensor, run: Run) -> Tensor:
        """activation (B, K, u, v) -> (N, B, K) channel weights from K masked forwards."""
        image = find_image(run.inputs)  # (B, C, H, W)
        if image is None:
            raise InputError(f"inputs: {type(self).__name__} perturbs the image and found no floating (B, C, H, W) tensor in the inputs")
        batch, k = activation.shape[:2]

        def build(index: Tensor) -> Any:
            masks = F.interpolate(activation[:, index].float(), size=image.shape[-2:], mode="bilinear", align_corners=False)
            low = masks.amin(dim=(-2, -1), keepdim=True)
            span = masks.amax(dim=(-2, -1), keepdim=True) - low  # (B, r, 1, 1)
            masks = safe_div(masks - low, span.expand_as(masks)).to(image.dtype)  # (B, r, H, W) in [0, 1]
            masked = image.unsqueeze(0) * masks.transpose(0, 1).unsqueeze(2)  # (r, B, C, H, W)
            return call_model(self.model, replace_image(self.repeated(run, len(index)), masked.flatten(0, 1)))

        scores = self.copy_scores(run, k, build).transpose(1, 2)  # (N, B, K)
        if self.softmax:
            return torch.softmax(scores, dim=-1)
        blank = call_model(self.model, replace_image(run.inputs, torch.full_like(image, self.baseline)))
        base = torch.stack([score_of(t, blank, batch, index=i) for i, t in enumerate(run.targets)])  # (N, B)
        return scores - base.unsqueeze(-1)


class AblationCAM(PerturbationMethod):
    r"""Ablation-CAM (Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep
    Convolutional Network via Gradient-free Localization", WACV 2020, Eq. 2-3).

    .. math:: w_k = \frac{y - y_k}{y},\qquad L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    ``y_k`` is the target's score when channel ``k`` of the layer's tensor is set to 0
    during the forward pass (a hook edits it; the model is not modified). The K
    ablated copies of the batch run ``batch_size`` rows per forward. On a token layer
    (B, T, D) channel ``d`` is feature ``d`` of every token, and the per-token map is laid
    on the grid by ``reshape``; a model that packs several images' tokens into one row (an
    LLM-based VLM) gets its copies along the token axis. ``res.weights`` holds ``w``.

    Departure from the paper: the drop is divided by ``|y|``, not ``y``. For a positive
    class score that is the same; for a negative score (a caption word's log-probability)
    dividing by ``y`` would turn the evidence for the word into evidence against it.

    Args:
        model, layer: as for :class:`GradCAM`.
        batch_size: ablated inputs per forward pass (``batch_size // B`` copies of the batch).
        reuse_prefix: run the part of the network before the layer once per forward on
            the B inputs and make the copies at the layer (its tensor repeated, then
            ablated), instead of repeating the inputs. Valid when the rest of the network
            reads the inputs only through the layer (a backbone's last block, then the
            head): the cost is then the part after the layer only. Checked once per call
            against the repeated-inputs pass; a model that fails the check raises.
        **options: ``reshape``, ``relu``, ``input``, ``call`` as for :class:`GradCAM`.

    Example:
        >>> import torch, torchvision, mmexplain as mx
        >>> model = torchvision.models.resnet18(num_classes=10).eval()
        >>> res = mx.AblationCAM(model, "layer3", batch_size=64)(torch.rand(1, 3, 32, 32), mx.targets.ClassLogit(3))
        >>> res.maps.shape, res.weights.shape
        (torch.Size([1, 32, 32]), torch.Size([1, 256]))
        >>> fast = mx.AblationCAM(model, "layer3", batch_size=64, reuse_prefix=True)(torch.rand(1, 3, 32, 32), mx.targets.ClassLogit(3))

    Departures from the paper: where ``y = 0`` the weight is 0. The ablated value is
    always 0, as in the paper (pytorch-grad-cam uses ``min - 1e7`` when the layer's
    minimum is not 0). The whole forward runs for every copy (the layer's output is
    replaced, so layers after it that also read earlier tensors stay correct) unless
    ``reuse_prefix=True``.
    """

    def __init__(self, model: nn.Module, layer: LayerSpec, *, reuse_prefix: bool = False, **options: Any) -> None:
        super().__init__(model, layer, **options)
        if not isinstance(reuse_prefix, bool):
            raise InputTypeError(f"reuse_prefix: expected True or False, got {type(reuse_prefix).__name__}")
        self.reuse_prefix = reuse_prefix

    def weights(self, activation: Tensor, run: Run) -> Tensor:
        """activation (B, K, u, v) -> (N, B, K): the relative score drop per zeroed channel."""
        batch, k = activation.shape[:2]
        checked = [not self.reuse_prefix]

        def build(index: Tensor) -> Any:
            if checked[0]:
                return self.zero_channels(run, index, reuse=self.reuse_prefix)
            checked[0] = True  # once: the copies made at the layer must give what the repeated inputs give
            full = detach_all(self.zero_channels(run, index))
            try:
                output = self.zero_channels(run, index, reuse=True)
            except RuntimeError as exc:  # e.g. a skip path of B rows meets the copies' r*B rows
                raise InputError(f"reuse_prefix: the forward fails when the copies are made at layer {self.layer_name!r} "
                                 f"({exc}); call without reuse_prefix") from exc
            rows = len(index) * batch
            for i, t in enumerate(run.targets):
                for j in range(len(index)):
                    a = score_of(t, batch_rows(full, j * batch, (j + 1) * batch, rows), batch, index=i)
                    b = score_of(t, batch_rows(output, j * batch, (j + 1) * batch, rows), batch, index=i)
                    if not torch.allclose(a, b, rtol=1e-4, atol=1e-6):
                        raise InputError(f"reuse_prefix: the model reads, after layer {self.layer_name!r}, tensors computed "
                                         "before it, so the layer's copies cannot be made at the layer; call without reuse_prefix")
            return output

        ablated = self.copy_scores(run, k, build)  # (N, K, B)
        y = run.scores.unsqueeze(-1)  # (N, B, 1)
        # |y|: a negative score (a word's log-probability) must not flip the sign of the drop
        return safe_div(y - ablated.transpose(1, 2), y.abs().expand(-1, -1, k))  # (N, B, K)


class EigenCAM(PerturbationMethod):
    r"""Eigen-CAM (Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal
    Components", IJCNN 2020, Eq. 5-6).

    The activation as a (u*v, K) matrix, its columns centred over positions; with ``v``
    its first right-singular vector,

    .. math:: L = \mathrm{ReLU}\big((A - \bar A)\, v\big)

    No gradient, one forward pass; the map does not depend on the target (a list of N
    targets gives N equal maps, and ``res.scores`` still holds each target's score).
    Sign convention: ``v`` is signed so that ``sum_k v_k >= 0``, i.e. the projection
    correlates positively with the centred channel sum ``sum_k A_k``. ``res.weights``
    holds ``v``.

    Example:
        >>> import torch, torchvision, mmexplain as mx
        >>> model = torchvision.models.resnet18(num_classes=10).eval()
        >>> res = mx.EigenCAM(model, "layer3")(torch.rand(2, 3, 64, 64), mx.targets.ClassLogit(0))
        >>> res.maps.shape, res.weights.shape
        (torch.Size([2, 64, 64]), torch.Size([2, 256]))

    Departures from the paper: the sign above (an SVD leaves it arbitrary; the paper and
    pytorch-grad-cam keep what the solver returns). Centring the columns is
    pytorch-grad-cam's choice, which this follows.
    """

    centred = True

    def weights(self, activation: Tensor, run: Run) -> Tensor:
        """activation (B, K, u, v) -> (N, B, K) the first principal direction, the same for every target."""
        v = first_component(activation)  # (B, K)
        return v.unsqueeze(0).expand(len(run.targets), -1, -1)
