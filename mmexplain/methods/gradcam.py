"""The Grad-CAM engine: one forward pass, gradients w.r.t. one activation, maps.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization" (arXiv 1610.02391), Eq. 1-2:

    alpha_k^c = (1/Z) sum_ij dy^c / dA^k_ij        (channel weights)
    L^c       = ReLU(sum_k alpha_k^c A^k)           (coarse map, u x v)

then bilinear upsampling to the image and min-max normalisation per map.

How the engine computes it:

- The forward up to the layer runs with autograd off (it costs what inference
  costs). A forward hook swaps the layer's output for a fresh leaf tensor and turns
  autograd on, so the graph covers only the part of the network after the layer.
- ``torch.autograd.grad(score, activation)``: no parameter gradient is computed and
  ``param.grad`` is never touched.
- A list of N targets runs the model once; the N gradients come from one batched
  backward (``is_grads_batched``), or N backwards over one retained graph when an op
  has no batching rule.
- Hooks live for one call and are removed in ``finally``; grad mode is restored.

The extension point: a method overrides ``_weights(activation, gradient, call)`` and
returns channel weights (N, B, K) or element-wise weights (N, B, K, u, v); the engine
combines them with the activation by broadcast-and-sum, applies the ReLU (unless
``relu=False``), upsamples and normalises. A method with ``on_tokens = True`` gets a
token-shaped layer's (B, T, D) activation before ``reshape`` and weights it per token
(N, B, T, D) or per channel (N, B, D); the per-token map is then laid on the grid. A
method with ``needs_gradient = False`` runs forward passes only (``gradient`` is None);
``_forward_edited`` runs one more forward with the explained tensor edited (AblationCAM).
A method whose map is not a plain weighted sum adjusts the combined map before the ReLU
in ``_adjust_map`` (the Eigen methods centre it: a principal-component projection).

Where the explained tensor is read: the layer's output (default), its first tensor input
(``input=True``, a forward pre-hook, for a layer whose input has no module of its own),
at its ``call``-th call (``call=k``, 0-based) when one module runs several times in a
forward (EfficientNet-Lite's single ReLU6 module serves stem and head). Without
``call`` a module that runs twice is an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..targets import Target
from .base import (
    CAMResult, LayerSpec, _batch_rows, _Capture, _check_site, _detach, call_model, check_finite, check_targets,
    edited_forward, find_image, kept_buffers, module_name, resolve_layer, upsample_and_normalize,
)

__all__ = ["GradCAM", "Call"]


@dataclass
class Call:
    """What a method's ``_weights`` may read besides the activation and its gradient.

    Attributes:
        inputs: the model inputs of this call.
        targets: the N explained targets.
        output: the model output (detached).
        scores: (N, B) each target's score on the unmodified inputs.
        size: (H, W) of the maps that will be returned.
    """

    inputs: Any
    targets: list[Target]
    output: Any
    scores: Tensor
    size: tuple[int, int]


class GradCAM:
    """Grad-CAM for any differentiable scalar of any model (Selvaraju et al., Eq. 1-2).

    alpha_k = (1/Z) sum_ij dy/dA^k_ij;  L = ReLU(sum_k alpha_k A^k); bilinear
    upsampling to the image and min-max normalisation per map (a constant map gives
    zeros). ``y`` is given by a target (``mx.targets``): a class logit, a caption
    word's log-probability, an answer score, or any function of the output.

    Args:
        model: any ``nn.Module``; left exactly as found (hooks, flags, weights, grads).
        layer: dotted module name (``"layer4"``, ``"features.28"``) or the module.
        reshape: for token-shaped layers, ``tokens (B, T, D) -> (B, D, h, w)``;
            applied to the activation and its gradient alike.
        relu: apply the ReLU to the combined map (``False`` keeps negative evidence).
        input: explain the layer's first tensor *input* (a forward pre-hook) instead of
            its output.
        call: explain the layer's ``call``-th call (0-based) in a forward pass where the
            module runs several times; ``None`` (default) requires it to run once.

    Example:
        >>> import torch, torchvision, mmexplain as mx
        >>> model = torchvision.models.resnet18(num_classes=10).eval()
        >>> cam = mx.GradCAM(model, "layer4")
        >>> res = cam(torch.rand(2, 3, 64, 64), mx.targets.ClassLogit(3))
        >>> res.maps.shape, res.raw.shape, res.weights.shape
        (torch.Size([2, 64, 64]), torch.Size([2, 2, 2]), torch.Size([2, 512]))
        >>> many = cam(torch.rand(2, 3, 64, 64), [mx.targets.ClassLogit(c) for c in range(3)])
        >>> many.maps.shape   # three targets, one forward pass
        torch.Size([3, 2, 64, 64])

    Departures from the paper: none in the formula. Variants override ``_weights``
    only (see the module docstring).
    """

    #: False for methods that use forward passes only (no backward is taken)
    needs_gradient: ClassVar[bool] = True
    #: True for methods that weight a token-shaped activation per token, before ``reshape``
    on_tokens: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec,
        *,
        reshape: Callable[[Tensor], Tensor] | None = None,
        relu: bool = True,
        input: bool = False,
        call: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if reshape is not None and not callable(reshape):
            raise TypeError(f"reshape: expected a callable tokens -> (B, D, h, w), got {type(reshape).__name__}")
        if not isinstance(relu, bool):
            raise TypeError(f"relu: expected True or False, got {type(relu).__name__}")
        _check_site(input, call)
        self.model = model
        self.layer = resolve_layer(model, layer)
        self.layer_name = layer if isinstance(layer, str) else module_name(model, layer)
        self.reshape = reshape
        self.relu = relu
        self.input = input
        self.call = call

    def _weights(self, activation: Tensor, gradient: Tensor | None, call: Call) -> Tensor:
        """alpha_k = mean_ij dy/dA^k_ij: activation (B, K, u, v), gradient (N, B, K, u, v) -> (N, B, K)."""
        return gradient.mean(dim=(-2, -1))

    def _adjust_map(self, pre_relu: Tensor, call: Call) -> Tensor:
        """The combined map (N, B, u, v) before the ReLU; a method may adjust it (default: as it is)."""
        return pre_relu

    def _forward_edited(self, inputs: Any, edit: Callable[[Tensor], Tensor]) -> Any:
        """One more forward (no autograd) with the explained tensor replaced by ``edit(tensor)``.

        The tensor is read where the method reads it (output or input, the same call).
        """
        with torch.no_grad():
            return edited_forward(self.model, inputs, self.layer, edit, name=self.layer_name, input=self.input, call=self.call)

    def __call__(
        self,
        inputs: Any,
        targets: Target | Sequence[Target],
        *,
        size: tuple[int, int] | None = None,
        extra_layers: Mapping[str, LayerSpec] | None = None,
        targets_in_batch: bool = False,
        targets_per_backward: int | None = None,
    ) -> CAMResult:
        """Explain one target, or a list of N targets from one forward pass.

        Args:
            inputs: what ``model(...)`` takes: a tensor, a tuple (positional) or a dict (keywords).
            targets: a target callable ``output -> (B,)`` or a list of them.
            size: (H, W) of ``maps``; default the size of the first floating 4-D tensor
                in ``inputs``, else the layer's own grid.
            extra_layers: name -> layer whose output gradient is also returned
                (``res.extra``), e.g. word embeddings for gradient x embedding.
            targets_in_batch: instead of a batched backward, copy the layer's
                activation once per target along the batch axis (N*B rows,
                target-major: rows n*B..(n+1)*B belong to target n) and take one
                ordinary backward. The network before the layer still runs once.
                Faster when the part after the layer is recurrent (an LSTM decoder
                on CPU, where the batched backward gains nothing). The caller
                repeats, target-major, every other input that meets the activation
                after the layer (e.g. caption tokens: ``tokens.repeat(N, 1)``).

        Returns:
            CAMResult; see its docstring for shapes.
        """
        with kept_buffers(self.model):  # a training-mode forward must not move BatchNorm statistics
            return self._explain(inputs, targets, size=size, extra_layers=extra_layers, targets_in_batch=targets_in_batch,
                                 targets_per_backward=targets_per_backward)

    def _explain(
        self,
        inputs: Any,
        targets: Target | Sequence[Target],
        *,
        size: tuple[int, int] | None = None,
        extra_layers: Mapping[str, LayerSpec] | None = None,
        targets_in_batch: bool = False,
        targets_per_backward: int | None = None,
    ) -> CAMResult:
        """``__call__`` without the buffer bookkeeping."""
        many, target_list = check_targets(targets)
        if size is not None:
            size = _check_size(size)
        if self.needs_gradient and torch.is_inference_mode_enabled():
            raise RuntimeError(f"{type(self).__name__} needs autograd: call it outside torch.inference_mode()")
        if self.model.training:
            warnings.warn(
                "model is in training mode: dropout and batch-norm batch statistics change the explanation "
                "(the running statistics are restored afterwards); call model.eval() first",
                stacklevel=2,
            )
        layers = {self.layer_name: self.layer}
        for name, spec in (extra_layers or {}).items():
            if name == self.layer_name:
                raise ValueError(f"extra_layers: name {name!r} is the explained layer's own name")
            layers[name] = resolve_layer(self.model, spec)
        if targets_per_backward is not None and (isinstance(targets_per_backward, bool)
                                                 or not isinstance(targets_per_backward, int) or targets_per_backward < 1):
            raise ValueError(f"targets_per_backward: expected None or an int >= 1, got {targets_per_backward!r}")
        if extra_layers and not self.needs_gradient:
            raise ValueError(f"extra_layers: {type(self).__name__} takes no gradient, so it has none to return")

        copies = len(target_list) if targets_in_batch and self.needs_gradient else 1
        if copies > 1 and extra_layers:
            raise ValueError("extra_layers: not supported together with targets_in_batch=True")
        output, leaves = self._forward(inputs, layers, copies=copies)
        check_finite(leaves[self.layer_name].detach(), f"layer {self.layer_name!r} activation")
        if self.needs_gradient:
            scores, grads = self._backward(output, target_list, leaves, copies=copies, chunk=targets_per_backward)
        else:
            scores, grads = self._scores(output, target_list, batch=leaves[self.layer_name].shape[0]), [None]
        if copies > 1:
            batch = leaves[self.layer_name].shape[0] // copies
            leaves = {self.layer_name: leaves[self.layer_name][:batch]}  # the copies are equal
            output = _batch_rows(output, 0, batch, copies * batch)

        layer_act = leaves[self.layer_name].detach()  # the layer's own layout: (B, K, u, v) or (B, T, D)
        grad = grads[0]  # (N, B, ...) or None
        if layer_act.dtype in (torch.float16, torch.bfloat16):  # half models: weights and maps in float32
            layer_act = layer_act.float()
            grad = None if grad is None else grad.float()
        activation = self._grid(layer_act, "activation")  # (B, K, u, v)
        grid_grad = None if grad is None else self._grid(grad.flatten(0, 1), "gradient").unflatten(0, (len(target_list), -1))
        if size is None:
            image = find_image(inputs)
            size = tuple(image.shape[-2:]) if image is not None else tuple(activation.shape[-2:])
        call = Call(inputs, target_list, _detach(output), scores, size)
        with torch.no_grad():  # a forward-only method's own passes build no graph either
            if self.on_tokens and layer_act.dim() == 3:
                weights = self._weights(layer_act, grad, call).detach()  # (N, B, T, D) or (N, B, D)
                pre_relu = self._token_map_to_grid(_combine(weights, layer_act, who=type(self).__name__))  # (N, B, u, v)
            else:
                weights = self._weights(activation, grid_grad, call).detach()  # (N, B, K) or (N, B, K, u, v)
                pre_relu = _combine(weights, activation, who=type(self).__name__)  # (N, B, u, v)
            pre_relu = self._adjust_map(pre_relu, call)  # (N, B, u, v)
        if grid_grad is not None:
            channel_weights = grid_grad.mean(dim=(-2, -1))  # (N, B, K)
        elif weights.dim() == 3 and weights.shape[-1] == activation.shape[1]:
            channel_weights = weights
        else:
            channel_weights = weights.flatten(3).mean(dim=-1) if weights.dim() > 3 else weights
        raw = F.relu(pre_relu) if self.relu else pre_relu
        maps = upsample_and_normalize(raw, size)  # (N, B, H, W)

        extra = {name: (leaves[name].detach(), g) for name, g in zip(list(layers)[1:], grads[1:])}
        result = CAMResult(maps, raw, pre_relu, channel_weights, scores, activation, call.output, extra, many=True)
        return result if many else result[0]

    def _forward(self, inputs: Any, layers: dict[str, nn.Module], *, copies: int) -> tuple[Any, dict[str, Tensor]]:
        """Run the model once: no graph before the first hooked layer; returns output and leaves."""
        capture = _Capture(layers, copies=copies, grad=self.needs_gradient, input=self.input, call=self.call)
        handles = []
        grad_was = torch.is_grad_enabled()
        try:
            handles = capture.register()
            torch.set_grad_enabled(False)
            output = call_model(self.model, inputs)
        finally:
            torch.set_grad_enabled(grad_was)
            for handle in handles:
                handle.remove()
        capture.check()
        return output, {name: capture.leaves[name] for name in layers}  # explained layer first

    def _score(self, i: int, target: Target, output: Any, batch: int) -> Tensor:
        score = target(output)
        if not isinstance(score, Tensor) or score.shape != (batch,):
            got = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
            raise ValueError(f"target {i} ({target!r}) must return one scalar per sample, shape ({batch},); got {got}")
        if not score.is_floating_point():
            raise TypeError(f"target {i} ({target!r}) must return a real floating-point score, got dtype {score.dtype}")
        check_finite(score.detach(), f"target {i} ({target!r}) score")
        return score

    def _scores(self, output: Any, targets: list[Target], *, batch: int) -> Tensor:
        """(N, B) scores of the targets on a forward-only output."""
        with torch.no_grad():
            return torch.stack([self._score(i, t, output, batch) for i, t in enumerate(targets)]).detach()

    def _backward(
        self, output: Any, targets: list[Target], leaves: dict[str, Tensor], *, copies: int, chunk: int | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """Scores (N, B) and, per leaf, its gradient (N, B, ...) for every target.

        With ``copies`` = N the leaf holds one copy of the activation per target
        (N*B rows); target n reads its own rows of the output, and one ordinary
        backward of the summed scores gives every target's gradient.
        """
        rows = leaves[self.layer_name].shape[0]
        batch = rows // copies
        inputs = list(leaves.values())
        with torch.enable_grad():
            scores = []
            for i, target in enumerate(targets):
                mine = output if copies == 1 else _batch_rows(output, i * batch, (i + 1) * batch, rows)
                score = self._score(i, target, mine, batch)
                if not score.requires_grad:
                    raise ValueError(
                        f"target {i} ({target!r}) does not depend on layer {self.layer_name!r} "
                        "differentiably (argmax, detach or no_grad inside the target or the model?)"
                    )
                scores.append(score)
            stacked = torch.stack(scores)  # (N, B)
            if copies > 1:  # each copy's rows feed only its own target's score
                (grad,) = torch.autograd.grad(stacked.sum(), inputs)  # (N*B, ...)
                grads = [grad.unflatten(0, (copies, batch))]
            else:
                totals = stacked.sum(dim=1)  # (N,) samples are independent in eval mode
                grads = self._gradients(totals, inputs, chunk=chunk)
        missing = [name for name, g in zip(leaves, grads) if g is None]
        if missing:
            raise ValueError(f"the targets do not depend on layer {missing[0]!r}: its gradient is None")
        for name, g in zip(leaves, grads):
            check_finite(g, f"gradient of the target score(s) at layer {name!r}")
        return stacked.detach(), grads

    @staticmethod
    def _gradients(totals: Tensor, inputs: list[Tensor], *, chunk: int | None = None) -> list[Tensor]:
        """d totals[n] / d input for every n: list of (N, *input.shape); ``chunk`` targets per batched backward."""
        n = totals.shape[0]
        if chunk is not None and 1 < n and chunk < n:
            parts = [GradCAM._gradients_of(totals, inputs, slice(i, i + chunk), last=i + chunk >= n)
                     for i in range(0, n, chunk)]
            return [None if parts[0][j] is None else torch.cat([p[j] for p in parts]) for j in range(len(inputs))]
        if n == 1:
            grads = torch.autograd.grad(totals[0], inputs, allow_unused=True)
            return [None if g is None else g.unsqueeze(0) for g in grads]
        if n == 2:  # two backwards cost less than the batched backward's one-off setup (~1 s: vmap, sympy)
            pair = [torch.autograd.grad(totals[i], inputs, retain_graph=i == 0, allow_unused=True) for i in range(2)]
            return [None if pair[0][j] is None and pair[1][j] is None
                    else torch.stack([torch.zeros_like(x) if g[j] is None else g[j] for g in pair])
                    for j, x in enumerate(inputs)]
        eye = torch.eye(n, dtype=totals.dtype, device=totals.device)  # (N, N)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*performance drop.*")
                return list(torch.autograd.grad(totals, inputs, grad_outputs=eye, is_grads_batched=True, allow_unused=True, retain_graph=True))
        except RuntimeError:  # an op without a vmap batching rule: N backwards over one graph
            per_target = [torch.autograd.grad(totals[i], inputs, retain_graph=i < n - 1, allow_unused=True) for i in range(n)]
            return [None if per_target[0][j] is None else torch.stack([g[j] for g in per_target]) for j in range(len(inputs))]

    @staticmethod
    def _gradients_of(totals: Tensor, inputs: list[Tensor], rows: slice, *, last: bool) -> list[Tensor]:
        """d totals[rows] / d input over a retained graph (kept unless ``last``): list of (len(rows), ...)."""
        eye = torch.eye(totals.shape[0], dtype=totals.dtype, device=totals.device)[rows]  # (k, N)
        try:
            return list(torch.autograd.grad(totals, inputs, grad_outputs=eye, is_grads_batched=True,
                                            allow_unused=True, retain_graph=True))
        except RuntimeError:  # no vmap batching rule: one backward per target
            per = [torch.autograd.grad(totals[i], inputs, retain_graph=True, allow_unused=True)
                   for i in range(totals.shape[0])[rows]]
            return [None if per[0][j] is None else torch.stack([g[j] for g in per]) for j in range(len(inputs))]

    def _grid(self, tensor: Tensor, what: str) -> Tensor:
        """Apply ``reshape`` and check the (B, K, u, v) layout."""
        if self.reshape is not None:
            tensor = self.reshape(tensor)
        if tensor.dim() != 4:
            hint = "" if self.reshape is not None else "; token-shaped layers (B, N, D) need reshape=tokens -> (B, D, h, w)"
            raise ValueError(f"layer {self.layer_name!r} {what} has shape {tuple(tensor.shape)}, expected (B, K, u, v){hint}")
        return tensor

    def _token_map_to_grid(self, token_map: Tensor) -> Tensor:
        """(N, B, T) per-token map -> (N, B, u, v) through ``reshape`` (one channel)."""
        n = token_map.shape[0]
        grid = self._grid(token_map.flatten(0, 1)[..., None], "token map")  # (N*B, 1, u, v)
        return grid[:, 0].unflatten(0, (n, -1))


def _combine(weights: Tensor, activation: Tensor, *, who: str) -> Tensor:
    """Broadcast-and-sum over the channel axis.

    Args:
        weights: (N, B, K) channel weights or (N, B, K, u, v) element-wise; for a token
            layer (N, B, D) or (N, B, T, D).
        activation: (B, K, u, v), or (B, T, D) for a token layer.

    Returns:
        (N, B, u, v), or (N, B, T) for a token layer.
    """
    if activation.dim() == 4 and weights.dim() == 3:
        return torch.einsum("nbk,bkuv->nbuv", weights, activation)
    if activation.dim() == 3 and weights.dim() == 3:
        return torch.einsum("nbd,btd->nbt", weights, activation)
    if weights.dim() == activation.dim() + 1 and weights.shape[1:] == activation.shape:
        return (weights * activation.unsqueeze(0)).sum(dim=2 if activation.dim() == 4 else -1)
    raise ValueError(
        f"{who}._weights returned shape {tuple(weights.shape)}; expected (N, B, K) or (N, B, *{tuple(activation.shape[1:])}) "
        f"for an activation of shape {tuple(activation.shape)}"
    )


def _check_size(size: Any) -> tuple[int, int]:
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError(f"size: expected (H, W) with two positive ints, got {size!r}")
    return (size[0], size[1])
