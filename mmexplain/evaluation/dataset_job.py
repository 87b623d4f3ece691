"""Explain every item of a dataset into resumable shards (``mmexplain explain-dataset``).

Items are split into shards of ``shard_size`` consecutive items; shard k belongs to
rank ``k % world_size``. Each rank explains its unfinished shards in order (items made
by the runner's DataLoader workers) and writes each one when complete
(:func:`~mmexplain.evaluation.shards.write_shard`); rank 0 writes the manifest, first
unfinished, then complete. With ``resume`` the finished shards (their rows file exists)
are skipped, so a crash or Ctrl-C costs at most the shard in flight.

What one item gives, by the model's kind:

* captioner: one row per word of the item's caption (the model's own when the input has
  none), its log-probability as ``score``; ShapeWorld words are scored against their
  object's mask (pointing game, energy ratio);
* VQA model: one row per question, the predicted answer and its score, ``truth`` the
  ground-truth answer when known, metrics when the question refers to objects;
* classifier: one row, the top class and its logit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .. import metrics
from ..runner import Runner
from .shards import FORMAT, MANIFEST, MAX_MAP_SIZE, read_manifest, shard_files, write_shard
from ..errors import InputError

__all__ = ["explain_dataset"]


def _fit(m: Tensor, size: tuple[int, int]) -> Tensor:
    """(h, w) map resized (bilinear) to ``size``, float32 on the CPU."""
    m = m.detach().float().cpu()
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def _scores(m: Tensor, mask: Tensor | None) -> dict[str, float | None]:
    if mask is None or not bool(mask.any()):
        return {"pointing": None, "energy_ratio": None}
    ratio = metrics.energy_ratio(m, mask)
    return {"pointing": float(metrics.pointing_game(m, mask)), "energy_ratio": ratio if math.isfinite(ratio) else None}


def _item_rows(model: Any, kind: str, item: Mapping[str, Any], *, method: str, layer: Any,
               runner: Runner, shown: list[Any] | None = None) -> list[tuple[dict[str, Any], Tensor]]:
    """The rows of one item with their maps (H, W) at the model's image size; ``shown`` collects the explanations."""
    from .items import Item, explain_item

    image = item["image"].to(runner.device)  # (3, S, S)
    base = {"index": int(item["index"]), "id": item["id"], "image": item["image_ref"], "method": method}
    out: list[tuple[dict[str, Any], Tensor]] = []
    with runner.autocast():
        if kind == "caption":  # the item's caption, or the model's own
            got = explain_item(model, Item("caption", image, [], caption=item["caption"] or ""), method, layer=layer)
            if shown is not None:
                shown.append(got.explanation)
            for t, word in enumerate(got.labels):
                row = base | {"kind": "word", "target": word, "position": t,
                              "score": float(got.explanation.logprobs[t])}
                out.append((row | _scores(got.maps[t], item["word_masks"].get(t)), got.maps[t]))
        elif kind == "answer":  # the model's own answer to each question
            for q, qa in enumerate(item["questions"]):
                got = explain_item(model, Item("answer", image, [], question=qa["question"]), method, layer=layer)
                if shown is not None:
                    shown.append(got.explanation)
                row = base | {"kind": "answer", "target": got.labels[0], "position": q, "question": qa["question"],
                              "truth": qa["answer"], "score": float(got.explanation.score)}
                out.append((row | _scores(got.maps[0], qa["mask"]), got.maps[0]))
        else:  # the top class
            got = explain_item(model, Item("class", image, []), method, layer=layer)
            out.append((base | {"kind": "class", "target": got.labels[0], "position": 0,
                                "score": float(got.explanation.scores[0]), "pointing": None, "energy_ratio": None},
                        got.maps[0]))
    return out


def _manifest(options: Mapping[str, Any], shards: list[dict[str, Any]], n_items: int, *, complete: bool) -> dict:
    from .. import __version__

    return {"format": FORMAT, "version": __version__, "complete": complete, "options": dict(options),
            "items": n_items, "rows": sum(s["rows"] for s in shards), "shards": shards}


def _prepare(out: Path, options: Mapping[str, Any], n_items: int, *, resume: bool) -> None:
    """Rank 0, before any work: check ``out`` against ``resume``, clear stale temporary files, mark the run unfinished."""
    from .._io import write_json

    path = out / MANIFEST
    if path.exists():
        try:
            old = read_manifest(path)
        except ValueError as exc:
            raise InputError(f"{'resume' if resume else 'out'}: {exc}; it cannot be resumed: choose another "
                             "folder") from exc
        if not resume:
            raise InputError(f"out: {str(out)!r} already holds an explain-dataset run; pass --resume to finish or "
                             "skip it, or choose another folder")
        if old["options"] != dict(options):
            changed = sorted(k for k in set(old["options"]) | set(options) if old["options"].get(k) != options.get(k))
            raise InputError(f"resume: {str(out)!r} was written with other options ({', '.join(changed)} differ)")
        if old["complete"]:
            return
    elif out.exists() and any(out.iterdir()):
        raise InputError(f"out: {str(out)!r} is not empty and holds no explain-dataset run; choose another folder")
    for stale in list(out.glob(".maps-*.tmp")) + list(out.glob(".rows-*.tmp")) + list(out.glob(f".{MANIFEST}.*.tmp")):
        stale.unlink(missing_ok=True)
    write_json(path, _manifest(options, [], n_items, complete=False))


