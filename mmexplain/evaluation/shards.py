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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["read_dataset", "read_manifest", "ExplainedDataset", "ShardMaps", "write_shard", "shard_files", "FORMAT",
           "MANIFEST", "MAX_MAP_SIZE"]

FORMAT = 1
MANIFEST = "manifest.json"
MAX_MAP_SIZE = 4096  # side of a stored map: a 4096 x 4096 float16 map is 32 MiB
_MAX_MANIFEST_BYTES = 64 * 2**20  # about 300 000 shard entries
_MANIFEST_KEYS = {"format": int, "version": str, "complete": bool, "options": dict, "items": int, "rows": int,
                  "shards": list}
_SHARD_KEYS = {"shard": int, "items": list, "rows": int, "rows_file": str, "maps_file": str}


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
        raise InputError(f"maps: expected one per row ({len(rows)}), got {len(maps)}")
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
            raise InputError(f"k: no shard {k}; shards: {self.shards[:5]}{'...' if len(self.shards) > 5 else ''}")
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


_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "true or false", int: "an integer",
          float: "a number", type(None): "null"}


def _kind(value: Any) -> str:
    """What a JSON value is, with its article (``"a list"``); ``value`` may be a type."""
    return _KINDS.get(value if isinstance(value, type) else type(value), "a value")


def _is(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of an explain-dataset folder, checked against its schema; one ``ValueError`` line naming the file.

    The schema: ``format`` (int, :data:`FORMAT`), ``version`` (str), ``complete`` (true/false),
    ``options`` (object of option -> string, number, true/false or null), ``items`` and ``rows``
    (ints >= 0), ``shards``: shard ``k`` is entry ``k``, ``{"shard": k, "items": [start, end],
    "rows": n, "rows_file": "rows-0000k.parquet", "maps_file": "maps-0000k.safetensors"}``,
    the item ranges consecutive from 0, the rows summing to ``rows``; a complete run's shards
    cover all ``items``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file that is not such a manifest (too large, not UTF-8 JSON, nested too
            deeply, a key missing or of the wrong type, inconsistent counts).
    """
    from .._io import read_json

    path = Path(path)
    data = read_json(path, what="explain-dataset manifest", max_bytes=_MAX_MANIFEST_BYTES)

    def bad(what: str) -> ValueError:
        return ValueError(f"explain-dataset manifest {str(path)!r} is damaged: {what}")

    if not isinstance(data, dict):
        raise bad(f"expected a JSON object, got {_kind(data)}")
    for key, kind in _MANIFEST_KEYS.items():
        if key not in data:
            raise bad(f"no {key!r}")
        if not _is(data[key], kind):
            raise bad(f"{key!r} must be {_kind(kind)}, got {data[key]!r:.60}")
    if data["format"] != FORMAT:
        raise bad(f"format {data['format']} is not {FORMAT}, the one this version reads")
    for key, value in data["options"].items():
        if not (value is None or isinstance(value, (str, int, float, bool))):
            raise bad(f"option {key!r} must be a string, number, true/false or null, got {_kind(value)}")
    for key in ("items", "rows"):
        if data[key] < 0:
            raise bad(f"{key!r} must be >= 0, got {data[key]}")
    end, rows = 0, 0
    for k, entry in enumerate(data["shards"]):
        where = f"shards[{k}]"
        if not isinstance(entry, dict):
            raise bad(f"{where} must be an object, got {_kind(entry)}")
        for key, kind in _SHARD_KEYS.items():
            if not _is(entry.get(key), kind):
                raise bad(f"{where} needs {key!r} as {_kind(kind)}, got {entry.get(key)!r:.60}")
        span = entry["items"]
        if entry["shard"] != k:
            raise bad(f"{where} is numbered {entry['shard']}, expected {k}")
        if len(span) != 2 or not all(_is(i, int) for i in span) or span[0] != end or not end < span[1] <= data["items"]:
            raise bad(f"{where} 'items' must be [{end}, end] with {end} < end <= {data['items']}, got {span!r:.60}")
        maps_file, rows_file = shard_files(path.parent, k)
        if (entry["rows_file"], entry["maps_file"]) != (rows_file.name, maps_file.name):
            raise bad(f"{where} must name {rows_file.name} and {maps_file.name}")
        if entry["rows"] < 0:
            raise bad(f"{where} 'rows' must be >= 0, got {entry['rows']}")
        end, rows = span[1], rows + entry["rows"]
    if rows != data["rows"]:
        raise bad(f"its shards hold {rows} rows, its 'rows' says {data['rows']}")
    if data["complete"] and end != data["items"]:
        raise bad(f"a complete run whose shards cover {end} of its {data['items']} items")
    return data


def read_dataset(folder: str | Path) -> ExplainedDataset:
    """Read a folder written by ``mmexplain explain-dataset``.

    Args:
        folder: the ``--out`` folder.

    Returns:
        :class:`ExplainedDataset`: ``rows`` (pyarrow Table), ``maps`` (lazy), ``manifest``.

    Raises:
        FileNotFoundError: no manifest or a shard file missing.
        ValueError: an unfinished run (resume it with ``--resume``), or a damaged manifest (see
            :func:`read_manifest`) or shard file (named).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"folder: no {MANIFEST} in {str(folder)!r}; is it an explain-dataset output?")
    manifest = read_manifest(path)
    if not manifest["complete"]:
        raise InputError(f"folder: the run in {str(folder)!r} is unfinished; finish it with --resume")
    shards = [s["shard"] for s in manifest["shards"]]
    tables = []
    for entry in manifest["shards"]:
        maps_file, rows_file = shard_files(folder, entry["shard"])
        for file in (maps_file, rows_file):
            if not file.is_file():
                raise FileNotFoundError(f"folder: {str(file)!r}, listed in {MANIFEST}, is missing")
        try:
            table = pq.read_table(str(rows_file))
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"folder: shard file {str(rows_file)!r} is damaged ({' '.join(str(exc).split())[:120]})") from exc
        if table.num_rows != entry["rows"] or not set(_schema().names) <= set(table.column_names):
            raise InputError(f"folder: shard file {str(rows_file)!r} does not hold the {entry['rows']} rows of "
                             f"the row schema that {MANIFEST} lists")
        tables.append(table.select(_schema().names))
    rows = pa.concat_tables(tables) if tables else _schema().empty_table()
    keys = list(zip(rows.column("shard").to_pylist(), rows.column("row").to_pylist()))
    return ExplainedDataset(rows, ShardMaps(folder, shards, keys), manifest)
