"""Per-unit upper quantiles of a stream of activations, in fixed memory.

Network Dissection thresholds unit k at T_k, the level its activation exceeds on the
top ``quantile`` of all positions of all images. :class:`StreamingQuantile` estimates
T_k from a (K, bins) histogram, so memory does not grow with the dataset.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["StreamingQuantile"]


class StreamingQuantile:
    """Per-unit upper quantiles of a stream of activations in fixed memory.

    Each unit keeps a histogram of ``bins`` equal bins over a symmetric range
    ``[-R_k, R_k)``; when a value with ``|a| >= R_k`` arrives, the range doubles and
    adjacent bins merge in pairs, so memory is ``K x bins`` counts whatever the
    stream's length. Bins nest across doublings, so no count ever moves to a wrong bin.

    The estimate T̂_k is the lower edge of the bin that holds the boundary, so at
    least the top fraction q passes ``a > T̂_k`` (ties included: a unit with few
    distinct values is never cut inside a tie, and an all-zero unit gets T̂_k = 0).

    Error bound: let v_k be the ⌈q·n⌉-th largest of the n values of unit k. T̂_k is
    the lower edge of v_k's bin, so

        0 <= v_k - T̂_k < w_k = 2 R_k / bins <= 4 max_x |a_k(x)| / bins,

    since R_k starts just above the first batch's largest |a| and doubles only while
    some value reaches it (an all-zero unit keeps R_k = 1e-12). ``bin_width``
    returns w_k. With the default 4096 bins the threshold is within 0.1 % of the
    unit's largest absolute activation.

    Example:
        >>> sq = StreamingQuantile(2)
        >>> sq.update(torch.arange(1000.0).repeat(2, 1))   # (K, n)
        >>> sq.upper(0.01)                   # the 10th largest is 990; bin width 0.49
        tensor([989.7329, 989.7329], dtype=torch.float64)
    """

    def __init__(self, num_units: int, *, bins: int = 4096, radius: Tensor | None = None) -> None:
        if not isinstance(num_units, int) or num_units < 1:
            raise InputError(f"num_units: expected a positive int, got {num_units!r}")
        if not isinstance(bins, int) or bins < 4 or bins % 4:
            raise InputError(f"bins: expected a positive multiple of 4, got {bins!r}")
        self.num_units = num_units
        self.bins = bins
        self.counts = torch.zeros(num_units, bins, dtype=torch.float64)  # (K, bins)
        self.radius: Tensor | None = None  # (K,) R_k
        if radius is not None:
            radius = torch.as_tensor(radius, dtype=torch.float64).reshape(-1)
            if radius.shape != (num_units,) or not bool((radius > 0).all()):
                raise InputError(f"radius: expected {num_units} positive starting ranges, got {tuple(radius.shape)}")
            self.radius = radius.clone()
        self.count = 0

    @property
    def bin_width(self) -> Tensor:
        """(K,) w_k, the bound on |T̂_k - v_k| (see the class docstring)."""
        if self.radius is None:
            raise InputError("StreamingQuantile: no values yet")
        return 2 * self.radius / self.bins

    def update(self, values: Tensor) -> None:
        """Add ``values`` (K, n): n new activations of each of the K units."""
        if values.dim() != 2 or values.shape[0] != self.num_units:
            raise InputError(f"values: expected shape ({self.num_units}, n), got {tuple(values.shape)}")
        if values.shape[1] == 0:
            return
        values = values.detach().to(device="cpu", dtype=torch.float64)  # (K, n)
        if not torch.isfinite(values).all():
            raise InputError("values: activations contain NaN or infinity")
        absmax = values.abs().amax(dim=1)  # (K,)
        if self.radius is None:
            # start just above the first batch's range; a zero unit gets a tiny range
            self.radius = torch.where(absmax > 0, absmax * (1 + 1e-6), torch.full_like(absmax, 1e-12))
        self._grow(absmax >= self.radius, absmax)
        width = (2 * self.radius / self.bins)[:, None]  # (K, 1)
        idx = torch.floor((values + self.radius[:, None]) / width).long().clamp_(0, self.bins - 1)  # (K, n)
        flat = idx + torch.arange(self.num_units)[:, None] * self.bins  # (K, n)
        self.counts += torch.bincount(flat.reshape(-1), minlength=self.num_units * self.bins).view(
            self.num_units, self.bins).to(torch.float64)
        self.count += values.shape[1]

    def _grow(self, need: Tensor, limit: Tensor) -> None:
        """Double the range of every unit in ``need`` (merging bins in pairs) until ``limit < R_k``."""
        quarter = self.bins // 4
        while bool(need.any()):
            rows = need.nonzero().squeeze(1)
            merged = self.counts[rows].view(len(rows), self.bins // 2, 2).sum(-1)  # (r, bins/2)
            grown = torch.zeros(len(rows), self.bins, dtype=torch.float64)
            grown[:, quarter:quarter + self.bins // 2] = merged  # old [-R, R) is new bins [bins/4, 3 bins/4)
            self.counts[rows] = grown
            self.radius[rows] = self.radius[rows] * 2
            need = limit >= self.radius

    def widen(self, radius: Tensor) -> None:
        """Double each unit's range until it reaches ``radius`` (K,) (up to 1e-9 relative); bins nest."""
        if self.radius is None:
            raise InputError("StreamingQuantile: no values yet")
        target = torch.as_tensor(radius, dtype=torch.float64) * (1 - 1e-9)
        self._grow(self.radius < target, target)

    def merge(self, other: StreamingQuantile) -> StreamingQuantile:
        """Add ``other``'s values to this histogram (in place; returns self).

        Both are widened to the larger range of each unit; their ranges must then be equal
        (ranges on one ladder ``c 2^e`` nest, so the merge is what one histogram of all the
        values would hold).

        Raises:
            ValueError: a different number of units or bins, or ranges that do not nest.
        """
        if not isinstance(other, StreamingQuantile) or (other.num_units, other.bins) != (self.num_units, self.bins):
            raise InputError(f"other: expected a StreamingQuantile of {self.num_units} units and {self.bins} bins")
        if other.radius is None:
            return self
        if self.radius is None:
            self.radius, self.counts, self.count = other.radius.clone(), other.counts.clone(), other.count
            return self
        theirs = StreamingQuantile(other.num_units, bins=other.bins, radius=other.radius)
        theirs.counts, theirs.count = other.counts.clone(), other.count
        common = torch.maximum(self.radius, theirs.radius)  # (K,)
        self.widen(common)
        theirs.widen(common)
        if not torch.allclose(self.radius, theirs.radius, rtol=1e-9, atol=0):
            raise InputError("other: its ranges do not nest with these (start both on one ladder, radius=c 2^e)")
        self.counts += theirs.counts
        self.count += theirs.count
        return self

    def upper(self, q: float) -> Tensor:
        """(K,) float64 T̂_k: the level exceeded by the top fraction ``q`` of each unit's values."""
        if self.radius is None:
            raise InputError("StreamingQuantile: no values yet")
        if not 0 < q < 1:
            raise InputError(f"q: expected a fraction in (0, 1), got {q!r}")
        # the bin i with S_{i+1} < ceil(q n) <= S_i holds the ceil(q n)-th largest value
        target = max(math.ceil(q * self.count - 1e-9), 1)
        above = self.counts.flip(1).cumsum(1).flip(1)  # (K, bins) S_i = count in bins >= i
        i = ((above >= target).sum(1) - 1).clamp(min=0)  # (K,) last bin whose S_i reaches the target
        return -self.radius + i.to(torch.float64) * (2 * self.radius / self.bins)  # the bin's lower edge
