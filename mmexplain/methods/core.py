"""The method core: one score validator, one gradient path, and the two public bases.

- :func:`score_of`: a target's score checked once for every method (one scalar per
  sample, real, finite; differentiable when a gradient is wanted): ``ValueError``.
- :func:`gradients`: d score_n / d tensor for N targets over one graph.
- :class:`GradientMethod`: one forward (no graph before the layer), one batched backward,
  ``weights(activation, gradient)``; Grad-CAM and its variants.
- :class:`PerturbationMethod`: forward passes only, ``weights(activation, run)`` from
  perturbed copies of the batch; Score-CAM, Ablation-CAM, Eigen-CAM, Occlusion, CAM.

Both bases lay a token-shaped layer (B, T, D) on its grid with ``reshape=`` (given per
call by the adapter) before ``weights`` sees it, so a method never knows it got tokens;
both combine by broadcast-and-sum (channel weights (N, B, K) or element-wise (N, B, K, u, v)),
centre the map when the class says ``centred = True`` (a principal-component projection),
apply the ReLU (``relu=False`` keeps the sign), upsample and normalise once.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..targets import Target
from .base import (
    CAMResult, LayerSpec, batch_rows, call_model, check_finite, check_size, check_targets, detach_all, find_image,
    kept_buffers, module_name, repeat_rows, resolve_layer, upsample_and_normalize, warn_training,
)
from .hooks import Site
from ..errors import InputError, InputTypeError

__all__ = ["GradientMethod", "PerturbationMethod", "Run", "score_of", "gradients", "combine"]


PLAIN_BACKWARDS = 2  # targets per chunk that take one plain backward each (no vmap set-up)


def score_of(target: Target, output: Any, batch: int, *, index: int = 0, grad: bool = False) -> Tensor:
    """``target(output)`` checked: (B,) real and finite, and differentiable with ``grad``.

    Raises (the same for every method):
        ValueError: a wrong shape, NaN / inf, or (with ``grad``) no gradient path.
        TypeError: a score that is not a real floating-point tensor.
    """
    score = target(output)
    if not isinstance(score, Tensor) or score.shape != (batch,):
        got = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
        raise InputError(f"target {index} ({target!r}) must return one scalar per sample, shape ({batch},); got {got}")
    if not score.is_floating_point():
        raise InputTypeError(f"target {index} ({target!r}) must return a real floating-point score, got dtype {score.dtype}")
    check_finite(score.detach(), f"target {index} ({target!r}) score")
    if grad and not score.requires_grad:
        raise InputError(f"target {index} ({target!r}) does not depend on the explained tensor differentiably "
                         "(argmax, detach or no_grad inside the target or the model?)")
    return score


def gradients(totals: Tensor, inputs: Sequence[Tensor], *, chunk: int | None = None) -> list[Tensor | None]:
    """d totals[n] / d input for every n: per input (N, *input.shape), or None where unused.

    Chunking: ``chunk`` targets per backward (default all N), each chunk one batched
    backward (``is_grads_batched``: the rows of the identity as grad_outputs) over ONE
    retained graph, so memory grows with ``chunk``, not N. Fallback: an op without a vmap
    batching rule raises inside the batched backward; that chunk then takes one backward
    per target over the same graph (same values, slower). A chunk of at most
    ``PLAIN_BACKWARDS`` targets (an answer and its counterfactual) takes plain backwards
    too: the batched backward's first call in a process costs about a second of setup.
    """
    n = totals.shape[0]
    step = n if chunk is None else max(1, min(chunk, n))
    eye = torch.eye(n, dtype=totals.dtype, device=totals.device)  # (N, N)
    parts = []
    for start in range(0, n, step):
        rows = range(start, min(start + step, n))
        keep = rows.stop < n
        try:
            if len(rows) <= PLAIN_BACKWARDS:
                raise RuntimeError("one or two targets: plain backwards")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*performance drop.*")
                part = torch.autograd.grad(totals, inputs, grad_outputs=eye[rows.start:rows.stop], is_grads_batched=True,
                                           allow_unused=True, retain_graph=True)
        except RuntimeError:  # no batching rule (or one row): one backward per target
            each = [torch.autograd.grad(totals[i], inputs, retain_graph=keep or i < rows.stop - 1, allow_unused=True)
                    for i in rows]
            part = [None if each[0][j] is None else torch.stack([g[j] for g in each]) for j in range(len(inputs))]
        parts.append(part)
    return [None if parts[0][j] is None else torch.cat([p[j] for p in parts]) for j in range(len(inputs))]


def combine(weights: Tensor, activation: Tensor, *, who: str) -> Tensor:
    """sum_k w_k A_k: weights (N, B, K) or (N, B, K, u, v), activation (B, K, u, v) -> (N, B, u, v)."""
    if weights.dim() == 3 and weights.shape[1:] == activation.shape[:2]:
        return torch.einsum("nbk,bkuv->nbuv", weights, activation)
    if weights.dim() == 5 and weights.shape[1:] == activation.shape:
        return (weights * activation.unsqueeze(0)).sum(dim=2)
    raise InputError(f"{who}.weights returned shape {tuple(weights.shape)}; expected (N, *{tuple(activation.shape[:2])}) "
                     f"or (N, *{tuple(activation.shape)}) for an activation of shape {tuple(activation.shape)}")


class _LayerMethod:
    """What both bases share: the model, the site, the grid, and the result's assembly."""

    #: True: the map is centred over positions before the ReLU (a principal-component projection)
    centred: ClassVar[bool] = False

    def __init__(self, model: nn.Module, layer: LayerSpec | None, *, reshape: Callable[[Tensor], Tensor] | None = None,
                 relu: bool = True, input: bool = False, call: int | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if reshape is not None and not callable(reshape):
            raise InputTypeError(f"reshape: expected a callable tokens -> (B, D, h, w), got {type(reshape).__name__}")
        if not isinstance(relu, bool):
            raise InputTypeError(f"relu: expected True or False, got {type(relu).__name__}")
        self.model, self.reshape, self.relu = model, reshape, relu
        self.layer = None if layer is None else resolve_layer(model, layer)
        self.layer_name = None if layer is None else layer if isinstance(layer, str) else module_name(model, layer)
        site = Site(self.layer if self.layer is not None else model, self.layer_name or "", input, call)  # checks input, call
        self.site = site if layer is not None else None
        self.input, self.call = input, call

    def grid(self, tensor: Tensor, what: str = "activation") -> Tensor:
        """The layer's tensor as (B, K, u, v): ``reshape`` applied (tokens on their grid)."""
        if self.reshape is not None:
            tensor = self.reshape(tensor)
        if tensor.dim() != 4:
            hint = "" if self.reshape is not None else "; token-shaped layers (B, N, D) need reshape=tokens -> (B, D, h, w)"
            raise InputError(f"layer {self.layer_name!r} {what} has shape {tuple(tensor.shape)}, expected (B, K, u, v){hint}")
        return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor  # half models: maps in float32

    def _result(self, pre_relu: Tensor, weights: Tensor, scores: Tensor, activation: Tensor, output: Any,
                size: tuple[int, int], many: bool, extra: dict[str, Any] | None = None) -> CAMResult:
        if self.centred:
            pre_relu = pre_relu - pre_relu.mean(dim=(-2, -1), keepdim=True)  # (N, B, u, v)
        raw = F.relu(pre_relu) if self.relu else pre_relu
        result = CAMResult(upsample_and_normalize(raw, size), raw, pre_relu, weights, scores, activation,
                           detach_all(output), extra or {}, many=True)
        return result if many else result[0]

    def _size(self, inputs: Any, size: Any, fallback: tuple[int, ...]) -> tuple[int, int]:
        if size is not None:
            return check_size(size)
        image = find_image(inputs)
        return tuple(image.shape[-2:]) if image is not None else tuple(fallback[-2:])


class GradientMethod(_LayerMethod):
    """The gradient base: a subclass overrides ONE method, ``weights(activation, gradient)``.

    One forward: the part before the layer runs without autograd, a hook swaps the layer's
    tensor for a leaf and switches autograd on; the N targets' gradients at the leaf come
    from :func:`gradients`. ``res.weights`` is the per-channel spatial mean of the gradient.

    Args:
        model: any ``nn.Module``; left exactly as found (hooks, flags, weights, grads).
        layer: dotted module name or the module.
        reshape: for token-shaped layers, ``tokens (B, T, D) -> (B, D, h, w)``.
        relu: apply the ReLU to the combined map.
        input, call: read the layer's first tensor input; its ``call``-th call (0-based).
    """

    uses_gradient: ClassVar[bool] = True
    #: the call accepts ``targets_in_batch=True``
    targets_in_batch_ok: ClassVar[bool] = True

    def __init__(self, model: nn.Module, layer: LayerSpec, *, reshape: Callable[[Tensor], Tensor] | None = None,
                 relu: bool = True, input: bool = False, call: int | None = None) -> None:
        if layer is None:
            raise InputTypeError(f"layer: {type(self).__name__} explains a layer; expected a dotted name or a module, got None")
        super().__init__(model, layer, reshape=reshape, relu=relu, input=input, call=call)

    def weights(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """activation (B, K, u, v), gradient (N, B, K, u, v) -> (N, B, K) or (N, B, K, u, v)."""
        raise NotImplementedError(f"{type(self).__name__} must override weights(activation, gradient)")

    def __call__(self, inputs: Any, targets: Target | Sequence[Target], *, size: tuple[int, int] | None = None,
                 extra_layers: Mapping[str, LayerSpec] | None = None, targets_in_batch: bool = False,
                 targets_per_backward: int | None = None) -> CAMResult:
        """Explain one target, or a list of N targets from one forward pass.

        Args:
            inputs: what ``model(...)`` takes: a tensor, a tuple (positional) or a dict (keywords).
            targets: a target callable ``output -> (B,)`` or a list of them.
            size: (H, W) of ``maps``; default the image's in ``inputs``, else the layer's grid.
            extra_layers: name -> layer whose output gradient is also returned (``res.extra``).
            targets_in_batch: copy the layer's tensor once per target along the batch axis
                (target-major; the caller repeats every later input, e.g. caption tokens) and
                take one ordinary backward: faster after a recurrent decoder on CPU.
            targets_per_backward: at most this many targets per batched backward.
        """
        many, targets = check_targets(targets)
        size = None if size is None else check_size(size)
        if targets_per_backward is not None and (isinstance(targets_per_backward, bool)
                                                 or not isinstance(targets_per_backward, int) or targets_per_backward < 1):
            raise InputError(f"targets_per_backward: expected None or an int >= 1, got {targets_per_backward!r}")
        if torch.is_inference_mode_enabled():
            raise RuntimeError(f"{type(self).__name__} needs autograd: call it outside torch.inference_mode()")
        warn_training(self.model)
        sites = [self.site]
        for name, spec in (extra_layers or {}).items():
            if name == self.layer_name:
                raise InputError(f"extra_layers: name {name!r} is the explained layer's own name")
            sites.append(Site(resolve_layer(self.model, spec), name))
        copies = len(targets) if targets_in_batch else 1
        if copies > 1 and extra_layers:
            raise InputError("extra_layers: not supported together with targets_in_batch=True")
        with kept_buffers(self.model):
            output, leaves = self._forward(inputs, sites, copies)
            rows = leaves[0].shape[0]
            batch = rows // copies
            with torch.enable_grad():
                scores = torch.stack([score_of(t, output if copies == 1 else batch_rows(output, i * batch, (i + 1) * batch, rows),
                                               batch, index=i, grad=True) for i, t in enumerate(targets)])  # (N, B)
                if copies > 1:  # each copy's rows feed only its own target's score
                    grads = [torch.autograd.grad(scores.sum(), leaves[0])[0].unflatten(0, (copies, batch))]
                else:  # samples are independent in eval mode: d sum_b y_nb / dA_b = d y_nb / dA_b
                    grads = gradients(scores.sum(dim=1), leaves, chunk=targets_per_backward)
        for site, g in zip(sites, grads):
            if g is None:
                raise InputError(f"the targets do not depend on layer {site.name!r}: its gradient is None")
            check_finite(g, f"gradient of the target score(s) at layer {site.name!r}")
        if copies > 1:
            output = batch_rows(output, 0, batch, rows)
        layer_act = leaves[0].detach()[:batch]
        activation = self.grid(layer_act)  # (B, K, u, v)
        grad = self.grid(grads[0].flatten(0, 1), "gradient").unflatten(0, (len(targets), -1))  # (N, B, K, u, v)
        with torch.no_grad():
            weights = self.weights(activation, grad).detach()
            pre_relu = combine(weights, activation, who=type(self).__name__)  # (N, B, u, v)
        extra = {s.name: (leaf.detach(), g) for s, leaf, g in zip(sites[1:], leaves[1:], grads[1:])}
        return self._result(pre_relu, grad.mean(dim=(-2, -1)), scores.detach(), activation, output,
                            self._size(inputs, size, activation.shape), many, extra)

    def _forward(self, inputs: Any, sites: list[Site], copies: int) -> tuple[Any, list[Tensor]]:
        """One forward, no graph before the first site; returns the output and one leaf per site."""
        leaves: dict[int, Tensor] = {}

        def take(i: int) -> Callable[[Tensor], Tensor]:
            def fn(tensor: Tensor) -> Tensor:
                if not tensor.is_floating_point():
                    raise InputTypeError(f"layer {sites[i].name!r} tensor has dtype {tensor.dtype}; expected floating point")
                if tensor.requires_grad:  # a later site reached through the first keeps its place in the graph
                    leaves[i] = tensor
                    return tensor.clone()
                if i == 0 and copies > 1:
                    tensor = tensor.repeat(copies, *([1] * (tensor.dim() - 1)))  # (N*B, ...)
                leaves[i] = tensor.detach().requires_grad_(True)
                torch.set_grad_enabled(True)  # the rest of the forward builds the graph
                return leaves[i].clone()  # in-place ops after the layer (ReLU(inplace=True)) must not touch the leaf
            return fn

        grad_was = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(False)
            with contextlib.ExitStack() as stack:
                for i, site in enumerate(sites):
                    stack.enter_context(site.hooked(take(i)))
                output = call_model(self.model, inputs)
        finally:
            torch.set_grad_enabled(grad_was)
        check_finite(leaves[0].detach(), f"layer {sites[0].name!r} activation")
        return output, [leaves[i] for i in range(len(sites))]


@dataclass
class Run:
    """What a perturbation method's ``weights`` reads besides the activation.

    Attributes:
        inputs: the model inputs of this call.
        targets: the N explained targets.
        scores: (N, B) each target's score on the unmodified inputs.
        output: the model's output on the unmodified inputs.
        raw: the layer's own tensor (B, K, u, v) or (B, T, D), before ``reshape``.
    """

    inputs: Any
    targets: list[Target]
    scores: Tensor
    output: Any
    raw: Tensor | None


class PerturbationMethod(_LayerMethod):
    """The perturbation base: forward passes only; ``weights(activation, run)`` from perturbed copies.

    The clean forward reads the layer (a detached copy) and every target's score;
    ``copy_scores`` scores copies of the batch, ``batch_size`` rows per forward (copy-major:
    rows j*B..(j+1)*B are copy j, every other batched input repeated with them);
    ``zero_channels`` runs a forward with one channel of the layer zeroed per copy. A method
    that is not a channel weighting (Occlusion) overrides ``map`` instead of ``weights``.
    ``res.weights`` is the method's own channel weights.

    Args:
        model, layer, reshape, relu, input, call: as for :class:`GradientMethod` (``layer`` may be
            None for a method that reads only the image).
        batch_size: perturbed inputs per forward pass (``batch_size // B`` copies of the batch).
    """

    uses_gradient: ClassVar[bool] = False

    def __init__(self, model: nn.Module, layer: LayerSpec | None, *, batch_size: int = 32, **options: Any) -> None:
        super().__init__(model, layer, **options)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size: expected a positive int (perturbed inputs per forward pass), got {batch_size!r}")
        self.batch_size = batch_size

    def weights(self, activation: Tensor, run: Run) -> Tensor:
        """activation (B, K, u, v) -> (N, B, K) or (N, B, K, u, v)."""
        raise NotImplementedError(f"{type(self).__name__} must override weights(activation, run)")

    def map(self, activation: Tensor, run: Run) -> tuple[Tensor, Tensor]:
        """(pre-ReLU map (N, B, u, v), channel weights (N, B, K)): ``weights`` combined with the activation."""
        weights = self.weights(activation, run)
        return combine(weights, activation, who=type(self).__name__), weights if weights.dim() == 3 else weights.mean(dim=(-2, -1))

    def __call__(self, inputs: Any, targets: Target | Sequence[Target], *, size: tuple[int, int] | None = None) -> CAMResult:
        """Explain one target, or a list of N targets on the same forwards (see the class docstring)."""
        many, targets = check_targets(targets)
        size = None if size is None else check_size(size)
        warn_training(self.model)
        with kept_buffers(self.model), torch.no_grad():
            raw: list[Tensor] = []
            if self.site is None:
                output = call_model(self.model, inputs)
            else:
                with self.site.hooked(lambda t: raw.append(t.detach().clone())):
                    output = call_model(self.model, inputs)
                check_finite(raw[0], f"layer {self.layer_name!r} activation")
            image = find_image(inputs)
            if image is None and not raw:
                raise InputError(f"inputs: {type(self).__name__} perturbs the image and found no floating "
                                 "(B, C, H, W) tensor in the inputs")
            activation = self.grid(raw[0]) if raw else image.detach()  # (B, K, u, v): the grid knows the batch
            batch = activation.shape[0]
            scores = torch.stack([score_of(t, output, batch, index=i) for i, t in enumerate(targets)])  # (N, B)
            run = Run(inputs, targets, scores, output, raw[0] if raw else None)
            pre_relu, weights = self.map(activation, run)
        return self._result(pre_relu, weights, scores, activation, output, self._size(inputs, size, pre_relu.shape), many)

    def copy_scores(self, run: Run, count: int, build: Callable[[Tensor], Any]) -> Tensor:
        """(N, count, B) every target's score on ``count`` copies; ``build(index (r,)) -> output`` runs copies ``index``."""
        batch = run.scores.shape[1]
        per = max(1, self.batch_size // batch)
        chunks = []
        for start in range(0, count, per):
            index = torch.arange(start, min(start + per, count))  # (r,)
            output, rows = build(index), len(index) * batch
            chunks.append(torch.stack([torch.stack([score_of(t, batch_rows(output, j * batch, (j + 1) * batch, rows), batch, index=i)
                                                    for j in range(len(index))]) for i, t in enumerate(run.targets)]))
        return torch.cat(chunks, dim=1)  # (N, count, B)

    def repeated(self, run: Run, copies: int) -> Any:
        """The inputs with every batched tensor repeated ``copies`` times (copy-major)."""
        return repeat_rows(run.inputs, copies, run.scores.shape[1])

    def zero_channels(self, run: Run, index: Tensor, *, reuse: bool = False) -> Any:
        """One forward of copies ``index`` with channel index[j] of the layer's tensor zeroed in copy j.

        The channel axis of the layer's own tensor is 1 for (B, K, u, v) and -1 for tokens
        (B, T, D). The copies are the repeated inputs; they sit on whichever axis of the
        layer's tensor grew r-fold (the batch axis; the token axis when a model packs several
        images' tokens into one row). ``reuse``: run the B inputs once and make the copies at
        the layer (valid when nothing after the layer reads earlier tensors).
        """
        clean, r = run.raw, len(index)
        axis = 1 if clean.dim() == 4 else -1

        def edit(tensor: Tensor) -> Tensor:
            if reuse and tensor.shape == clean.shape:
                tensor = tensor.repeat(r, *([1] * (tensor.dim() - 1)))  # (r*B, ...)
            grown = [a for a in range(tensor.dim()) if tensor.shape[a] == r * clean.shape[a]
                     and tensor.shape[:a] + tensor.shape[a + 1:] == clean.shape[:a] + clean.shape[a + 1:]]
            if not grown:
                raise InputError(f"layer {self.layer_name!r}: its tensor has shape {tuple(tensor.shape)} for {r} "
                                 f"copies of a batch whose tensor is {tuple(clean.shape)}; no axis holds the copies")
            at = grown[0]
            out = tensor.clone().unflatten(at, (r, clean.shape[at])).movedim(at, 0)  # (r, *clean.shape)
            for j, k in enumerate(index.tolist()):
                out[j].select(axis, k).zero_()
            return out.movedim(0, at).flatten(at, at + 1)

        with self.site.hooked(edit):
            return call_model(self.model, run.inputs if reuse else self.repeated(run, r))
