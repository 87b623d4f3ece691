"""The one training loop of every shipped model: AdamW, warm-up + cosine schedule, a step or time budget.

A model supplies two callables, ``next_batch(step, generator) -> batch`` and
``loss_fn(model, batch) -> loss``; :func:`fit` does the rest:

- AdamW with weight decay on weight matrices only (biases, norms and embeddings'
  1-d parameters get none);
- learning rate: linear warm-up over ``warmup`` steps, then a cosine from ``lr`` down to
  ``min_lr * lr``; with a time budget (``minutes > 0``) the cosine follows
  ``max(step progress, time progress)`` and training stops when the time is up;
- gradient-norm clipping;
- seeded: ``generator`` (passed to ``next_batch``) and the global torch generator
  (dropout) start from ``seed``; the caller's random state is restored afterwards;
- divergence: a non-finite loss, gradient norm or weight (or a non-finite loss of the
  final weights, checked in eval mode on one more batch) stops training with
  :class:`TrainingDiverged` (nothing is returned, so nothing gets saved);
- a line of progress every ``log_every`` steps.

Example:
    >>> import torch
    >>> from mmexplain.training.loop import LoopConfig, fit
    >>> model = torch.nn.Linear(3, 1)
    >>> x, y = torch.randn(64, 3), torch.randn(64, 1)
    >>> info = fit(model, lambda step, gen: (x, y),
    ...            lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]),
    ...            LoopConfig(steps=50, lr=0.05, log_every=0))
    >>> info["steps"], info["final_loss"] < info["first_loss"]
    (50, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError

__all__ = ["LoopConfig", "TrainingDiverged", "fit", "learning_rate"]


class TrainingDiverged(ArithmeticError):
    """The loss, the gradient norm or a weight became NaN or infinite."""


@dataclass
class LoopConfig:
    """How a model trains (each shipped model's values: :data:`mmexplain.training.run.RECIPES`)."""

    steps: int = 1000  # optimizer steps (an upper limit when minutes > 0)
    minutes: float = 0.0  # wall-clock budget; 0: none
    batch_size: int = 32  # read by the model's next_batch
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0  # AdamW decay of the weight matrices (parameters with dim > 1)
    warmup: int | None = None  # linear warm-up steps; None: 3% of steps (at least 1)
    min_lr: float = 0.0  # the cosine ends at min_lr * lr
    clip: float = 1.0  # max gradient norm
    seed: int = 0  # batches and dropout
    log_every: int = 100  # a progress line every this many steps; 0: none

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{key} must be an int >= 1, got {value!r}")
        for key in ("seed", "log_every") + (("warmup",) if self.warmup is not None else ()):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"{key} must be an int >= 0, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a finite number > 0, got {self.lr!r}")
        for key in ("minutes", "weight_decay", "min_lr"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"{key} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.clip, (int, float)) and self.clip > 0):
            raise InputError(f"clip must be a number > 0, got {self.clip!r}")

    @property
    def warmup_steps(self) -> int:
        """The warm-up length in steps (``warmup``, or 3% of ``steps``)."""
        return max(1, int(0.03 * self.steps)) if self.warmup is None else self.warmup


def learning_rate(config: LoopConfig, step: int, time_fraction: float = 0.0) -> float:
    """The learning rate of ``step`` (0-based): linear warm-up, then cosine to ``min_lr * lr``.

    Args:
        config: the schedule.
        step: the step about to run.
        time_fraction: share of the time budget used so far (0 without one).
    """
    warm = config.warmup_steps
    if step < warm:
        return config.lr * (step + 1) / warm
    done = max((step - warm) / max(1, config.steps - warm), time_fraction)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return config.lr * (config.min_lr + (1 - config.min_lr) * cosine)


def _largest_weight(params: list[Tensor]) -> Tensor:
    return torch.stack([p.detach().abs().amax() for p in params]).amax()  # NaN if any weight is NaN


def fit(model: nn.Module, next_batch: Callable[[int, torch.Generator], Any],
        loss_fn: Callable[[nn.Module, Any], Tensor], config: LoopConfig, *,
        log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train ``model`` in place (see the module docstring); it is left in eval mode.

    Args:
        model: the module to train (its trainable parameters).
        next_batch: ``(step, generator) -> batch``; draw any randomness from ``generator``.
        loss_fn: ``(model, batch) -> scalar loss``.
        config: budget, schedule and seed.
        log: receives the progress lines (``None``: quiet).

    Returns:
        ``steps`` run, ``seconds`` (wall clock), ``cpu_seconds``, ``threads``,
        ``first_loss`` (mean of the first 20 steps), ``final_loss`` (mean of the last 50),
        ``last_loss`` (the last batch) and the config's values.

    Raises:
        TrainingDiverged: a non-finite loss, gradient norm or weight (the step is named).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("model has no trainable parameters")
    groups = [{"params": [p for p in params if p.dim() > 1], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    budget = 60.0 * config.minutes
    losses: list[float] = []
    start, cpu_start = time.time(), time.process_time()

    def diverged(step: int, what: str, value: float, lr: float) -> TrainingDiverged:
        return TrainingDiverged(f"training diverged at step {step + 1} of {config.steps}: the {what} is {value} "
                                f"(learning rate {lr:.3g})")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model.train()
        try:
            for step in range(config.steps):
                elapsed = time.time() - start
                if budget > 0 and elapsed >= budget:
                    break
                lr = learning_rate(config, step, elapsed / budget if budget > 0 else 0.0)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss = loss_fn(model, next_batch(step, generator))
                if not bool(torch.isfinite(loss)):
                    raise diverged(step, "loss", loss.item(), lr)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                norm = nn.utils.clip_grad_norm_(params, config.clip)
                if not bool(torch.isfinite(norm)):
                    raise diverged(step, "gradient norm", norm.item(), lr)
                opt.step()
                largest = _largest_weight(params)
                if not bool(torch.isfinite(largest)):
                    raise diverged(step, "largest weight", largest.item(), lr)
                losses.append(loss.item())
                if log is not None and config.log_every and (step + 1) % config.log_every == 0:
                    recent = losses[-config.log_every:]
                    log(f"step {step + 1}/{config.steps}  loss {sum(recent) / len(recent):.4f}  lr {lr:.2e}  "
                        f"({time.time() - start:.0f}s)")
        finally:
            model.eval()
        if not losses:
            raise InputError(f"minutes: the time budget of {config.minutes} minutes ended before the first step")
        with torch.no_grad():  # weights can be finite yet too large to use: one forward with the final weights
            final = loss_fn(model, next_batch(len(losses), generator))
        if not bool(torch.isfinite(final)):
            raise diverged(len(losses) - 1, "loss after the last update", final.item(), lr)
    return {**asdict(config), "warmup": config.warmup_steps, "steps": len(losses), "max_steps": config.steps,
            "seconds": round(time.time() - start, 1), "cpu_seconds": round(time.process_time() - cpu_start, 1),
            "threads": torch.get_num_threads(), "first_loss": round(sum(losses[:20]) / len(losses[:20]), 4),
            "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4), "last_loss": round(losses[-1], 4)}
