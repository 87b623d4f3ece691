"""Continuing an image-token map of an LLM-based VLM down into its vision tower's self-attention.

The LM sees ``M`` image tokens on an ``(h, w)`` grid; the tower before it has ``V`` vision
tokens on a finer ``(hp, wp)`` patch grid (Qwen2-VL merges 2 x 2 patches into one image
token; LLaVA keeps one token per patch). A map ``u`` over the image tokens is spread back
over the vision tokens through the tower's attention:

* every vision token takes the value of the image token whose cell covers it;
* the tower's layers are combined in run order, ``R = I``, ``R += A R`` (Chefer et al.'s
  self-attention rule; with the plain head-mean attention as ``A`` this is attention
  rollout, Abnar & Zuidema 2020, up to a constant factor);
* the map is ``u R`` laid on the patch grid.

Example:
    >>> import torch
    >>> from mmexplain.methods.tower import self_attention_rule
    >>> self_attention_rule([torch.zeros(1, 1, 2, 2)])[0, 0]
    tensor([[1., 0.],
            [0., 1.]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["self_attention_rule", "into_tower"]


def self_attention_rule(cams: Sequence[Tensor]) -> Tensor:
    """``R = I``, then ``R += A R`` for each ``A`` (N, B, V, V) in run order: the combined (N, B, V, V)."""
    first = cams[0]
    n, b, v = first.shape[0], first.shape[1], first.shape[-1]
    r = torch.eye(v, dtype=first.dtype, device=first.device).expand(n, b, v, v)
    for cam in cams:
        r = r + cam @ r
    return r


def into_tower(raw: Tensor, cams: Sequence[Tensor], reshape: Any) -> Tensor:
    """Image-token map (N, B, h, w) continued through the tower's per-layer attention ``cams``: (N, B, hp, wp).

    ``cams``: each layer's (N or 1, B, V, V) attention matrix (one image per sample: keys =
    queries = the V vision tokens), in run order. ``reshape``'s grid level of V tokens gives
    their order on the (hp, wp) patch grid. The errors name ``vision=False``, the argument of
    the methods that turns the continuation off.
    """
    length = cams[0].shape[-1]
    levels = getattr(reshape, "levels", None) or {}
    if length not in levels or any(c.shape[-2:] != (length, length) for c in cams):
        raise InputError(f"reshape: the vision tower's attention covers {length} tokens and no grid level of "
                         f"{length} tokens places them ({sorted(levels)}); pass vision=False")
    order, (hp, wp) = levels[length]
    n, b, h, w = raw.shape
    if hp % h or wp % w:
        raise InputError(f"reshape: the {h}x{w} image-token grid does not divide the {hp}x{wp} patch grid; "
                         "pass vision=False")
    cells = raw.repeat_interleave(hp // h, dim=-2).repeat_interleave(wp // w, dim=-1)  # (N, B, hp, wp)
    order = order.to(raw.device)
    tokens = raw.new_zeros(n, b, length)
    tokens[..., order] = cells.flatten(-2)  # (N, B, V): each vision token, its cell's value
    spread = (tokens.unsqueeze(-2) @ self_attention_rule(cams)).squeeze(-2)  # (N, B, V)
    return spread[..., order].unflatten(-1, (hp, wp))
