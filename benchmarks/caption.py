"""Per-word caption maps: mmexplain (all T words in one call) vs one Grad-CAM call per word.

For a T-word caption (T = 10 by default) every method produces the T Grad-CAM maps of
the words' log-probabilities, upsampled to the image:

- ``mmexplain all T (1 call)``: ``mx.GradCAM(model, layer)((image, tokens), [WordLogProb(t, w_t) ...])``
  — one forward (no graph before the layer), one batched backward (``is_grads_batched``);
- ``mmexplain all T (1 call, targets_in_batch)``: the same, with one copy of the layer's
  activation per word along the batch and one ordinary backward (the CNN still runs once);
- ``mmexplain explain_caption``: the high-level call, same engine (shipped captioner only);
- ``mmexplain 1 word``: one single-word call (the last word), the unit of cost;
- ``mmexplain per-word loop``: T single-word engine calls;
- ``pytorch-grad-cam loop``: ``pytorch_grad_cam.GradCAM`` on a wrapper module that takes
  the image and returns the (L, V) log-probabilities for the fixed tokens, one call per
  word with a per-word target ``out -> out[t, w_t]`` (as its users do for captioners);
- ``captum loop``: ``captum.attr.LayerGradCam`` on the same log-probabilities with a
  ``(t, w_t)`` tuple target, one call per word, then ``LayerAttribution.interpolate``.

Models: (a) the shipped ShapeWorld captioner (``models/captioner``; a random-weight one
from the default config when it is not shipped), 96 px; (b) a neuraltalk2-sized Show
and Tell captioner built here: VGG-16 features at 224 px (random weights; timing does
not depend on them), fc7 -> 512-d image embedding fed as the first LSTM input, word
embedding 512, LSTM 512, vocabulary 9,487 words; Grad-CAM layer ``vgg.features.29``
(the last conv ReLU, 14 x 14), as in the Grad-CAM paper's captioning experiments.

Timing: ``torch.set_num_threads(2)`` by default; one warm-up, then ``--runs`` rounds in
which the methods run in turn (interleaved, so a load spike hits all of them); the
table shows the median seconds per caption and ratios.

What the table checks: (a) all T maps >= 3x faster than the per-word loop of the peers
at T = 10; (b) all T maps <= 1.5x the cost of one single-word call.

Usage:
    python benchmarks/caption.py                       # both models, T = 10, 5 runs
    python benchmarks/caption.py --models shipped --runs 9
    python benchmarks/caption.py --models neuraltalk2 --runs 3 --words 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mmexplain as mx  # noqa: E402
from mmexplain.targets import WordLogProb  # noqa: E402


# ----------------------------------------------------------------------------- models


class NeuralTalk2(nn.Module):
    """neuraltalk2-sized Show and Tell captioner: VGG-16 -> fc7 -> 512, LSTM 512 (Karpathy & Fei-Fei 2015).

    ``forward(images (B, 3, 224, 224), tokens (B, L)) -> (B, L, V)``: the image embedding
    is the LSTM's first input, then the tokens; logits[:, t] predicts the token after
    tokens[:, t] (the image step's output is dropped), as the zoo captioner's convention.
    """

    def __init__(self, vocab_size: int = 9487, hidden: int = 512) -> None:
        super().__init__()
        import torchvision

        self.vgg = torchvision.models.vgg16(weights=None)
        self.vgg.classifier = self.vgg.classifier[:-1]  # up to fc7 (4096)
        self.image_embed = nn.Linear(4096, hidden)
        self.embed = nn.Embedding(vocab_size, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        f = self.image_embed(self.vgg(images))  # (B, E)
        x = torch.cat([f[:, None], self.embed(tokens)], dim=1)  # (B, 1+L, E)
        h, _ = self.lstm(x)  # (B, 1+L, H)
        return self.out(h[:, 1:])  # (B, L, V)


def shipped_captioner() -> tuple[nn.Module, str]:
    try:
        return mx.zoo.load("captioner"), "shipped weights"
    except FileNotFoundError:
        return mx.zoo.new("captioner", seed=0), "random weights (models/captioner not shipped)"


# ----------------------------------------------------------------------------- methods


class _LogProbs(nn.Module):
    """Image -> (B, L, V) log-probabilities of the captioner for fixed tokens (the peers' model wrapper)."""

    def __init__(self, model: nn.Module, tokens: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.tokens = tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, self.tokens.expand(images.shape[0], -1)).log_softmax(-1)


class _WordTarget:
    """pytorch-grad-cam target: the log-probability of word ``token`` at logit position ``t``."""

    def __init__(self, t: int, token: int) -> None:
        self.t, self.token = t, token

    def __call__(self, output: torch.Tensor) -> torch.Tensor:  # output: (L, V) of one sample
        return output[self.t, self.token]


def build_methods(model: nn.Module, layer_name: str, image: torch.Tensor, tokens: torch.Tensor,
                  *, zoo_caption: str | None = None) -> dict[str, Callable[[], object]]:
    """The timed calls; everything else (imports, extractors, wrappers) is built here."""
    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM as PGCGradCAM

    words = tokens[0, 1:].tolist()  # w_1 .. w_T
    size = tuple(image.shape[-2:])
    layer = model.get_submodule(layer_name)
    cam = mx.GradCAM(model, layer_name)
    targets = [WordLogProb(t, w) for t, w in enumerate(words)]
    wrapper = _LogProbs(model, tokens).eval()
    pgc = PGCGradCAM(model=wrapper, target_layers=[layer])
    captum = LayerGradCam(wrapper, layer)

    def captum_loop():
        out = []
        for t, w in enumerate(words):
            attr = captum.attribute(image, target=(t, w), relu_attributions=True)  # (1, 1, u, v)
            out.append(LayerAttribution.interpolate(attr, size, interpolate_mode="bilinear"))
        return out

    n = len(words)
    methods: dict[str, Callable[[], object]] = {
        "mmexplain all T (1 call)": lambda: cam((image, tokens), targets),
        "mmexplain all T (1 call, targets_in_batch)": lambda: cam((image, tokens.repeat(n, 1)), targets, targets_in_batch=True),
        "mmexplain 1 word": lambda: cam((image, tokens), targets[-1]),
        "mmexplain per-word loop": lambda: [cam((image, tokens), t) for t in targets],
        "pytorch-grad-cam loop": lambda: [pgc(input_tensor=image, targets=[_WordTarget(t, w)]) for t, w in enumerate(words)],
        "captum loop": captum_loop,
    }
    if zoo_caption is not None:
        methods["mmexplain explain_caption"] = lambda: mx.explain_caption(model, image[0], zoo_caption)
    return methods


def time_methods(methods: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median seconds per call of each method, interleaved rounds after one warm-up each."""
    for run in methods.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(runs):
        for name, run in methods.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def check_agreement(model: nn.Module, layer_name: str, image: torch.Tensor, tokens: torch.Tensor) -> float:
    """Max |mmexplain raw - Captum raw| over the words, and vs the words-in-batch-axis maps (all the same maps)."""
    from captum.attr import LayerGradCam

    words = tokens[0, 1:].tolist()
    res = mx.GradCAM(model, layer_name)((image, tokens), [WordLogProb(t, w) for t, w in enumerate(words)])
    gc = LayerGradCam(_LogProbs(model, tokens).eval(), model.get_submodule(layer_name))
    diffs = [(res.raw[t, 0] - gc.attribute(image, target=(t, w), relu_attributions=True)[0, 0].detach()).abs().max()
             for t, w in enumerate(words)]
    n = len(words)  # the words through the batch axis: one activation copy per word, one ordinary backward
    batched = mx.GradCAM(model, layer_name)((image, tokens.repeat(n, 1)), [WordLogProb(t, w) for t, w in enumerate(words)],
                                            targets_in_batch=True)
    diffs.append((batched.raw - res.raw).abs().max())
    return float(max(diffs))


def report(title: str, medians: dict[str, float], words: int) -> None:
    # the faster of the two one-forward paths (explain_caption picks targets_in_batch for zoo captioners)
    best = min(("mmexplain all T (1 call)", "mmexplain all T (1 call, targets_in_batch)"), key=medians.__getitem__)
    all_t = medians[best]
    one = medians["mmexplain 1 word"]
    print(f"## {title}\n")
    print(f"| method ({words} word maps) | s / caption | x {best} |")
    print("|---|---:|---:|")
    for name, s in medians.items():
        print(f"| {name} | {s:.3f} | {s / all_t:.2f}x |")
    loops = {k: medians[k] for k in ("pytorch-grad-cam loop", "captum loop", "mmexplain per-word loop")}
    print()
    print(f"- all {words} maps in one call ({best}) vs per-word loops: " + ", ".join(
        f"{v / all_t:.2f}x faster than {k}" for k, v in loops.items()))
    print(f"- all {words} maps / one single-word call: {all_t / one:.2f}x\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="shipped,neuraltalk2", help="comma-separated: shipped, neuraltalk2")
    parser.add_argument("--words", type=int, default=10, help="caption length T (default 10)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (median); default 5")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# per-word caption maps, T = {args.words}, batch 1, {args.threads} threads, median of {args.runs} "
          f"interleaved runs after 1 warm-up, torch {torch.__version__}\n")
    for which in args.models.split(","):
        if which == "shipped":
            model, how = shipped_captioner()
            scene = next(s for s in (mx.world.generate(seed) for seed in mx.world.split_seeds("test", 200))
                         if len(s.caption.split()) == args.words) if args.words in (4, 10, 16) else None
            if scene is None:
                raise SystemExit("--words: ShapeWorld captions have 4, 10 or 16 words")
            image = scene.image[None]  # (1, 3, 96, 96)
            tokens = torch.tensor([[model.vocab.bos, *model.vocab.encode(scene.caption.split())]])  # (1, T+1)
            layer = model.default_layer
            title = f"(a) ShapeWorld captioner, {how}, 96 px, layer {layer}: \"{scene.caption}\""
            methods = build_methods(model, layer, image, tokens, zoo_caption=scene.caption)
        elif which == "neuraltalk2":
            torch.manual_seed(0)
            model = NeuralTalk2().eval()
            image = torch.rand(1, 3, 224, 224)
            tokens = torch.cat([torch.zeros(1, 1, dtype=torch.long), torch.randint(1, 9487, (1, args.words))], dim=1)
            layer = "vgg.features.29"
            title = f"(b) neuraltalk2-sized captioner (VGG-16 224 px + LSTM 512, random weights), layer {layer}"
            methods = build_methods(model, layer, image, tokens)
        else:
            raise SystemExit(f"--models: unknown model {which!r}; expected shipped, neuraltalk2")
        diff = check_agreement(model, layer, image, tokens)
        medians = time_methods(methods, args.runs)
        report(title + f"; max |mmexplain - Captum| raw map difference {diff:.1e}", medians, args.words)


if __name__ == "__main__":
    main()
