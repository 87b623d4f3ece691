"""Per-word maps of an LLM-based VLM: all T words in one call vs T single-word calls, time and memory.

Models: the shipped ``models/tiny-vlm`` (``mx.zoo.load("tiny-vlm")``; an untrained one of the
same architecture when it is not there) and a random-weight ``LlavaForConditionalGeneration``
of about 0.5B parameters built from a config here (CLIP ViT-B/32-like tower at 224 px,
Qwen2-0.5B-like Llama LM with a 151,936-token vocabulary; nothing downloads).

Rows, for a caption of T words (one teacher-forced forward each call):

* one word: ``GradCAM`` of the first word alone;
* T words, one call: one forward, one batched backward (``is_grads_batched``) over the T words;
* T single-word calls: T forwards, T backwards (what a per-target library does);
* T words, words_per_pass=k: one forward, the batched backward k words at a time over the
  retained graph (the engine option proposed as ``targets_per_backward``; here a subclass).

Time: the median of ``--runs`` calls. Memory: the peak resident memory a call adds on top of the
model (after one warm-up call), sampled every millisecond in a fresh process per row (CPU).

Usage:
    python benchmarks/vlm.py                 # both models, prints a markdown table
    python benchmarks/vlm.py --small-only    # the tiny VLM only
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mmexplain as mx  # noqa: E402
from mmexplain.methods import GradCAM  # noqa: E402

CAPTION = "a small red circle left of a large blue square"
ROWS = ("one word", "T words, one call", "T single-word calls", "T words, words_per_pass=2")


class ChunkedGradCAM(GradCAM):
    """GradCAM whose batched backward takes ``words_per_pass`` targets at a time over one retained graph."""

    def __init__(self, *args, words_per_pass: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.words_per_pass = words_per_pass

    def _gradients(self, totals: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        n = totals.shape[0]
        step = self.words_per_pass or n
        if step >= n:
            return GradCAM._gradients(totals, inputs)
        eye = torch.eye(n, dtype=totals.dtype, device=totals.device)  # (N, N)
        parts = [torch.autograd.grad(totals, inputs, grad_outputs=eye[i:i + step], is_grads_batched=True,
                                     retain_graph=i + step < n, allow_unused=True) for i in range(0, n, step)]
        return [None if parts[0][j] is None else torch.cat([p[j] for p in parts]) for j in range(len(inputs))]


def tiny_vlm():
    from mmexplain.zoo import tiny_vlm as zoo_vlm

    folder = ROOT / "models" / "tiny-vlm"
    vlm = zoo_vlm.load(folder) if (folder / "model.safetensors").is_file() else zoo_vlm.new()
    return vlm, mx.world.generate(mx.world.split_seeds("test", 1)[0], size=64).image, "tiny-vlm"


def llava_05b():
    """A random LLaVA of ~0.5B parameters: CLIP ViT-B/32-like tower (224 px, 7 x 7 patches), Qwen2-0.5B-like LM."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, \
        LlavaForConditionalGeneration, LlavaProcessor

    from mmexplain.zoo.tiny_vlm import CHAT_TEMPLATE, build_tokenizer

    tok = build_tokenizer()
    ip = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=32, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
    vision = CLIPVisionConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                              image_size=224, patch_size=32)
    text = LlamaConfig(vocab_size=151_936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=512,
                       tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    vlm = mx.hf.adapter(model, proc, prompt="describe the image")
    return vlm, torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0)), "LLaVA ~0.5B (random)"


MODELS = {"tiny": tiny_vlm, "0.5b": llava_05b}


def setup(which: str):
    vlm, image, label = MODELS[which]()
    pixels = vlm.load_image(image)
    words = vlm.split_words(CAPTION)
    inputs, spans = vlm.teacher_forced(pixels, words)
    targets = [mx.targets.SequenceLogProb(t, positions=p) for p, t in spans]
    reshape = vlm.reshape_for(pixels)
    return vlm, inputs, targets, reshape, label


def run_row(row: str, vlm, inputs, targets, reshape) -> None:
    """One call of ``row`` (maps of the words it explains)."""
    if row == "one word":
        GradCAM(vlm.model, vlm.default_layer, reshape=reshape)(inputs, targets[:1])
    elif row == "T words, one call":
        GradCAM(vlm.model, vlm.default_layer, reshape=reshape)(inputs, targets)
    elif row == "T single-word calls":
        cam = GradCAM(vlm.model, vlm.default_layer, reshape=reshape)
        for t in targets:
            cam(inputs, [t])
    else:
        ChunkedGradCAM(vlm.model, vlm.default_layer, reshape=reshape, words_per_pass=2)(inputs, targets)


def resident_mib() -> float:
    """The process's resident memory now (Linux ``/proc/self/statm``), MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_child(which: str, row: str) -> None:
    """In a fresh process: the peak resident memory ``row`` adds over the model after one forward (MiB).

    A thread samples the resident memory every millisecond during the call.
    """
    import threading

    vlm, inputs, targets, reshape, _ = setup(which)
    run_row("one word", vlm, inputs, targets, reshape)  # transformers' own hooks, allocator warm
    base, peak, done = resident_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_mib())
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        run_row(row, vlm, inputs, targets, reshape)
    finally:
        done.set()
        thread.join()
    print(json.dumps({"extra_mib": max(0.0, peak[0] - base)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed calls per row on the tiny VLM (median)")
    parser.add_argument("--runs-large", type=int, default=2, help="timed calls per row on the 0.5B model")
    parser.add_argument("--small-only", action="store_true", help="the tiny VLM only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak", nargs=2, metavar=("MODEL", "ROW"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.peak:
        peak_child(args.peak[0], args.peak[1])
        return 0
    lines = ["| model | params | image tokens | T | row | time s (median) | x one word | extra peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for which in (["tiny"] if args.small_only else ["tiny", "0.5b"]):
        vlm, inputs, targets, reshape, label = setup(which)
        params = sum(p.numel() for p in vlm.hf_model.parameters())
        tokens = len(vlm.image_positions(vlm.load_image(torch.rand(3, 64, 64))))
        runs = args.runs if which == "tiny" else args.runs_large
        run_row("one word", vlm, inputs, targets, reshape)  # warm-up (and transformers' own hooks)
        times = {}
        for row in ROWS:
            samples = []
            for _ in range(runs):
                start = time.perf_counter()
                run_row(row, vlm, inputs, targets, reshape)
                samples.append(time.perf_counter() - start)
            times[row] = statistics.median(samples)
        del vlm, inputs
        for row in ROWS:
            out = subprocess.run([sys.executable, __file__, "--peak", which, row, "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            extra = json.loads(out)["extra_mib"]
            lines.append(f"| {label} | {params / 1e6:.1f}M | {tokens} | {len(targets)} | {row} | {times[row]:.3f} | "
                         f"{times[row] / times['one word']:.2f} | {extra:.0f} |")
        print("\n".join(lines[-len(ROWS):]), file=sys.stderr, flush=True)
    print(f"CPU, {args.threads} torch threads; caption {CAPTION!r}; time: median of {args.runs} (tiny) / "
          f"{args.runs_large} (0.5B) calls")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
