"""Relevancy (Chefer et al. 2021) of every word of a caption vs of one word.

For a T-word caption of an encoder-decoder captioner (ViT encoder + GPT-2 decoder with
cross-attention) the rows are:

- ``relevancy, 1 word``: ``Relevancy(model)(inputs, target_of_the_last_word)``, the unit of cost;
- ``relevancy, all T words (1 call)``: one forward with the recording kernel, one batched
  backward (``is_grads_batched``) over the recorded attentions, the rules for T targets at once;
- ``relevancy, per-word loop``: T single-word calls (T forwards, T backwards);
- ``grad-cam, all T words (1 call)``: ``mx.GradCAM`` on the encoder's final LayerNorm, for scale.

Models: ``tiny-ved`` (the shipped ShapeWorld captioner, 64 px, ViT 3 layers + GPT-2 2 layers,
width 64) and, with ``--models base``, a random-weight ViT-B/16 + 6-layer GPT-2 (768 wide) at
224 px (timing does not depend on the weights).

Timing: ``torch.set_num_threads(--threads)``; one warm-up, then ``--runs`` rounds in which the
rows run in turn (interleaved, so a load spike hits all of them); the table shows the median
seconds per caption and the ratio to one word.

Usage:
    python benchmarks/relevancy.py                     # tiny-ved, 7 runs
    python benchmarks/relevancy.py --models tiny-ved,base --runs 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mmexplain as mx  # noqa: E402
from mmexplain.adapters.grids import PatchGrid  # noqa: E402
from mmexplain.methods.relevancy import Relevancy  # noqa: E402
from mmexplain.targets import SequenceLogProb, WordLogProb  # noqa: E402


def tiny_ved() -> tuple[torch.nn.Module, dict, list]:
    """The shipped captioner, its caption of one ShapeWorld scene, one target per word."""

    cap = mx.zoo.load("tiny-ved", ROOT / "models" / "tiny-ved")
    pixels = cap.load_image(mx.world.generate(2_000_000, size=64).image)
    words = cap.generate(pixels)
    inputs, spans = cap.teacher_forced(pixels, words)
    return cap.model, inputs, [SequenceLogProb(t, positions=p) for p, t in spans]


def base_ved(words: int) -> tuple[torch.nn.Module, dict, list]:
    """Random ViT-B/16 + 6-layer GPT-2 (768 wide), 224 px, a caption of ``words`` tokens."""
    import transformers

    torch.manual_seed(0)
    enc = transformers.ViTConfig()  # ViT-B/16 at 224 px: 12 layers, 12 heads, 197 tokens
    dec = transformers.GPT2Config(n_layer=6, vocab_size=1000, n_positions=64, add_cross_attention=True,
                                  is_decoder=True, bos_token_id=1, eos_token_id=2)
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    model = transformers.VisionEncoderDecoderModel(config).eval()
    ids = torch.randint(3, 1000, (1, words + 1))
    ids[0, 0] = 1
    inputs = {"pixel_values": torch.rand(1, 3, 224, 224), "decoder_input_ids": ids}
    return model, inputs, [WordLogProb(k, int(ids[0, k + 1])) for k in range(words)]


def rows_for(model: torch.nn.Module, inputs: dict, targets: list) -> dict[str, Callable[[], object]]:
    layer = "encoder.layernorm"
    return {
        "relevancy, 1 word": lambda: Relevancy(model)(inputs, targets[-1]),
        f"relevancy, all {len(targets)} words (1 call)": lambda: Relevancy(model)(inputs, targets),
        "relevancy, per-word loop": lambda: [Relevancy(model)(inputs, t) for t in targets],
        f"grad-cam, all {len(targets)} words (1 call)":
            lambda: mx.GradCAM(model, layer, reshape=PatchGrid())(inputs, targets),
    }


def measure(rows: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    for fn in rows.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(runs):
        for name, fn in rows.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny-ved", help="comma-separated: tiny-ved, base")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--words", type=int, default=12, help="caption length of the base model")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    builders = {"tiny-ved": tiny_ved, "base": lambda: base_ved(args.words)}
    for name in args.models.split(","):
        if name not in builders:
            parser.error(f"--models: unknown model {name!r}; expected tiny-ved or base")
        model, inputs, targets = builders[name]()
        medians = measure(rows_for(model, inputs, targets), args.runs)
        unit = medians["relevancy, 1 word"]
        print(f"\n{name}: T = {len(targets)} words, {args.threads} thread(s), median of {args.runs} runs")
        print(f"| {'method':<34} | {'seconds':>8} | {'x 1 word':>8} |")
        print(f"|{'-' * 36}|{'-' * 9}:|{'-' * 9}:|")
        for row, seconds in medians.items():
            print(f"| {row:<34} | {seconds:8.4f} | {seconds / unit:8.2f} |")


if __name__ == "__main__":
    main()
