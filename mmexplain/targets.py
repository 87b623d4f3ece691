"""Target specs: which differentiable scalar of a model's output to explain.

A target is a small callable ``target(output) -> Tensor (B,)``: one scalar per sample.
The engine knows nothing of classes, captions or answers; everything model-specific
lives here and in the adapters. ``output`` is whatever ``model(...)`` returned: a
tensor, a tuple whose first element holds the logits, or an object/dict with
``.logits`` (Hugging Face ``ModelOutput``).

Example:
    >>> import torch, mmexplain as mx
    >>> logits = torch.tensor([[1.0, 3.0], [2.0, 0.5]])
    >>> mx.targets.ClassLogit(1)(logits)
    tensor([3.0000, 0.5000])
    >>> mx.targets.Counterfactual(mx.targets.ClassLogit(1))(logits)
    tensor([-3.0000, -0.5000])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from .errors import InputError, InputTypeError

__all__ = [
    "Target",
    "logits_of",
    "ClassLogit",
    "AnswerScore",
    "TopClass",
    "WordLogProb",
    "SequenceLogProb",
    "Scalar",
    "Counterfactual",
]


class Target(Protocol):
    """Anything that maps a model output to one differentiable scalar per sample."""

    def __call__(self, output: Any) -> Tensor:  # (B,)
        ...


def logits_of(output: Any) -> Tensor:
    """The logits tensor inside a model output.

    Args:
        output: a tensor; an object or mapping with ``logits``; or a tuple/list whose
            first element is the logits.

    Returns:
        The logits tensor, e.g. (B, C) for a classifier or (B, T, V) for a sequence model.
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise InputTypeError(
        "model output: expected a tensor, a tuple starting with a tensor, or an object with "
        f"'.logits'; got {type(output).__name__}"
    )


def _check_index(index: Any, name: str) -> None:
    """TypeError unless ``index`` is an int, a sequence of ints or an integer tensor."""
    if isinstance(index, (bool, str, bytes)) or not isinstance(index, (int, Sequence, Tensor)):
        raise InputTypeError(f"{name}: expected an int or one int per sample, got {type(index).__name__} {index!r}")
    if isinstance(index, Tensor):
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool or index.dim() > 1:
            raise InputTypeError(f"{name}: expected an integer tensor of shape () or (B,), got dtype {index.dtype}, "
                            f"shape {tuple(index.shape)}")
    elif isinstance(index, Sequence):
        bad = [v for v in index if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            raise InputTypeError(f"{name}: expected one int per sample, got {type(bad[0]).__name__} {bad[0]!r} in the list")


def _per_sample_index(index: Any, batch: int, size: int, *, name: str, device: torch.device) -> Tensor:
    """Turn an int / sequence / tensor index into a validated (B,) long tensor."""
    _check_index(index, name)
    idx = torch.as_tensor(index, device=device)
    if idx.is_floating_point() or idx.is_complex():
        raise InputTypeError(f"{name}: expected integer indices, got dtype {idx.dtype}")
    idx = idx.long()
    if idx.dim() == 0:
        idx = idx.expand(batch)
    elif idx.shape != (batch,):
        raise InputError(f"{name}: expected one index per sample ({batch}), got shape {tuple(idx.shape)}")
    if batch and (int(idx.min()) < 0 or int(idx.max()) >= size):
        bad = int(idx.max()) if int(idx.max()) >= size else int(idx.min())
        raise InputError(f"{name} {bad} out of range for {size} entries")
    return idx


class ClassLogit:
    """The pre-softmax score y^c of class c (the paper's default target).

    Args:
        index: the class, an int for every sample or one int per sample.

    Example:
        >>> ClassLogit(0)(torch.tensor([[2.0, 1.0]]))
        tensor([2.])
    """

    _what = "ClassLogit index"

    def __init__(self, index: int | Sequence[int] | Tensor) -> None:
        _check_index(index, self._what)
        self.index = index

    def __call__(self, output: Any) -> Tensor:  # (B,)
        logits = logits_of(output)  # (B, C)
        if logits.dim() != 2:
            raise InputError(f"{type(self).__name__}: expected logits of shape (B, C), got {tuple(logits.shape)}")
        idx = _per_sample_index(self.index, logits.shape[0], logits.shape[1], name=self._what, device=logits.device)
        return logits.gather(1, idx[:, None])[:, 0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.index!r})"


class AnswerScore(ClassLogit):
    """The logit of a VQA answer (answer classifiers such as ViLT or "deeper LSTM Q + norm I")."""

    _what = "AnswerScore index"


class TopClass:
    """The logit of the rank-th highest class of each sample (rank 0 = the prediction).

    Lets one forward pass explain the top-k predictions without knowing them in advance.
    """

    def __init__(self, rank: int = 0) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise InputError(f"TopClass rank: expected an int >= 0, got {rank!r}")
        self.rank = rank

    def __call__(self, output: Any) -> Tensor:  # (B,)
        logits = logits_of(output)  # (B, C)
        if logits.dim() != 2 or logits.shape[1] <= self.rank:
            raise InputError(f"TopClass rank {self.rank}: needs logits (B, C) with C > rank, got {tuple(logits.shape)}")
        top = logits.detach().topk(self.rank + 1, dim=1).indices[:, self.rank]  # (B,)
        return logits.gather(1, top[:, None])[:, 0]

    def indices(self, output: Any) -> Tensor:
        """The class index explained for each sample: (B,) long."""
        return logits_of(output).detach().topk(self.rank + 1, dim=1).indices[:, self.rank]

    def __repr__(self) -> str:
        return f"TopClass(rank={self.rank})"


