"""Maps read inside the language model of an LLM-based VLM (LLaVA, Qwen2-VL, ...): the image tokens' view.

An LLM-based VLM puts M image tokens into its language model's sequence; a word's map is
a value per image token, laid on the grid the M tokens cover. :class:`LMView` finds what
these methods read, from transformers' own accessors (no class names): the LM head
(``get_output_embeddings()``), the decoder (``get_decoder()``, else ``language_model``), its
layer list and final norm, and the image token id (``config.image_token_id`` /
``image_token_index``). :func:`image_grid` finds where the image tokens sit
(``input_ids == image token``) and the (h, w) grid they lie on, in order.

Four methods, each ``Method(model, reshape=...)(inputs, targets, size=...) -> CAMResult``,
all targets (words) from one forward (plus one batched backward for the gradient ones):

- :class:`LMAttention` (``"attention"``): attention probability from the position that
  predicts the word (its logit row) to each image token, mean over heads and layers.
- :class:`TokenActivationMap` (``"tam"``): Token Activation Map (Li et al., ICCV 2025,
  arXiv 2506.23270): the image tokens' last hidden states read through the LM head.
- :class:`LMGradCAM` (``"lm-gradcam"``): the engine's Grad-CAM on an LM decoder layer's
  hidden states at the image positions ("LLaVA-CAM").
- :class:`GradientXInput` (``"gradxinput"``): gradient x input on the LM's input at the
  image positions, summed over channels.

``model`` is the transformers model or any module around it (an adapter's ``model``);
``reshape`` is the adapter's grid (``adapter.reshape_for(pixels)``, a ``TokenGrid``) or None.
Targets are ``SequenceLogProb`` (a word: its tokens and logit rows), optionally wrapped in
``Counterfactual``; ``logits_to_keep`` in the inputs is honoured (rows count from the end).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..targets import Counterfactual, SequenceLogProb
from .attention_record import AttentionRecorder
from .base import CAMResult, call_model, check_targets, module_name, upsample_and_normalize
from .gradcam import GradCAM
from .tower import into_tower
from .variants import HiResCAM
from ..errors import InputError, InputTypeError

__all__ = ["LMView", "lm_view", "image_grid", "logit_rows", "ImageTokens", "rank_gaussian_filter",
           "LMAttention", "TokenActivationMap", "LMGradCAM", "GradientXInput"]


@dataclass
class LMView:
    """The parts of an LLM-based VLM that the LM methods read.

    Attributes:
        model: the module the methods were given (hooked and called as it is).
        top: the transformers model with the LM head.
        decoder: the language model (its ``layers`` and final ``norm``).
        layers: the decoder layers, in order.
        norm: the final norm (its output is what the LM head reads).
        head: the LM head (``get_output_embeddings()``).
        image_token: the id that marks an image token in ``input_ids``.
    """

    model: nn.Module
    top: nn.Module
    decoder: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    head: nn.Module
    image_token: int

    @property
    def decoder_name(self) -> str:
        return module_name(self.model, self.decoder)


def lm_view(model: nn.Module) -> LMView:
    """Discover the :class:`LMView` of ``model`` (a transformers VLM, or a module around one).

    Raises:
        TypeError: no transformers model with an LM head, decoder layers, final norm and image token id.
    """
    from transformers import PreTrainedModel

    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    top = next((m for m in model.modules() if isinstance(m, PreTrainedModel) and m.get_output_embeddings() is not None),
               None)
    if top is None:
        raise InputTypeError(f"model: {type(model).__name__} holds no language model head (get_output_embeddings()); "
                        "the LM methods explain LLM-based VLMs")
    decoder = top.get_decoder() if hasattr(top, "get_decoder") else None
    if decoder is None or decoder is top:
        decoder = getattr(getattr(top, "model", top), "language_model", None)
    lists = [m for m in (decoder.children() if decoder is not None else ()) if isinstance(m, nn.ModuleList)]
    norm = None if decoder is None else next(
        (getattr(decoder, n) for n in ("norm", "final_layernorm", "ln_f", "final_layer_norm") if hasattr(decoder, n)), None)
    config = top.config
    token = getattr(config, "image_token_id", None)
    token = getattr(config, "image_token_index", None) if token is None else token
    missing = [what for what, part in (("a decoder (get_decoder() or language_model)", decoder),
                                       ("decoder layers", lists or None), ("a final norm", norm),
                                       ("config.image_token_id", token)) if part is None]
    if missing:
        raise InputTypeError(f"model: {type(top).__name__} has no {missing[0]}; the LM methods explain LLM-based VLMs "
                        "(image tokens inside a language model's sequence)")
    return LMView(model, top, decoder, max(lists, key=len), norm, top.get_output_embeddings(), int(token))


def image_grid(input_ids: Tensor, image_token: int, reshape: Any = None) -> tuple[Tensor, tuple[int, int]]:
    """Where the image tokens sit and the grid they cover: ``(M,)`` positions in grid order, and ``(h, w)``.

    The image tokens ``input_ids == image_token`` (the same M positions in every sample) are
    laid row-major on the grid of ``reshape``'s level with ``h * w == M`` (LLaVA's patch
    grid without CLS, Qwen2-VL's merged grid); else, when ``reshape`` has a level of exactly
    M tokens (LLaVA's ``"full"`` strategy, CLS first), in that level's order; without a
    ``reshape`` that has levels, on a square grid when M is a square. Tiled images
    (Idefics3) and query tokens (BLIP-2) fit no grid: an error.

    Raises:
        ValueError: no image token, samples that differ, or no grid of M cells.
    """
    if input_ids.dim() != 2:
        raise InputError(f"input_ids: expected (B, L), got {tuple(input_ids.shape)}")
    marks = input_ids == image_token  # (B, L)
    if not bool(marks[0].any()):
        raise InputError(f"input_ids: no image token (id {image_token}) in the sequence")
    if not bool((marks == marks[:1]).all()):
        raise InputError("input_ids: the image tokens sit at different positions in the samples; explain one at a time")
    positions = marks[0].nonzero()[:, 0]  # (M,)
    count = positions.numel()
    levels = getattr(reshape, "levels", None) or {}
    for _, (h, w) in levels.values():
        if h * w == count:
            return positions, (h, w)
    if count in levels:
        order, grid = levels[count]
        return positions[order.to(positions.device)], grid
    side = math.isqrt(count)
    if not levels and side * side == count:
        return positions, (side, side)
    raise InputError(f"reshape: no grid of {count} cells for the {count} image tokens (got {reshape!r}); the LM "
                     "methods lay out one image's tokens on one patch grid (no tiles, no query tokens)")


class ImageTokens:
    """``reshape=`` for an LM layer: ``(..., L, D) -> (..., D, h, w)``, the image positions in grid order."""

    def __init__(self, positions: Tensor, grid: tuple[int, int]) -> None:
        self.positions, self.grid = positions, grid

    def __call__(self, tokens: Tensor) -> Tensor:
        picked = tokens.index_select(-2, self.positions.to(tokens.device))  # (..., M, D)
        return picked.transpose(-1, -2).unflatten(-1, self.grid)

    def __repr__(self) -> str:
        return f"ImageTokens({self.positions.numel()} image tokens -> {self.grid[0]}x{self.grid[1]})"


def _check_filter(kernel: Any, sigma: Any) -> None:
    """InputError naming ``kernel`` (an odd int >= 1) or ``sigma`` (None or a finite number > 0)."""
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise InputError(f"kernel: expected an odd int >= 1, got {kernel!r}")
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float))
                              or not math.isfinite(sigma) or sigma <= 0):
        raise InputError(f"sigma: expected None or a finite number > 0, got {sigma!r}")


def rank_gaussian_filter(maps: Tensor, *, kernel: int = 3, sigma: float | None = None) -> Tensor:
    """Rank Gaussian filter: each cell becomes a Gaussian-weighted mean of its ``kernel x kernel``
    neighbourhood's values *sorted*, the weights a Gaussian over the rank centred on the median.

    ``sigma`` (in ranks): ``None`` (default) takes each window's coefficient of variation
    (std / mean of its values), as TAM's authors do: a flat window gives its median, a window
    with a peak nearly its mean, so a lone peak is softened, not erased; a window whose mean
    is <= 0 gives 0 (the maps are expected >= 0). A number fixes it (robust like a median).
    ``(..., h, w)`` -> the same shape; borders are reflected (replicated on a 1-cell side).
    """
    _check_filter(kernel, sigma)
    if kernel == 1:
        return maps
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    pad = kernel // 2
    padded = F.pad(maps.reshape(-1, 1, h, w), (pad,) * 4, mode="reflect" if min(h, w) > pad else "replicate")
    windows = F.unfold(padded, kernel).sort(dim=1).values  # (n, k*k, h*w), each window sorted
    ranks = (torch.arange(kernel * kernel, dtype=maps.dtype, device=maps.device) - kernel * kernel // 2)[:, None]
    if sigma is None:
        mean = windows.mean(dim=1, keepdim=True)  # (n, 1, h*w)
        spread = windows.std(dim=1, correction=0, keepdim=True) / mean.clamp(min=1e-12)
        weights = torch.exp(-ranks ** 2 / (2 * spread.clamp(min=1e-6) ** 2))  # (n, k*k, h*w)
    else:
        weights = torch.exp(-ranks ** 2 / (2 * sigma ** 2))[None]  # (1, k*k, 1)
    out = (windows * weights).sum(dim=1) / weights.sum(dim=1)  # (n, h*w)
    if sigma is None:
        out = torch.where(mean[:, 0] > 0, out, torch.zeros_like(out))
    return out.reshape(*lead, h, w)


# ---------------------------------------------------------------- shared plumbing


def _word(target: Any) -> tuple[SequenceLogProb, float]:
    """The word a target scores (its ``SequenceLogProb``) and its sign (-1 for a counterfactual)."""
    sign = 1.0
    while isinstance(target, Counterfactual):
        target, sign = target.target, -sign
    if not isinstance(target, SequenceLogProb):
        raise InputTypeError(f"targets: the LM methods read a word's tokens and logit rows (SequenceLogProb, or its "
                        f"Counterfactual), got {type(target).__name__}")
    return target, sign


def logit_rows(inputs: Mapping[str, Any], length: int, positions: Sequence[int]) -> list[int]:
    """Absolute sequence positions of logit rows (``logits_to_keep = k``: rows are the last k positions)."""
    keep = inputs.get("logits_to_keep")
    if isinstance(keep, int) and keep > 0:
        return [length - keep + (p % keep) for p in positions]
    return [p % length for p in positions]


def _check_inputs(inputs: Any) -> dict[str, Any]:
    if not isinstance(inputs, Mapping) or not isinstance(inputs.get("input_ids"), Tensor):
        raise InputTypeError("inputs: the LM methods take the model's keyword inputs (a dict with input_ids)")
    return dict(inputs)


def _result(pre_relu: Tensor, scores: Tensor, activations: Tensor, output: Any, size: Any, many: bool) -> CAMResult:
    """A CAMResult from per-target maps ``(N, B, h, w)`` and scores ``(N, B)``."""
    size = tuple(pre_relu.shape[-2:]) if size is None else tuple(size)
    raw = F.relu(pre_relu)
    maps = upsample_and_normalize(raw, size)
    weights = pre_relu.new_zeros(*pre_relu.shape[:2], 0)
    res = CAMResult(maps, raw, pre_relu, weights, scores, activations, output, many=True)
    return res if many else res[0]


def lm_and_tower(records: list[Any], model: nn.Module, view: LMView) -> tuple[list[Any], list[Any]]:
    """Recorded attention layers split into the LM's (under ``view.decoder_name``) and the vision tower's
    that feed it (those after the layer the LM reads are dropped, :func:`read_tower_layers`), in run order."""
    inside = view.decoder_name + "."
    lm = [r for r in records if r.name.startswith(inside)]
    return lm, [r for r in records if not r.name.startswith(inside)][:read_tower_layers(model)]


def read_tower_layers(model: nn.Module) -> int | None:
    """The end of the slice of vision-tower layers (in run order) whose output the LM reads; ``None``: all.

    LLaVA-style configs read ``hidden_states[vision_feature_layer]``: -2 gives -1 (the last layer is unused).
    """
    configs = (getattr(m, "config", None) for m in model.modules())  # the model may be wrapped
    layer = next((c.vision_feature_layer for c in configs if hasattr(c, "vision_feature_layer")), None)
    if not isinstance(layer, int) or layer == -1:
        return None
    return layer + 1 if layer < 0 else layer


class _LMMethod:
    """``Method(model, reshape=None)``: the LM view of ``model`` and the adapter's grid."""

    uses_gradient = False

    def __init__(self, model: nn.Module, *, reshape: Any = None) -> None:
        self.view = lm_view(model)
        self.model = model
        self.reshape = reshape

    def _place(self, inputs: dict[str, Any]) -> tuple[Tensor, tuple[int, int]]:
        return image_grid(inputs["input_ids"], self.view.image_token, self.reshape)


# ---------------------------------------------------------------- forward-only maps


class LMAttention(_LMMethod):
    """Attention from the position that predicts a word to the image tokens (one forward).

    map(word)[i] = mean over the word's tokens, the heads and the chosen layers of
    A_l[h, q, image token i], where q is the logit row's position (the token *before* the
    word: its query attends while the word is predicted). Probabilities are recorded
    through transformers' attention interface (``AttentionRecorder``, the LM's layers only).

    With ``vision=True`` the image-token map is continued into the vision tower by attention
    rollout (``mmexplain.methods.tower``: R = I, R += A R over the tower layers whose output
    the LM reads, A the head-mean attention), giving a map on the finer patch grid.

    Args:
        layers: which LM layers to average: ``"all"`` (default), ``"last-half"``, or a list of indices.
        vision: continue into the vision tower (default False: the map stops at the image tokens).

    A counterfactual target gets a zero map (attention has no sign). Departures: none (raw
    attention, no gradient weighting; see ``relevancy`` for that).

    Example:
        >>> import mmexplain as mx
        >>> vlm = mx.hf.adapter(llava, processor)                              # doctest: +SKIP
        >>> ex = mx.explain_caption(vlm, "cat.jpg", method="attention")  # (T, H, W) word maps  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, *, reshape: Any = None, layers: str | Sequence[int] = "all",
                 vision: bool = False) -> None:
        super().__init__(model, reshape=reshape)
        if not isinstance(vision, bool):
            raise InputTypeError(f"vision: expected True or False, got {type(vision).__name__}")
        self.vision = vision
        count = len(self.view.layers)
        if layers == "all":
            self.chosen = list(range(count))
        elif layers == "last-half":
            self.chosen = list(range(count // 2, count))
        elif isinstance(layers, (list, tuple)) and layers and all(isinstance(k, int) and -count <= k < count for k in layers):
            self.chosen = [k % count for k in layers]
        else:
            raise InputError(f"layers: expected 'all', 'last-half' or a list of indices in [-{count}, {count}), got {layers!r}")

    def __call__(self, inputs: Any, targets: Any, *, size: tuple[int, int] | None = None) -> CAMResult:
        inputs = _check_inputs(inputs)
        many, targets = check_targets(targets)
        positions, grid = self._place(inputs)
        recorder = AttentionRecorder(self.model, within=None if self.vision else self.view.decoder_name)
        with recorder.recording() as records:
            output = call_model(self.model, inputs)
        records, tower = lm_and_tower(records, self.model, self.view)
        if self.vision and not tower:
            raise InputError(f"model: no attention layer of {type(self.model).__name__}'s vision tower ran; "
                             "pass vision=False")
        if len(records) != len(self.view.layers):
            raise InputError(f"model: recorded {len(records)} attention layers in the LM, expected {len(self.view.layers)}")
        probs = torch.stack([records[k].probs.detach() for k in self.chosen]).float()  # (layers, B, heads, L, L)
        mean = probs.mean(dim=(0, 2))[..., positions]  # (B, L, M)
        length = inputs["input_ids"].shape[1]
        maps, scores = [], []
        with torch.no_grad():
            for target in targets:
                word, sign = _word(target)
                rows = logit_rows(inputs, length, word.positions)
                per = mean[:, rows].mean(dim=1)  # (B, M)
                maps.append(per if sign > 0 else torch.zeros_like(per))
                scores.append(target(output).detach().float())
        pre = torch.stack(maps).unflatten(-1, grid)  # (N, B, h, w)
        if self.vision:  # (N, B, hp, wp) on the patch grid
            pre = into_tower(pre, [r.probs.detach().float().mean(dim=1)[None] for r in tower], self.reshape)
        return _result(pre, torch.stack(scores), pre.new_zeros(pre.shape[1], 0, *pre.shape[-2:]), output, size,
                       many)


class TokenActivationMap(_LMMethod):
    """Token Activation Map (Li et al., "Token Activation Map to Visually Explain Multimodal LLMs", ICCV 2025).

    One forward; ``Z = head(norm(h_L))`` read at every position (the logit lens of the last
    layer, only the columns of the needed token ids when the head is a linear layer):

    1. the word's map: ``a[i] = mean_k Z[image token i, c_k]`` over the word's token ids c_k;
    2. interference of the earlier text: every non-image position j before the word (the
       prompt and the earlier words, up to the row that predicts it) has its own map
       ``a_j[i] = Z[i, x_j]`` (x_j its token id), weighted by how much j activates the
       word's class, ``w_j = ReLU(mean_k Z[j, c_k])`` (normalised to sum 1):
       ``I = sum_j w_j a_j``;
    3. removal: ``a - s I`` with ``s = max(0, <a, I> / <I, I>)``, the least-squares scale
       (no interference, I = 0, removes nothing);
    4. ``denoise``: the map scaled to [0, 1] (min-max, as ``upsample_and_normalize``), then
       the rank Gaussian filter (:func:`rank_gaussian_filter`; sigma per window from its
       coefficient of variation, as the paper's code does, or fixed by ``sigma``) on the grid.

    A counterfactual target negates the map (before the scaling). Departures from the paper:
    the scale is the closed-form least-squares fit (clamped at 0) rather than a searched one;
    the map is scaled to [0, 1] over the image tokens alone (the paper scales image and text
    scores together); a multi-token word averages its tokens' maps.

    Example:
        >>> import mmexplain as mx
        >>> vlm = mx.hf.adapter(llava, processor)                              # doctest: +SKIP
        >>> ex = mx.explain_caption(vlm, "cat.jpg", method="tam")  # (T, H, W) word maps  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, *, reshape: Any = None, denoise: bool = True, kernel: int = 3,
                 sigma: float | None = None) -> None:
        super().__init__(model, reshape=reshape)
        _check_filter(kernel, sigma)
        self.denoise, self.kernel, self.sigma = denoise, kernel, sigma

    def _lens(self, hidden: Tensor, ids: Tensor) -> Tensor:
        """(B, L, D) final hidden states -> (B, L, len(ids)) logits of those token ids."""
        head = self.view.head
        if isinstance(head, nn.Linear):
            return F.linear(hidden, head.weight[ids], None if head.bias is None else head.bias[ids])
        return head(hidden)[..., ids]

    def __call__(self, inputs: Any, targets: Any, *, size: tuple[int, int] | None = None) -> CAMResult:
        inputs = _check_inputs(inputs)
        many, targets = check_targets(targets)
        positions, grid = self._place(inputs)
        seen: list[Tensor] = []
        handle = self.view.norm.register_forward_hook(lambda m, a, out: seen.append(out))
        try:
            with torch.no_grad():
                output = call_model(self.model, inputs)
        finally:
            handle.remove()
        hidden = seen[-1].float()  # (B, L, D) after the final norm
        ids = inputs["input_ids"]
        batch, length = ids.shape
        image = torch.zeros(length, dtype=torch.bool, device=ids.device)
        image[positions] = True
        maps, scores = [], []
        with torch.no_grad():
            for target in targets:
                word, sign = _word(target)
                rows = logit_rows(inputs, length, word.positions)
                own = self._lens(hidden, word.tokens.to(ids.device).reshape(-1)[: len(rows)]).mean(-1)  # (B, L)
                a = own[:, positions]  # (B, M)
                context = (~image).nonzero()[:, 0]
                context = context[context <= min(rows)]  # text before the word
                pre = []
                for b in range(batch):
                    ctx = context
                    weight = F.relu(own[b, ctx])  # (J,)
                    each = self._lens(hidden[b, positions], ids[b, ctx])  # (M, J): a_j on the image tokens
                    inter = each @ (weight / weight.sum()) if float(weight.sum()) > 0 else torch.zeros_like(a[b])
                    denom = float(inter @ inter)
                    scale = max(0.0, float(a[b] @ inter) / denom) if denom > 0 else 0.0
                    pre.append(a[b] - scale * inter)
                m = sign * torch.stack(pre).unflatten(-1, grid)  # (B, h, w)
                scaled = upsample_and_normalize(m, m.shape[-2:])  # min-max to [0, 1], no resizing
                maps.append(rank_gaussian_filter(scaled, kernel=self.kernel, sigma=self.sigma) if self.denoise else m)
                scores.append(target(output).detach().float())
        activations = ImageTokens(positions, grid)(hidden).detach()  # (B, D, h, w)
        return _result(torch.stack(maps), torch.stack(scores), activations, output, size, many)


# ---------------------------------------------------------------- gradient maps (the engine)


class LMGradCAM(_LMMethod):
    """Grad-CAM on an LM decoder layer's output at the image positions, laid on the grid ("LLaVA-CAM").

    The engine's :class:`GradCAM` (one forward, one batched backward over all targets) with
    ``layer`` = decoder layer ``layer`` and ``reshape`` = the image positions in grid order.
    Default layer: the middle one, ``len(layers) // 2`` — the last layer's output at an
    image position reaches no word's logit (its gradient there is zero), and the layers
    in the middle carry the image tokens' content read by the words' positions.
    Departures from Grad-CAM: none in the formula (alpha_d = mean over the image tokens).

    Example:
        >>> import mmexplain as mx
        >>> vlm = mx.hf.adapter(llava, processor)                              # doctest: +SKIP
        >>> ex = mx.explain_caption(vlm, "cat.jpg", method="lm-gradcam")  # (T, H, W) word maps  # doctest: +SKIP
    """

    uses_gradient = True

    def __init__(self, model: nn.Module, *, reshape: Any = None, layer: int | None = None) -> None:
        super().__init__(model, reshape=reshape)
        count = len(self.view.layers)
        layer = count // 2 if layer is None else layer
        if isinstance(layer, bool) or not isinstance(layer, int) or not -count <= layer < count:
            raise InputError(f"layer: expected an LM layer index in [-{count}, {count}), got {layer!r}")
        self.layer = layer % count

    def _engine(self, positions: Tensor, grid: tuple[int, int]) -> GradCAM:
        return GradCAM(self.model, self.view.layers[self.layer], reshape=ImageTokens(positions, grid))

    def __call__(self, inputs: Any, targets: Any, *, size: tuple[int, int] | None = None, **options: Any) -> CAMResult:
        inputs = _check_inputs(inputs)
        return self._engine(*self._place(inputs))(inputs, targets, size=size, **options)


class GradientXInput(LMGradCAM):
    """Gradient x input on the LM's input at the image positions, summed over channels.

    ``pre_relu[i] = sum_d dy/dx_{i,d} * x_{i,d}``, x the first decoder layer's input (the
    image-token embeddings the LM reads: the projector's output, placed in the sequence),
    signed; ``raw`` / ``maps`` are its ReLU, upsampled and normalised as every map. It is
    the engine's HiResCAM on that input (element-wise gradient weights, one batched backward).
    Departures: none (the classic gradient x input, restricted to the image tokens).

    Example:
        >>> import mmexplain as mx
        >>> vlm = mx.hf.adapter(llava, processor)                              # doctest: +SKIP
        >>> ex = mx.explain_caption(vlm, "cat.jpg", method="gradxinput")  # (T, H, W) word maps  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, *, reshape: Any = None) -> None:
        super().__init__(model, reshape=reshape, layer=0)

    def _engine(self, positions: Tensor, grid: tuple[int, int]) -> GradCAM:
        return HiResCAM(self.model, self.view.layers[0], reshape=ImageTokens(positions, grid), input=True)
