"""Network Dissection of one layer: :func:`dissect`, and running a model up to that layer.

:func:`dissect` streams the dataset twice (a threshold pass with a fixed-size
histogram per unit, :class:`~mmexplain.dissect.quantile.StreamingQuantile`; then an
IoU pass, :class:`~mmexplain.dissect.iou.IoUTally`), so memory does not grow with the
dataset, which must be re-iterable (a list, a ``Dataset``-like object,
``mx.world.concept_dataset(n)``, :class:`~mmexplain.dissect.datasets.BrodenDataset`),
not a one-shot generator.

The helpers here run a model only as far as the dissected layer: the recording hook
(:func:`recording`), batching (:func:`batches`), and :func:`image_forward` for the image
branch of vision-language models. :mod:`mmexplain.dissect.top` shares them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..methods.base import module_name
from ..methods.hooks import Site
from .iou import IoUTally
from .labels import NeuronLabels, UnitLabel
from .quantile import StreamingQuantile
from ..errors import InputError, InputTypeError

if TYPE_CHECKING:
    from ..runner import Runner

__all__ = ["dissect", "image_forward"]

ForwardFn = Callable[[nn.Module, Tensor], Any]


class _StopForward(Exception):
    """Raised by the recording hook once the layer has run: the rest of the model is not needed."""


def default_forward(model: nn.Module, images: Tensor) -> Any:
    """``model(images)``: the forward :func:`dissect` uses unless given another."""
    return model(images)


def image_forward(model: nn.Module, images: Tensor) -> Any:
    """Run a vision-language model on images alone, for dissecting its image branch.

    Calls ``model(images, placeholder)`` with a ``(B, 1)`` long tensor of zeros as the
    text (caption tokens or question ids) when ``model.forward`` takes a second
    argument. :func:`dissect` stops the forward as soon as the dissected layer has
    run, so the placeholder is never read when that layer lies in the image branch
    (as ``default_layer`` of the zoo's captioner and VQA models does); do not use it
    for layers after the text enters.

    Example:
        >>> labels = mx.dissect(vqa, vqa.default_layer, data, forward=mx.dissect.image_forward)  # doctest: +SKIP
    """
    import inspect

    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        params = []
    if len(params) >= 2:
        return model(images, torch.zeros(images.shape[0], 1, dtype=torch.long, device=images.device))
    return model(images)


@contextlib.contextmanager
def recording(model: nn.Module, module: nn.Module, forward: ForwardFn) -> Iterator[Callable[[Tensor], Tensor]]:
    """Yield ``run(images) -> (B, K, h, w)`` activations of ``module``; the hook and the
    eval switch live only inside the ``with``, and the model is restored on exit."""
    store: dict[str, Tensor] = {}
    site = Site(module, module_name(model, module))

    def take(out: Tensor) -> None:
        store["out"] = out.detach()
        raise _StopForward

    def run(images: Tensor) -> Tensor:
        store.clear()
        with torch.inference_mode():
            try:
                with site.hooked(take):
                    forward(model, images)
            except _StopForward:
                pass
            except TypeError as exc:
                if forward is not default_forward:
                    raise
                raise InputTypeError(f"forward: model(images) failed ({exc}); for a model that takes more inputs pass "
                                "forward=mmexplain.dissect.image_forward or your own forward(model, images)") from exc
        out = store.pop("out")
        if out.dim() != 4:
            raise InputError(f"layer: expected a (B, K, h, w) convolutional activation, got {tuple(out.shape)}")
        return out.float()

    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield run
    finally:
        for m, training in flags:
            m.training = training


def batches(dataset: Iterable[Any], batch_size: int, device: torch.device, *, desc: str,
            progress: bool) -> Iterator[tuple[Tensor, list[Mapping[str, Tensor]]]]:
    """Stack consecutive items of the same image size into batches.

    Yields:
        ``(images (B, 3, H, W) on device, [each item's {concept: (H, W) mask}])``.
    """
    from tqdm import tqdm

    total = len(dataset) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]
    images: list[Tensor] = []
    masks: list[Mapping[str, Tensor]] = []
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for n, item in enumerate(dataset):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise InputTypeError(f"dataset: item {n} must be (image, {{concept: mask}}), got {type(item).__name__}")
            image, concept_masks = item
            if not isinstance(image, Tensor) or image.dim() != 3:
                raise InputTypeError(f"dataset: item {n}'s image must be a (3, H, W) tensor, got "
                                f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
            if not isinstance(concept_masks, Mapping):
                raise InputTypeError(f"dataset: item {n}'s concepts must be a dict {{name: (H, W) mask}}, "
                                f"got {type(concept_masks).__name__}")
            for concept, mask in concept_masks.items():
                if not isinstance(mask, Tensor) or mask.dim() != 2 or 0 in mask.shape:
                    got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                    raise InputError(f"dataset: item {n}'s mask {concept!r} must be a non-empty (H, W) tensor, got {got}")
            if images and image.shape != images[0].shape:
                yield torch.stack(images).to(device), masks
                bar.update(len(images))
                images, masks = [], []
            images.append(image)
            masks.append(concept_masks)
            if len(images) == batch_size:
                yield torch.stack(images).to(device), masks  # (B, 3, H, W)
                bar.update(len(images))
                images, masks = [], []
        if images:
            yield torch.stack(images).to(device), masks
            bar.update(len(images))


def resolve(model: nn.Module, layer: str | nn.Module) -> tuple[nn.Module, str]:
    """The layer's module and its dotted name (``layer`` given as either)."""
    from ..methods import resolve_layer

    module = resolve_layer(model, layer)
    name = layer if isinstance(layer, str) else next(n for n, m in model.named_modules() if m is module)
    return module, name


def model_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The device to run on: ``device`` if given (it must hold the model), else the model's."""
    own = next((p.device for p in model.parameters()), None)
    if device is None:
        return own or torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device: expected a torch device, got {device!r}") from exc
    if own is not None and own.type != dev.type:
        raise InputError(f"device: the model's parameters are on {own}, not {dev}; move the model first "
                         f"(model.to({str(dev)!r})) — dissect leaves the model where it is")
    return dev


def _autocast(forward: ForwardFn, runner: Runner) -> ForwardFn:
    """``forward`` run under the runner's autocast dtype."""
    def run(model: nn.Module, images: Tensor) -> Any:
        with runner.autocast():
            return forward(model, images)

    return run


def check_reiterable(dataset: Any) -> None:
    """Reject a one-shot iterator: :func:`dissect` reads the dataset twice."""
    if iter(dataset) is dataset:
        raise InputTypeError("dataset: a one-shot iterator cannot be read twice; pass a list, a Dataset-like object "
                        "or mx.world.concept_dataset(n)")


def resolve_categories(dataset: Any, categories: Mapping[str, str] | None) -> Mapping[str, str]:
    """``categories`` if given, else ``dataset.categories`` if the dataset carries one, else ``{}``."""
    where = "categories"
    if categories is None:
        categories, where = getattr(dataset, "categories", None), "dataset.categories"
    if categories is None:
        return {}
    if not isinstance(categories, Mapping):
        raise InputTypeError(f"{where}: expected a dict {{concept: category}} or None, got {type(categories).__name__}")
    return categories


_LADDER = 1 + 1e-6


def _start_histogram(acts: Tensor, bins: int) -> StreamingQuantile:
    """A histogram whose starting range is on a fixed ladder: R_k = c 2^e, the smallest above max |a_k|.

    Ranges on one ladder (c = 1 + 1e-6, so that values such as 1.0 or 0.5 fall inside
    a bin, not on its edge) make every process's bins nest in every other's, so the
    histograms of several ranks merge (:func:`_merge_histogram`) into the histogram
    one process would have built; R_k <= 2 c max |a_k| keeps the error bound of
    :class:`StreamingQuantile` (to a factor c).
    """
    absmax = acts.detach().abs().amax(dim=(0, 2, 3)).double().cpu()  # (K,)
    exponent = torch.floor(torch.log2(absmax.clamp(min=2.0 ** -40) / _LADDER)) + 1  # c 2^e > absmax
    return StreamingQuantile(acts.shape[1], bins=bins, radius=_LADDER * torch.pow(2.0, exponent).to(torch.float64))


def _merge_histogram(hist: StreamingQuantile, runner: Runner) -> StreamingQuantile:
    """Every rank's histogram merged, in rank order (the same on every rank): ``StreamingQuantile.merge``."""
    parts = runner.gather(hist)
    merged = StreamingQuantile(hist.num_units, bins=hist.bins)
    for part in parts:
        merged.merge(part)
    return merged


def _merge_concepts(concepts: dict[str, tuple[int, int]], runner: Runner | None) -> list[str]:
    """The concept names in order of first appearance (item index, position in the item) over all ranks."""
    first: dict[str, tuple[int, int]] = {}
    for part in runner.gather(concepts) if runner is not None else [concepts]:
        for name, where in part.items():
            first[name] = min(where, first.get(name, where))
    return sorted(first, key=first.__getitem__)


def _sharded(dataset: Any, runner: Runner | None) -> tuple[Any, Callable[[int], int]]:
    """This rank's items (through the runner's DataLoader) and local index -> dataset index."""
    if runner is None:
        return dataset, lambda n: n
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise InputTypeError("dataset: a runner needs a dataset with len() and indexing, got "
                        f"{type(dataset).__name__}")
    mine = runner.shard(len(dataset))
    if len(mine) == 0:
        raise InputError(f"dataset: {len(dataset)} items cannot be split over {runner.world_size} processes")
    return runner.loader(dataset, mine), mine.__getitem__


def dissect(model: nn.Module, layer: str | nn.Module, dataset: Iterable[tuple[Tensor, Mapping[str, Tensor]]], *,
            quantile: float = 0.005, iou_threshold: float = 0.04, batch_size: int = 32,
            device: str | torch.device | None = None, categories: Mapping[str, str] | None = None,
            forward: ForwardFn | None = None, bins: int = 4096, progress: bool = True,
            runner: Runner | None = None) -> NeuronLabels:
    """Network Dissection: name every unit of ``layer`` by the concept it detects best.

    Bau, Zhou, Khosla, Oliva, Torralba, "Network Dissection: Quantifying
    Interpretability of Deep Visual Representations", CVPR 2017:

        T_k : P(a_k > T_k) = quantile over every position of every image
        M_k(x) = upsample_bilinear(A_k(x), mask size) > T_k
        IoU_{k,c} = sum_x |M_k(x) ∩ L_c(x)| / sum_x |M_k(x) ∪ L_c(x)|
        label_k = argmax_c IoU_{k,c};  detector iff IoU_{k,label_k} > iou_threshold

    Two streaming passes over ``dataset``: the first fills a fixed-size histogram per
    unit (:class:`StreamingQuantile`; |T̂_k - T_k| <= its bin width, recorded as
    ``threshold_error``), the second accumulates (K, C) intersection and union counts.
    Memory is independent of the dataset's length. Like NetDissect, the union for
    concept c sums only over images where c's category is annotated (where the item
    has some concept of that category); ShapeWorld annotates all of them everywhere.
    Without categories every concept falls in the one category ``"concept"``: an item
    that lists any concept counts as annotated for all.

    Departures from NetDissect: the quantile is estimated from a histogram (bounded
    error) instead of a sample-based quantile; units are numbered from 0.

    With a ``runner`` (:class:`~mmexplain.runner.Runner`) the items are
    loaded by its DataLoader workers onto its device, the forward runs under its
    autocast dtype (activations are read in float32), and under torchrun each rank
    takes the items ``rank::world_size``; the histograms (on power-of-two ranges, so
    their bins nest), the image count and the IoU counts are all-reduced, so every
    rank returns exactly the labels of a single-process run.

    Args:
        model: the network; put in eval mode during the call and restored after.
        layer: dotted module name or the module; its output must be (B, K, h, w).
        dataset: re-iterable of ``(image (3, H, W), {concept: (H, W) bool mask})``.
        quantile: top fraction of activations above T_k.
        iou_threshold: IoU above which a unit counts as a detector.
        batch_size: images per forward pass.
        device: where to run (default: the model's parameters' device; the model is
            never moved).
        categories: ``{concept: category}``; default ``dataset.categories`` when the
            dataset carries it (``mx.world.concept_dataset`` and :class:`BrodenDataset`
            do). A concept without a category gets ``"concept"``.
        forward: ``forward(model, images)`` runs the model (default ``model(images)``);
            for models that take more inputs. The forward stops once the layer has run.
        bins: histogram bins per unit (multiple of 4).
        progress: show a tqdm progress bar (with a runner: on rank 0 only).
        runner: workers, device, dtype and rank; ``device`` must then be None.

    Returns:
        :class:`NeuronLabels` with one :class:`UnitLabel` per channel.

    Example:
        >>> data = mx.world.concept_dataset(200)                              # doctest: +SKIP
        >>> labels = mx.dissect(model, "features.6", data, progress=False)    # doctest: +SKIP
        >>> print(labels.summary())                                           # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(quantile, (int, float)) or not 0 < quantile < 1:
        raise InputError(f"quantile: expected a fraction in (0, 1), got {quantile!r}")
    if not isinstance(iou_threshold, (int, float)) or not 0 <= iou_threshold < 1:
        raise InputError(f"iou_threshold: expected a number in [0, 1), got {iou_threshold!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size: expected a positive int, got {batch_size!r}")
    check_reiterable(dataset)
    module, layer_name = resolve(model, layer)
    if runner is not None and device is not None:
        raise InputError("device: give the device through the runner (runner.device), not both")
    dev = model_device(model, device if runner is None else runner.device)
    forward = forward or default_forward
    categories = resolve_categories(dataset, categories)
    if runner is not None:
        progress = progress and runner.main
        forward = _autocast(forward, runner)
    items, where = _sharded(dataset, runner)

    with recording(model, module, forward) as run:
        # pass 1: per-unit thresholds and the concept vocabulary
        hist: StreamingQuantile | None = None
        concepts: dict[str, tuple[int, int]] = {}  # name -> (dataset index, position) of its first appearance
        n_images = 0
        for images, masks in batches(items, batch_size, dev, desc="dissect 1/2 thresholds", progress=progress):
            acts = run(images)  # (B, K, h, w)
            if hist is None:
                hist = _start_histogram(acts, bins)
            elif acts.shape[1] != hist.num_units:
                raise InputError(f"layer: channel count changed from {hist.num_units} to {acts.shape[1]}")
            hist.update(acts.transpose(0, 1).reshape(acts.shape[1], -1))  # (K, B h w)
            for b, m in enumerate(masks):
                for p, name in enumerate(m):
                    concepts.setdefault(name, (where(n_images + b), p))
            n_images += images.shape[0]
        if hist is None:
            raise InputError("dataset: no images")
        local_images = n_images
        if runner is not None and runner.distributed:
            hist = _merge_histogram(hist, runner)
            n_images = int(runner.sum(torch.tensor([n_images], dtype=torch.float64)).item())
        names = _merge_concepts(concepts, runner if runner is not None and runner.distributed else None)
        if not names:
            raise InputError("dataset: no concept masks in any item")
        thresholds = hist.upper(quantile)  # (K,) float64
        errors = hist.bin_width  # (K,)
        k = hist.num_units

        # pass 2: IoU accumulators
        cats = [str(categories.get(c, "concept")) for c in names]  # (C,)
        tally = IoUTally(thresholds, names, cats, dev)
        seen = 0
        for images, masks in batches(items, batch_size, dev, desc="dissect 2/2 IoU", progress=progress):
            tally.add(run(images), masks, seen)  # acts (B, K, h, w)
            seen += images.shape[0]
        if seen != local_images:
            raise InputError(f"dataset: the first pass had {local_images} images, the second {seen}; "
                             "it must be re-iterable")
        if runner is not None and runner.distributed:
            tally.inter, tally.mask_area, tally.unit_area = (runner.sum(t) for t in
                                                             (tally.inter, tally.mask_area, tally.unit_area))

    iou = tally.iou()  # (K, C)
    best = iou.argmax(dim=1)  # (K,) first best on ties
    units = []
    for u in range(k):
        j = int(best[u])
        units.append(UnitLabel(u, names[j], cats[j], float(iou[u, j]), float(thresholds[u]),
                               float(errors[u]), {name: float(iou[u, i]) for i, name in enumerate(names)}))
    return NeuronLabels(units, categories=dict(zip(names, cats)), layer=layer_name,
                        quantile=float(quantile), iou_threshold=float(iou_threshold), n_images=n_images)
