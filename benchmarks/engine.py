"""Speed and memory of one Grad-CAM call: mmexplain vs plain inference and peer libraries.

Prints one table per model (torchvision VGG-16 and ResNet-50, random init: timing does
not depend on the weights), batch 8 at 224x224, 2 threads by default:

- median ms/image over ``--runs`` calls after warm-up; the "x inference" time ratio
  is taken against plain no-grad inference calls *alternating* with the method's calls
  in the same process (paired), so load from other processes on shared cores hits both;
  the same ratio in process CPU time (``time.process_time``, all threads) is printed
  beside it: on a busy machine it is the steadier of the two;
- peak extra memory of a warm-up call and one more call of the method alone, over the
  model+input baseline.

Every (model, method) runs in its own fresh subprocess, so allocator caches and
imports of one method cannot inflate another's numbers.

Memory method, CPU: after the model, input and method object are built, the process
resets its resident-set high-water mark (``echo 5 > /proc/self/clear_refs``, Linux) and
reads ``VmRSS`` as the baseline; after two calls of the method it reads ``VmHWM``
from ``/proc/self/status``. Extra = VmHWM - baseline. On CUDA:
``torch.cuda.max_memory_allocated() - memory_allocated()`` after ``reset_peak_memory_stats``.

Goals (issue 2): mmexplain <= 1.10x inference time and <= 1.15x inference extra memory;
>= 2.5x faster than pytorch-grad-cam; 5 targets in one call <= 1.6x one target.

Usage:
    python benchmarks/engine.py                      # full table (takes minutes on 2 cores)
    python benchmarks/engine.py --runs 3 --models resnet50
    python benchmarks/engine.py --device cuda --threads 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = [
    "inference",
    "mmexplain",
    "pytorch-grad-cam",
    "captum",
    "torchcam",
    "mmexplain-5-targets-1-call",
    "mmexplain-5-targets-5-calls",
]
# Grad-CAM layer per model: the last convolutional block, as the papers and peers use
LAYERS = {"vgg16": "features.29", "resnet50": "layer4", "resnet18": "layer4", "vgg11": "features.19"}


# ----------------------------------------------------------------------------- worker
def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _build(method: str, model, layer_name: str, x, classes: list[int]) -> Callable[[], object]:
    """The call to time, with every import and extractor built outside the timed region."""
    import torch

    layer = model.get_submodule(layer_name)
    if method == "inference":

        def run():
            with torch.no_grad():
                return model(x)

        return run
    if method.startswith("mmexplain"):
        import mmexplain as mx

        cam = mx.GradCAM(model, layer_name)
        if method == "mmexplain":
            target = mx.targets.ClassLogit(classes)
            return lambda: cam(x, target)
        top5 = [mx.targets.TopClass(rank) for rank in range(5)]
        if method == "mmexplain-5-targets-1-call":
            return lambda: cam(x, top5)
        return lambda: [cam(x, t) for t in top5]
    if method == "pytorch-grad-cam":
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = GradCAM(model=model, target_layers=[layer])
        targets = [ClassifierOutputTarget(c) for c in classes]
        return lambda: cam(input_tensor=x, targets=targets)  # numpy (B, H, W), upsampled + normalised
    if method == "captum":
        from captum.attr import LayerAttribution, LayerGradCam

        gc = LayerGradCam(model, layer)
        size = tuple(x.shape[-2:])

        def run():
            attr = gc.attribute(x, target=classes, relu_attributions=True)  # (B, 1, u, v)
            return LayerAttribution.interpolate(attr, size, interpolate_mode="bilinear")

        return run
    if method == "torchcam":
        import torch.nn.functional as F
        from torchcam.methods import GradCAM

        extractor = GradCAM(model, target_layer=layer_name)
        size = tuple(x.shape[-2:])

        def run():
            scores = model(x)
            cams = extractor(class_idx=classes, scores=scores)[0]  # (B, u, v) normalised
            return F.interpolate(cams[:, None], size=size, mode="bilinear", align_corners=False)

        return run
    raise ValueError(f"method must be one of {METHODS}; got {method!r}")


def worker(args: argparse.Namespace) -> None:
    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = torchvision.models.get_model(args.model, weights=None).eval().to(device)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    classes = [(7 * i) % 1000 for i in range(args.batch)]
    run = _build(args.method, model, args.layer or LAYERS[args.model], x, classes)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # phase 1, memory: the method alone (warm-up + one call) after resetting the peak
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset VmHWM to the current RSS
        base = _rss_mb("VmRSS")
    run()  # warm-up
    run()
    sync()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb("VmHWM")

    # phase 2, time: the method and plain inference alternate, so a shared machine's load
    # drift hits both alike; the ratio is median(method) / median(paired inference)
    reference = _build("inference", model, args.layer or LAYERS[args.model], x, classes)
    reference()
    wall: dict[str, list[float]] = {"method": [], "inference": []}
    cpu: dict[str, list[float]] = {"method": [], "inference": []}
    for _ in range(args.runs):
        for key, fn in (("method", run), ("inference", reference)):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall[key].append(time.perf_counter() - t0)
            cpu[key].append(time.process_time() - c0)
    med = {f"{kind}_{key}": statistics.median(v[key]) for kind, v in (("wall", wall), ("cpu", cpu)) for key in v}
    result = {
        "ms_per_image": 1000 * med["wall_method"] / args.batch,
        "time_ratio": med["wall_method"] / med["wall_inference"],
        "cpu_ratio": med["cpu_method"] / med["cpu_inference"],
        "extra_mb": peak - base,
    }
    print(json.dumps(result))


# ----------------------------------------------------------------------------- driver
def _measure(args: argparse.Namespace, model: str, method: str) -> dict | str:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--worker", "--model", model, "--method", method,
        "--device", args.device, "--runs", str(args.runs), "--batch", str(args.batch),
        "--size", str(args.size), "--threads", str(args.threads),
    ]  # fmt: skip
    env = dict(os.environ)  # the worker imports mmexplain from this checkout
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return f"error: {last[:100]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per method (median); default 5")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="vgg16,resnet50")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--layer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return

    import torch

    print(
        f"# mmexplain engine benchmark: batch {args.batch}, {args.size}x{args.size}, device {args.device}, "
        f"{args.threads} threads, median of {args.runs} runs after warm-up, torch {torch.__version__}"
    )
    memory = "CUDA max_memory_allocated over baseline" if args.device.startswith("cuda") else (
        "peak RSS (VmHWM after reset via /proc/self/clear_refs) over model+input RSS")  # fmt: skip
    print(f"# extra memory = {memory}; each method in its own process\n")
    for model in args.models.split(","):
        rows = {m: _measure(args, model, m) for m in args.methods.split(",")}
        base = rows.get("inference")
        print(f"## {model} (random init, layer {LAYERS.get(model, '?')})\n")
        print("| method | ms/image (wall) | x inference (wall, paired) | x inference (CPU time, paired) | extra MB | x inference |")
        print("|---|---:|---:|---:|---:|---:|")
        for method, row in rows.items():
            if isinstance(row, str):
                print(f"| {method} | {row} | | | | |")
                continue
            m_ratio = "-"
            if isinstance(base, dict) and base["extra_mb"] > 0:
                m_ratio = f"{row['extra_mb'] / base['extra_mb']:.2f}x"
            print(
                f"| {method} | {row['ms_per_image']:.1f} | {row['time_ratio']:.2f}x | {row['cpu_ratio']:.2f}x "
                f"| {row['extra_mb']:.0f} | {m_ratio} |"
            )
        mm, pgc = rows.get("mmexplain"), rows.get("pytorch-grad-cam")
        print()
        if isinstance(mm, dict) and isinstance(pgc, dict):
            print(
                f"mmexplain vs pytorch-grad-cam: {pgc['time_ratio'] / mm['time_ratio']:.2f}x faster in wall time, "
                f"{pgc['cpu_ratio'] / mm['cpu_ratio']:.2f}x in CPU time (ratios of paired ratios; goal >= 2.5x)"
            )
        one, five = rows.get("mmexplain-5-targets-1-call"), rows.get("mmexplain-5-targets-5-calls")
        if isinstance(mm, dict) and isinstance(one, dict):
            line = (
                f"5 targets (top-5 classes), wall/CPU time vs one target: one call "
                f"{one['time_ratio'] / mm['time_ratio']:.2f}x/{one['cpu_ratio'] / mm['cpu_ratio']:.2f}x (goal <= 1.6x)"
            )
            if isinstance(five, dict):
                line += f"; five calls {five['time_ratio'] / mm['time_ratio']:.2f}x/{five['cpu_ratio'] / mm['cpu_ratio']:.2f}x"
            print(line)
        print()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