def _sequence_logits(output: Any, name: str) -> Tensor:
    logits = logits_of(output)
    if logits.dim() != 3:
        raise InputError(f"{name}: expected sequence logits of shape (B, T, V), got {tuple(logits.shape)}")
    return logits


class WordLogProb:
    """log p(token at position): the log-probability of one word of a sequence.

    Reads ``log_softmax(logits[:, position])[token]`` from sequence logits (B, T, V).
    Which logit position predicts which word is the model's convention: for a
    teacher-forced decoder fed ``[<bos>, w1, ..., wT]``, word w_{t+1} is read at t.

    Args:
        position: index into the T axis of the logits.
        token: vocabulary id, an int for every sample or one per sample.
    """

    def __init__(self, position: int, token: int | Sequence[int] | Tensor) -> None:
        if isinstance(position, bool) or not isinstance(position, int):
            raise InputTypeError(f"WordLogProb position: expected an int, got {type(position).__name__}")
        self.position = position
        self.token = token

    def __call__(self, output: Any) -> Tensor:  # (B,)
        logits = _sequence_logits(output, "WordLogProb")  # (B, T, V)
        batch, length, vocab = logits.shape
        if not -length <= self.position < length:
            raise InputError(f"WordLogProb position {self.position} out of range for a sequence of {length}")
        tok = _per_sample_index(self.token, batch, vocab, name="WordLogProb token", device=logits.device)
        logp = logits[:, self.position].log_softmax(dim=-1)  # (B, V)
        return logp.gather(1, tok[:, None])[:, 0]

    def __repr__(self) -> str:
        return f"WordLogProb(position={self.position}, token={self.token!r})"


class SequenceLogProb:
    """Sum of log p(tokens[i] at positions[i]): a whole caption, or one word made of sub-word tokens.

    Args:
        tokens: token ids, (T,) shared by the batch or (B, T) per sample.
        positions: the logit position of each token (default ``range(T)``).
    """

    def __init__(self, tokens: Sequence[int] | Tensor, *, positions: Sequence[int] | None = None) -> None:
        tok = torch.as_tensor(tokens)
        if tok.is_floating_point() or tok.dim() not in (1, 2) or tok.shape[-1] == 0:
            raise InputError(f"SequenceLogProb tokens: expected a non-empty (T,) or (B, T) integer sequence, got {tokens!r}")
        pos = list(range(tok.shape[-1])) if positions is None else [int(p) for p in positions]
        if len(pos) != tok.shape[-1]:
            raise InputError(f"SequenceLogProb positions: expected {tok.shape[-1]} positions (one per token), got {len(pos)}")
        self.tokens = tok.long()
        self.positions = pos

    def __call__(self, output: Any) -> Tensor:  # (B,)
        logits = _sequence_logits(output, "SequenceLogProb")  # (B, T, V)
        batch, length, vocab = logits.shape
        bad = [p for p in self.positions if not -length <= p < length]
        if bad:
            raise InputError(f"SequenceLogProb positions {bad} out of range for a sequence of {length}")
        tok = self.tokens.to(logits.device).expand(batch, -1)  # (B, T')
        if int(tok.min()) < 0 or int(tok.max()) >= vocab:
            raise InputError(f"SequenceLogProb tokens: ids must lie in [0, {vocab}), got {self.tokens.tolist()}")
        logp = logits[:, self.positions].log_softmax(dim=-1)  # (B, T', V)
        return logp.gather(2, tok[:, :, None])[:, :, 0].sum(dim=1)

    def __repr__(self) -> str:
        return f"SequenceLogProb(tokens={self.tokens.tolist()}, positions={self.positions})"


class Scalar:
    """Any user function of the output that returns one scalar per sample.

    Example:
        >>> Scalar(lambda out: out[:, 0] - out[:, 1])(torch.tensor([[3.0, 1.0]]))
        tensor([2.])
    """

    def __init__(self, fn: Callable[[Any], Tensor]) -> None:
        if not callable(fn):
            raise InputTypeError(f"Scalar fn: expected a callable, got {type(fn).__name__}")
        self.fn = fn

    def __call__(self, output: Any) -> Tensor:  # (B,)
        return self.fn(output)

    def __repr__(self) -> str:
        return f"Scalar({getattr(self.fn, '__name__', self.fn)!r})"


class Counterfactual:
    """The negated target: its Grad-CAM shows what argues *against* it (paper Sec. 3.2).

    alpha_k^c = (1/Z) sum_ij -dy^c/dA^k_ij, so the map is ReLU(-sum_k alpha_k^c A^k).
    """

    def __init__(self, target: Target) -> None:
        if not callable(target):
            raise InputTypeError(f"Counterfactual target: expected a target callable, got {type(target).__name__}")
        self.target = target

    def __call__(self, output: Any) -> Tensor:  # (B,)
        return -self.target(output)

    def __repr__(self) -> str:
        return f"Counterfactual({self.target!r})"
