"""``PictureInputs``: model inputs made from a picture by a processor, edited as the picture.

A VLM's processor resizes, patchifies (Qwen2-VL's flattened patches) or tiles the image, so
the model's own image tensor is no (B, C, H, W) picture a mask can be laid on. A
perturbation method (Score-CAM, Ablation-CAM, Occlusion) edits the *picture* instead and
runs the processor again on every edited copy: ``picture`` is what it masks, ``process``
turns r edited pictures into the model's inputs for r rows (the text repeated with them).
``find_image`` / ``replace_image`` / ``repeat_rows`` / ``call_model`` (``methods.base``)
understand it, so the methods need not know.

The methods see the picture *about its zero*, ``picture - zero``, where ``zero`` is the
colour the processor normalises to 0 (its mean): a mask multiplies, and an occlusion
writes 0, about that colour, exactly as the same method does on the normalised tensor of
a model without a processor (Score-CAM's masked image fades to the mean colour, not to
black; Occlusion's window is the mean colour: Zeiler & Fergus' grey square).

Example:
    >>> import torch
    >>> pics = PictureInputs(torch.zeros(1, 3, 4, 4), lambda p: {"x": p.flatten(1)})
    >>> pics.with_picture(torch.ones(2, 3, 4, 4)).model_inputs()["x"].shape
    torch.Size([2, 48])
    >>> grey = PictureInputs(torch.ones(1, 3, 4, 4), lambda p: {"x": p}, zero=torch.full((3, 1, 1), 0.5))
    >>> float(grey.centred().max()), float(grey.with_centred(torch.zeros(1, 3, 4, 4)).picture.max())
    (0.5, 0.5)
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
        zero: (3, 1, 1) in [0, 1], the colour the processor normalises to 0 (None: black).
    """

    picture: Tensor
    process: Callable[[Tensor], Mapping[str, Any]]
    inputs: Mapping[str, Any] | None = None
    zero: Tensor | None = None

    def model_inputs(self) -> Mapping[str, Any]:
        """The keyword inputs the model takes."""
        return self.process(self.picture) if self.inputs is None else self.inputs

    def with_picture(self, picture: Tensor) -> PictureInputs:
        """The same text with another (batch of) picture(s)."""
        return PictureInputs(picture, self.process, zero=self.zero)

    def centred(self) -> Tensor:
        """(B, 3, H, W): the picture about its zero, what a perturbation method edits."""
        return self.picture if self.zero is None else self.picture - self.zero.to(self.picture)

    def with_centred(self, centred: Tensor) -> PictureInputs:
        """The same text with the picture(s) whose :meth:`centred` view is ``centred``."""
        return self.with_picture(centred if self.zero is None else centred + self.zero.to(centred))

    def repeated(self, copies: int) -> PictureInputs:
        """``copies`` copies of the picture, copy-major (processed when the model is called)."""
        return self if copies == 1 else self.with_picture(self.picture.repeat(copies, 1, 1, 1))
