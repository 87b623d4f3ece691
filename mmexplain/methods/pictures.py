"""``PictureInputs``: model inputs made from a picture by a processor, edited as the picture.

A VLM's processor resizes, patchifies (Qwen2-VL's flattened patches) or tiles the image, so
the model's own image tensor is no (B, C, H, W) picture a mask can be laid on. A
perturbation method (Score-CAM, Ablation-CAM, Occlusion) edits the *picture* instead and
runs the processor again on every edited copy: ``picture`` is what it masks, ``process``
turns r edited pictures into the model's inputs for r rows (the text repeated with them).
``find_image`` / ``replace_image`` / ``repeat_rows`` / ``call_model`` (``methods.base``)
understand it, so the methods need not know.

Example:
    >>> import torch
    >>> pics = PictureInputs(torch.zeros(1, 3, 4, 4), lambda p: {"x": p.flatten(1)})
    >>> pics.with_picture(torch.ones(2, 3, 4, 4)).model_inputs()["x"].shape
    torch.Size([2, 48])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["PictureInputs"]


@dataclass(frozen=True)
class PictureInputs:
    """The model's inputs as a picture and the processor that makes them.

    Attributes:
        picture: (B, 3, H, W) in [0, 1]: the picture a map is laid on.
        process: pictures (r * B, 3, H, W) -> the model's keyword inputs for r * B rows.
        inputs: the model's inputs for ``picture`` (None: ``process(picture)`` when needed).
    """

    picture: Tensor
    process: Callable[[Tensor], Mapping[str, Any]]
    inputs: Mapping[str, Any] | None = None

    def model_inputs(self) -> Mapping[str, Any]:
        """The keyword inputs the model takes."""
        return self.process(self.picture) if self.inputs is None else self.inputs

    def with_picture(self, picture: Tensor) -> PictureInputs:
        """The same text with another (batch of) picture(s)."""
        return PictureInputs(picture, self.process)

    def repeated(self, copies: int) -> PictureInputs:
        """``copies`` copies of the picture, copy-major (processed when the model is called)."""
        return self if copies == 1 else self.with_picture(self.picture.repeat(copies, 1, 1, 1))
