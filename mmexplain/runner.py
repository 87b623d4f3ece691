"""The dataset runner: DataLoader workers, device and dtype, torch.distributed shards.

``mmexplain evaluate grounding``, ``mmexplain dissect`` and ``mmexplain explain-dataset``
run their datasets through one :class:`Runner`:

* items are produced (generated, decoded, resized) by a torch ``DataLoader`` with
  ``workers`` processes, one item at a time (``batch_size=None``), in index order;
* under ``torchrun --nproc-per-node N -m mmexplain ...`` (the env vars ``WORLD_SIZE``,
  ``RANK``, ``LOCAL_RANK``), :func:`distributed` joins the process group (gloo on CPU,
  NCCL on GPU) and :meth:`Runner.shard` gives rank r the items ``r::world_size``: every
  item exactly once, no padding (unlike ``DistributedSampler``);
* per-rank tallies are combined with :meth:`Runner.sum` / :meth:`Runner.max` (tensors,
  all-reduced) and :meth:`Runner.gather` (Python objects, all-gathered), so every rank
  holds the single-process result; rank 0 (:attr:`Runner.main`) prints and writes;
* ``dtype`` runs the model's forward (and backward) under ``torch.autocast``; the maps,
  thresholds and IoU counts are computed in float32 from its outputs.

Example:
    >>> from mmexplain.runner import distributed
    >>> with distributed(workers=2, device="cpu") as runner:       # doctest: +SKIP
    ...     for item in runner.loader(dataset, runner.shard(len(dataset))):
    ...         ...
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .errors import InputError

__all__ = ["Runner", "distributed", "DTYPES", "world_from_env"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("cpu", "cuda")


def _identity(item: Any) -> Any:
    """The DataLoader's collate for ``batch_size=None``: the item as the dataset gave it."""
    return item


def world_from_env(environ: dict[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's env vars (``(0, 1, 0)`` without them).

    Raises:
        ValueError: a variable that is not an integer, or a rank outside ``[0, WORLD_SIZE)``.
    """
    env = os.environ if environ is None else environ
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = env.get(name)
        try:
            values[name] = default if text in (None, "") else int(text)
        except ValueError:
            raise InputError(f"{name}: expected an integer (set by torchrun), got {text!r}") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise InputError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: expected 0 <= RANK < WORLD_SIZE")
    return rank, world, local


@dataclass(frozen=True)
class Runner:
    """How a dataset job runs: workers, device, dtype, and this process's place in the group.

    Args:
        workers: DataLoader worker processes (0: items are made in this process).
        device: ``"cpu"`` or a CUDA device (``"cuda:0"``); the model must be there.
        dtype: a key of :data:`DTYPES`; the autocast dtype of the model's computation.
        rank: this process's rank.
        world_size: number of processes (1: no process group).
        progress: show a tqdm bar (rank 0 only).
        started: ``time.perf_counter()`` at creation (for :meth:`report`).
    """

    workers: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    rank: int = 0
    world_size: int = 1
    progress: bool = False
    started: float = field(default_factory=time.perf_counter, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise InputError(f"workers: expected an integer >= 0, got {self.workers!r}")
        if self.dtype not in DTYPES:
            raise InputError(f"dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if torch.device(self.device).type not in DEVICES:
            raise InputError(f"device: expected cpu or cuda, got {self.device!r}")

    @property
    def main(self) -> bool:
        """True on rank 0, the process that prints and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> range:
        """This rank's item indices of ``n`` items: ``range(rank, n, world_size)``."""
        return range(self.rank, n, self.world_size)

    def loader(self, dataset: Any, indices: Sequence[int] | None = None) -> torch.utils.data.DataLoader:
        """Items ``dataset[i]`` for ``i`` in ``indices`` (default all), in that order, made by the workers."""
        indices = range(len(dataset)) if indices is None else indices
        return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=list(indices), num_workers=self.workers,
                                           collate_fn=_identity)

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` at :attr:`dtype` (a no-op context for float32)."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=DTYPES[self.dtype])

    def bar(self, iterable: Iterable[Any], *, total: int | None, desc: str) -> Iterator[Any]:
        """``iterable`` with a tqdm bar on rank 0 (when :attr:`progress`)."""
        from tqdm import tqdm

        return iter(tqdm(iterable, total=total, desc=desc, disable=not (self.progress and self.main), leave=False))

    def _reduce(self, tensor: Tensor, op: Any) -> Tensor:
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        out = tensor.detach().clone().to(self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(out, op=op)
        return out.to(tensor.device)

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the ranks (a copy; the input itself when not distributed)."""
        import torch.distributed as dist

        return self._reduce(tensor, dist.ReduceOp.SUM)

    def max(self, tensor: Tensor) -> Tensor:
        """Element-wise maximum of ``tensor`` over the ranks."""
        import torch.distributed as dist

        return self._reduce(tensor, dist.ReduceOp.MAX)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order: ``[obj]`` when not distributed."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def report(self, what: str, items: int) -> None:
        """One line per rank on stderr: items done, seconds, items/s, the process's peak memory."""
        import resource

        seconds = time.perf_counter() - self.started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
        line = (f"rank {self.rank}/{self.world_size} {what}: {items} items in {seconds:.2f} s "
                f"({items / max(seconds, 1e-9):.2f} items/s, {self.workers} workers, {self.device}, {self.dtype}, "
                f"peak {peak:.0f} MiB)\n")
        sys.stderr.write(line)  # one write: the ranks' lines do not interleave
        sys.stderr.flush()


@contextlib.contextmanager
def distributed(*, workers: int = 0, device: str = "cpu", dtype: str = "float32",
                progress: bool = False) -> Iterator[Runner]:
    """A :class:`Runner` for this process; joins torchrun's process group while inside.

    Under torchrun (``WORLD_SIZE`` > 1) the group is initialised from the env vars
    (gloo for ``device="cpu"``, NCCL for CUDA, each rank on ``cuda:LOCAL_RANK``) and
    destroyed on exit, also after an error. A group that is already initialised is
    used as it is and left alone.

    Args:
        workers: DataLoader worker processes.
        device: ``"cpu"`` or ``"cuda"`` (the local rank's GPU) or ``"cuda:N"``.
        dtype: a key of :data:`DTYPES`.
        progress: show progress on rank 0.

    Raises:
        ValueError: a CUDA device without CUDA, or malformed torchrun env vars.
    """
    rank, world, local = world_from_env()
    kind = torch.device(device).type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device: {device!r} asked for, but this machine has no CUDA device (use --device cpu)")
        if device == "cuda":
            device = f"cuda:{local % torch.cuda.device_count()}"
        torch.cuda.set_device(torch.device(device))
    elif kind != "cpu":
        raise InputError(f"device: expected cpu or cuda, got {device!r}")
    own = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
            own = True
    try:
        yield Runner(workers=workers, device=device, dtype=dtype, rank=rank, world_size=world, progress=progress)
    finally:
        if own:
            import torch.distributed as dist

            dist.destroy_process_group()
