"""Thin modules around a transformers model that call its own ``forward`` and change nothing in it.

``BlipForQuestionAnswering.forward`` returns no answer logits, so :class:`DecoderLogits`
hands back its answer decoder's output; ViLT shuffles its image tokens at random
(``visual_embed`` samples them with ``torch.multinomial``), so :class:`ViltPatchOrder`
embeds the image itself and passes the tokens in row-major patch order through
ViLT's documented ``image_embeds=`` input. Neither keeps anything between calls.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...errors import InputError, InputTypeError

__all__ = ["DecoderLogits", "ViltPatchOrder"]


class ModelWrapper(nn.Module):
    """A module around ``self.model`` whose training flag is the wrapped model's, always."""

    model: nn.Module

    @property
    def training(self) -> bool:  # type: ignore[override]
        model = self._modules.get("model")
        return bool(model.training) if model is not None else False

    @training.setter
    def training(self, mode: bool) -> None:
        pass  # nn.Module.train() sets the children, so the wrapped model carries the flag


class DecoderLogits(ModelWrapper):
    """Run ``model(**inputs)`` unchanged and return the output of one of its submodules.

    ``BlipForQuestionAnswering.forward`` computes the answer decoder's logits but does
    not return them; this wrapper hooks ``model.<submodule>`` for the duration of the
    call (removed in ``finally``) and returns that submodule's output (which has
    ``.logits``), so ``mx.targets`` can read the answer tokens' log-probabilities.

    Args:
        model: the wrapped model (a child module named ``model``).
        submodule: dotted name of the submodule whose output is returned.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
        >>> DecoderLogits(net, "0")(input=torch.ones(1, 2)).shape
        torch.Size([1, 3])
    """

    def __init__(self, model: nn.Module, submodule: str) -> None:
        super().__init__()
        self.model = model
        self.submodule = submodule
        model.get_submodule(submodule)  # fail early on a wrong name

    def forward(self, **inputs: Any) -> Any:
        captured: list[Any] = []
        handle = self.model.get_submodule(self.submodule).register_forward_hook(
            lambda module, args, output: captured.append(output))
        try:
            self.model(**inputs)
        finally:
            handle.remove()
        if not captured:
            raise InputError(f"submodule {self.submodule!r} did not run in the forward pass")
        return captured[-1]


class ViltPatchOrder(ModelWrapper):
    """``ViltForQuestionAnswering`` with its image tokens in row-major patch order.

    ViLT's ``visual_embed`` returns the patch tokens in a random order
    (``torch.multinomial``), so the joint sequence ``[text, image CLS, patches]`` has no
    readable grid. This wrapper calls the model's own ``vilt.embeddings.visual_embed``
    (which also gives each token's patch index), sorts the patch tokens row-major, and
    runs the unmodified model with ``image_embeds=`` (its documented input). Attention
    is permutation-equivariant and the position embeddings are already added, so the
    output is the model's; only the order of the image tokens is fixed. The grid is
    the patch convolution's output on the pixels (``mx.adapters.grids.conv_grid``),
    computed per call by the adapter; nothing is kept here.

    Args:
        model: a ``ViltForQuestionAnswering`` (or any ``Vilt*`` model whose ``vilt``
            attribute is a ``ViltModel``); a child module named ``model``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model, "vilt"):
            raise InputTypeError(f"model: expected a ViLT model with a .vilt ViltModel, got {type(model).__name__}")
        self.model = model

    def forward(self, pixel_values: Tensor, input_ids: Tensor, *, pixel_mask: Tensor | None = None,
                **text_inputs: Any) -> Any:
        batch, _, height, width = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = torch.ones(batch, height, width, dtype=torch.long, device=pixel_values.device)
        embeddings = self.model.vilt.embeddings
        tokens, token_mask, (patch_index, (gh, gw)) = embeddings.visual_embed(
            pixel_values, pixel_mask, max_image_length=self.model.config.max_image_length)
        # tokens (B, 1+M, D) [image CLS, M patches]; patch_index (B, M, 2) (row, col)
        flat = patch_index[..., 0] * gw + patch_index[..., 1]  # (B, M)
        order = flat.argsort(dim=1)  # (B, M)
        full = torch.arange(gh * gw, device=flat.device).expand(batch, -1)
        if flat.shape[1] != gh * gw or not torch.equal(flat.gather(1, order), full):
            raise InputError(
                f"ViLT selected {flat.shape[1]} of {gh}x{gw} patches (padding in pixel_mask, or "
                f"config.max_image_length={self.model.config.max_image_length} < {gh * gw}); explain one "
                "unpadded image and set config.max_image_length = -1"
            )
        patches = tokens[:, 1:].gather(1, order[..., None].expand(-1, -1, tokens.shape[-1]))  # (B, N, D)
        image_embeds = torch.cat([tokens[:, :1], patches], dim=1)  # (B, 1+N, D)
        return self.model(input_ids=input_ids, image_embeds=image_embeds, pixel_mask=token_mask, **text_inputs)
