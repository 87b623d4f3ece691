"""The files of an explained dataset: Parquet rows and safetensors maps per shard, a JSON manifest.

A folder written by ``mmexplain explain-dataset`` holds, per shard k (items
``[k S, (k + 1) S)`` for shard size S):

* ``maps-0000k.safetensors``: one float16 tensor (h, w) per row, keyed by the row's
  number in the shard (``"000000"``, ...);
* ``rows-0000k.parquet``: the shard's rows (``shard``, ``row``, ``index``, ``id``,
  ``image``, ``kind``, ``target``, ``position``, ``question``, ``truth``, ``score``,
  ``method``, ``pointing``, ``energy_ratio``), written after its maps, so a shard whose
  rows file exists is complete;

and ``manifest.json`` (format, version, options, shard list, counts). Every file is
written through :func:`mmexplain._io.atomic_write`: a crash loses at most the shard
in flight.

Example:
    >>> ds = read_dataset("runs/explained")               # doctest: +SKIP
    >>> ds.rows.num_rows, ds.maps[0].shape                # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["read_dataset", "ExplainedDataset", "ShardMaps", "write_shard", "shard_files", "FORMAT", "MANIFEST"]

FORMAT = 1
MANIFEST = "manifest.json"


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("shard", pa.int32()), ("row", pa.int32()), ("index", pa.int64()), ("id", pa.string()),
        ("image", pa.string()), ("kind", pa.string()), ("target", pa.string()), ("position", pa.int32()),
        ("question", pa.string()), ("truth", pa.string()), ("score", pa.float64()), ("method", pa.string()),
        ("pointing", pa.float64()), ("energy_ratio", pa.float64()),
    ])


def shard_files(folder: Path, k: int) -> tuple[Path, Path]:
    """``(maps file, rows file)`` of shard ``k``."""
    return folder / f"maps-{k:05d}.safetensors", folder / f"rows-{k:05d}.parquet"


def write_shard(folder: Path, k: int, rows: list[dict[str, Any]], maps: list[Tensor]) -> None:
    """Write shard ``k``: its maps (each (h, w), stored float16), then its rows (the completion mark).

    Args:
        folder: the output folder.
        k: shard number.
        rows: one dict per row (keys of the row schema but ``shard`` and ``row``).
        maps: one (h, w) map per row.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    from .._io import atomic_write

    if len(rows) != len(maps):
        raise ValueError(f"maps: expected one per row ({len(rows)}), got {len(maps)}")
    maps_file, rows_file = shard_files(folder, k)
    tensors = {f"{r:06d}": m.detach().to("cpu", torch.float16).contiguous() for r, m in enumerate(maps)}
    atomic_write(maps_file, lambda tmp: save_file(tensors, str(tmp), metadata={"mmexplain": f"shard {k}, {len(rows)} rows"}))
    columns = {name: [] for name in _schema().names}
    for r, row in enumerate(rows):
        full = {"shard": k, "row": r, **row}
        for name in columns:
            columns[name].append(full.get(name))
    table = pa.table(columns, schema=_schema())
    atomic_write(rows_file, lambda tmp: pq.write_table(table, str(tmp)))


class ShardMaps:
    """The maps of an explained dataset, read lazily: ``maps[i]`` (row i of ``rows``), ``maps.shard(k)``, ``maps.all()``.

    Args:
        folder: the output folder.
        shards: the shard numbers, in row order.
        keys: ``(shard, row)`` of every row of the table, in its order.
    """

    def __init__(self, folder: Path, shards: list[int], keys: list[tuple[int, int]]) -> None:
        self.folder, self.shards, self.keys = folder, shards, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> Tensor:
        """(h, w) float16 map of row ``i``."""
        from safetensors import safe_open

        k, r = self.keys[i]
        with safe_open(str(shard_files(self.folder, k)[0]), framework="pt") as f:
            return f.get_tensor(f"{r:06d}")

    def shard(self, k: int) -> list[Tensor]:
        """Every (h, w) map of shard ``k``, in row order."""
        from safetensors.torch import load_file

        if k not in self.shards:
            raise ValueError(f"k: no shard {k}; shards: {self.shards[:5]}{'...' if len(self.shards) > 5 else ''}")
        tensors = load_file(str(shard_files(self.folder, k)[0]))
        return [tensors[key] for key in sorted(tensors)]

    def all(self) -> list[Tensor]:
        """Every map, in row order (loads every shard)."""
        return [m for k in self.shards for m in self.shard(k)]


@dataclass
class ExplainedDataset:
    """What :func:`read_dataset` returns.

    Attributes:
        rows: pyarrow ``Table`` of every row, shard by shard (``rows.to_pylist()`` for dicts).
        maps: :class:`ShardMaps`, aligned with ``rows``.
        manifest: the manifest dict (options, shards, counts, version).
    """

    rows: Any
    maps: ShardMaps
    manifest: dict[str, Any]


def read_dataset(folder: str | Path) -> ExplainedDataset:
    """Read a folder written by ``mmexplain explain-dataset``.

    Args:
        folder: the ``--out`` folder.

    Returns:
        :class:`ExplainedDataset`: ``rows`` (pyarrow Table), ``maps`` (lazy), ``manifest``.

    Raises:
        FileNotFoundError: no manifest or a shard file missing.
        ValueError: an unfinished run (resume it with ``--resume``) or an unknown format.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"folder: no {MANIFEST} in {str(folder)!r}; is it an explain-dataset output?")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"folder: {str(path)!r} has format {manifest.get('format')!r}, expected {FORMAT}")
    if not manifest.get("complete"):
        raise ValueError(f"folder: the run in {str(folder)!r} is unfinished; finish it with --resume")
    shards = [s["shard"] for s in manifest["shards"]]
    tables = [pq.read_table(str(shard_files(folder, k)[1])) for k in shards]
    rows = pa.concat_tables(tables) if tables else _schema().empty_table()
    keys = list(zip(rows.column("shard").to_pylist(), rows.column("row").to_pylist()))
    return ExplainedDataset(rows, ShardMaps(folder, shards, keys), manifest)
