"""Speed of the forward-only CAM methods: mmexplain vs torchcam and pytorch-grad-cam.

Score-CAM and Ablation-CAM on torchvision ResNet-50 (random init: timing does not depend on
the weights), batch 8, one class per sample, the same rows per forward pass for every
library (``--chunk``). Each library runs in the same process, the calls interleaved run by
run, so load from other processes hits all of them; the table shows the median seconds
per call over ``--runs`` runs and the largest absolute difference of each peer's maps from
mmexplain's (equal maps: ~1e-6).

Conventions bridged so the maps are comparable (see tests/test_methods.py): torchcam's
Score-CAM gets a ``reshape_transform`` that upsamples the layer (bilinear,
align_corners=False), so its masks are normalised after upsampling as in the paper and
ours; its maps are then at the image's size, and ours is compared as
``norm(ReLU(up(pre_relu)))``. pytorch-grad-cam's Score-CAM runs as shipped: its masks are
upsampled with align_corners=True, so its maps differ by ~1e-3 (the tests bridge that with
the same ``reshape_transform``; here it would cost memory: pytorch-grad-cam's hooks keep
the hooked activation of every masked forward, which the transform makes image-sized). torchcam has no Ablation-CAM. pytorch-grad-cam's progress
bars are silenced. "mmexplain reuse_prefix" runs the network before the layer on the B
inputs only and makes the ablated copies at the layer (valid for a backbone block followed
by the head; checked once per call).

Each Score-CAM / Ablation-CAM call runs K*B masked forwards (K = 2048 at ``layer4``): on a
CPU use a small image and an earlier layer.

Usage:
    python benchmarks/methods.py --device cuda                          # ResNet-50, 224x224, layer4
    python benchmarks/methods.py --size 32 --layer layer3 --runs 3 --flush-denormal   # two CPU cores, minutes
    python benchmarks/methods.py --threads 8 --chunk 64
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from collections.abc import Callable
from typing import Any


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed calls per (method, library); the median is shown")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=8, help="images per call")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--layer", default="layer4", help="explained ResNet-50 layer")
    parser.add_argument("--chunk", type=int, default=32, help="perturbed inputs per forward pass, every library")
    parser.add_argument("--flush-denormal", action="store_true",
                        help="torch.set_flush_denormal(True) for every library (CPU): masked inputs of a random-init "
                             "ResNet-50 produce denormal floats, which slow a CPU forward ~40x")
    return parser.parse_args()


def _calls(model: Any, layer: str, x: Any, classes: list[int], chunk: int) -> dict[tuple[str, str], Callable[[], Any]]:
    """(method, library) -> a call returning (B, H, W) maps comparable across libraries."""
    import pytorch_grad_cam as pgc
    import torch
    import torch.nn.functional as F
    import torchcam.methods as tc

    import mmexplain as mx
    from mmexplain.methods import upsample_and_normalize

    size = tuple(x.shape[-2:])
    target = mx.targets.ClassLogit(classes)
    module = model.get_submodule(layer)

    def up(a):
        return F.interpolate(a, size=size, mode="bilinear", align_corners=False)

    def pgc_targets():
        return [lambda out, c=c: out[..., c] for c in classes]

    def ours_score():
        res = mx.ScoreCAM(model, layer, batch_size=chunk)(x, target)
        return upsample_and_normalize(F.relu(up(res.pre_relu[:, None])[:, 0]), size)

    def torchcam_score():
        with tc.ScoreCAM(model, layer, batch_size=chunk, reshape_transform=up) as extractor:
            with torch.no_grad():
                scores = model(x)
            return extractor(classes, scores)[0]

    def pgc_score():
        with pgc.ScoreCAM(model=model, target_layers=[module]) as cam:  # its own masks: see the docstring
            cam.batch_size = chunk
            with contextlib.redirect_stderr(io.StringIO()):
                return torch.from_numpy(cam(input_tensor=x, targets=pgc_targets()))

    def ours_ablation():
        return mx.AblationCAM(model, layer, batch_size=chunk)(x, target).maps

    def ours_ablation_reuse():
        return mx.AblationCAM(model, layer, batch_size=chunk, reuse_prefix=True)(x, target).maps

    def pgc_ablation():
        with pgc.AblationCAM(model=model, target_layers=[module], batch_size=chunk) as cam:
            with contextlib.redirect_stderr(io.StringIO()):
                return torch.from_numpy(cam(input_tensor=x, targets=pgc_targets()))

    return {
        ("Score-CAM", "mmexplain"): ours_score,
        ("Score-CAM", "torchcam"): torchcam_score,
        ("Score-CAM", "pytorch-grad-cam"): pgc_score,
        ("Ablation-CAM", "mmexplain"): ours_ablation,
        ("Ablation-CAM", "mmexplain reuse_prefix"): ours_ablation_reuse,
        ("Ablation-CAM", "pytorch-grad-cam"): pgc_ablation,
    }


def main() -> None:
    args = _parse()
    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(device)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    classes = [(7 * i) % 1000 for i in range(args.batch)]
    calls = _calls(model, args.layer, x, classes, args.chunk)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    maps: dict[tuple[str, str], Any] = {}
    for _ in range(args.runs):
        for key, call in calls.items():
            sync()
            start = time.perf_counter()
            maps[key] = call()
            sync()
            seconds[key].append(time.perf_counter() - start)

    with torch.no_grad():
        probe = {}
        handle = model.get_submodule(args.layer).register_forward_hook(lambda m, i, o: probe.setdefault("a", o))
        try:
            model(x[:1])
        finally:
            handle.remove()
    k, u, v = probe["a"].shape[1:]
    print(f"ResNet-50 {args.layer} (K={k}, {u}x{v}), batch {args.batch} at {args.size}x{args.size}, "
          f"{k * args.batch} perturbed forwards per call, {args.chunk} rows per forward, "
          f"device {args.device}, {args.threads} threads, flush denormals {args.flush_denormal}, median of {args.runs} run(s)")
    print()
    print("| method | library | median s / call | x mmexplain | max abs diff of maps vs mmexplain |")
    print("| --- | --- | ---: | ---: | ---: |")
    for (method, library), times in seconds.items():
        ours = statistics.median(seconds[(method, "mmexplain")])
        median = statistics.median(times)
        diff = "-" if library == "mmexplain" else f"{float((maps[(method, library)].cpu() - maps[(method, 'mmexplain')].cpu()).abs().max()):.1e}"
        print(f"| {method} | {library} | {median:.2f} | {median / ours:.2f} | {diff} |")


if __name__ == "__main__":
    main()