def explain_dataset(model: Any, data: Any, out: str | Path, *, method: str = "gradcam", layer: Any = None,
                    map_size: int | None = None, shard_size: int = 64, resume: bool = False,
                    runner: Runner | None = None, options: Mapping[str, Any] | None = None,
                    html: str | Path | None = None, html_items: int = 20) -> dict[str, Any]:
    """Explain every item of ``data`` and write rows, maps and the manifest to ``out``.

    Args:
        model: an ``mx.zoo`` model or ``mx.hf`` adapter (captioner, VQA model or classifier).
        data: a dataset of :mod:`mmexplain.evaluation.inputs` items.
        out: the output folder.
        method: a name of ``mx.explain.METHODS``.
        layer: the layer to explain (default the model's).
        map_size: side of the stored maps (default: each image's own (H, W)).
        shard_size: items per shard.
        resume: skip the shards a previous run finished (its options must match).
        runner: workers, device, dtype and rank (default one process, no workers).
        options: what produced the run (stored in the manifest, compared on resume).
        html: also write an interactive report (``mx.viz.write_report``) of the first
            ``html_items`` captions / answers that rank 0 explains in this run.

    Returns:
        The manifest (every rank returns it after the run).
    """
    from .items import adapter_of, inapplicable, kind_of

    runner = runner or Runner()
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard_size: expected an integer >= 1, got {shard_size!r}")
    if map_size is not None and (isinstance(map_size, bool) or not isinstance(map_size, int)
                                 or not 1 <= map_size <= MAX_MAP_SIZE):
        raise InputError(f"map_size: expected an integer in 1..{MAX_MAP_SIZE} or None, got {map_size!r}")
    out = Path(out)
    model = adapter_of(model)
    kind = kind_of(model)
    reason = inapplicable(model, [method]).get(method)
    if reason is not None:
        raise InputError(f"method: {reason}")
    n = len(data)
    if n == 0:
        raise InputError("data: no items to explain")
    options = dict(options or {}) | {"method": method, "map_size": map_size, "shard_size": shard_size}
    n_shards = math.ceil(n / shard_size)
    if runner.main:  # the first item, explained before anything is written: a wrong layer or method fails here
        _item_rows(model, kind, data[0], method=method, layer=layer, runner=runner)
        _prepare(out, options, n, resume=resume)
    runner.barrier()
    mine = [k for k in range(runner.rank, n_shards, runner.world_size) if not shard_files(out, k)[1].is_file()]
    indices = [i for k in mine for i in range(k * shard_size, min((k + 1) * shard_size, n))]
    rows: list[dict[str, Any]] = []
    maps: list[Tensor] = []
    done_items = 0
    shown: list[Any] | None = [] if html is not None and runner.main else None
    items = runner.bar(zip(indices, runner.loader(data, indices)), total=len(indices), desc="explain")
    for i, item in items:
        keep = shown if shown is not None and len(shown) < html_items else None
        for row, m in _item_rows(model, kind, item, method=method, layer=layer, runner=runner, shown=keep):
            rows.append(row)
            maps.append(_fit(m, (map_size, map_size) if map_size else tuple(item["size"])))
        done_items += 1
        if i + 1 == n or (i + 1) % shard_size == 0:
            write_shard(out, i // shard_size, rows, maps)
            rows, maps = [], []
    runner.report("explain-dataset", done_items)
    runner.barrier()
    if runner.main:
        import pyarrow.parquet as pq

        from .._io import write_json

        shards = []
        for k in range(n_shards):
            maps_file, rows_file = shard_files(out, k)
            shards.append({"shard": k, "items": [k * shard_size, min((k + 1) * shard_size, n)],
                           "rows": pq.read_metadata(str(rows_file)).num_rows,
                           "rows_file": rows_file.name, "maps_file": maps_file.name})
        write_json(out / MANIFEST, _manifest(options, shards, n, complete=True))
        if shown:
            from ..viz import write_report

            write_report(shown[:html_items], html, title=f"mmexplain explain-dataset: {method}")
    runner.barrier()
    return read_manifest(out / MANIFEST)
