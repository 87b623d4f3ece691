"""Per-word maps of an LLM-based VLM: all T words in one call vs T single-word calls, time and memory.

Models (random weights, configs built here, nothing downloads): three families at ~6M parameters
(``llava``: CLIP-like tower 224 px / patch 16 + Llama LM; ``qwen2_vl``: Qwen2-VL tower 224 px / patch 14,
2 x 2 merge; ``gemma3``: SigLIP 224 px / patch 14, 64 pooled image tokens + Gemma 3 LM), and on request
the shipped ``models/tiny-vlm`` (``tiny``) and a LLaVA of about 0.5B parameters (``0.5b``: CLIP
ViT-B/32-like tower, Qwen2-0.5B-like LM with a 151,936-token vocabulary).

Rows, for a caption of T words (one teacher-forced forward each call):

* one word: ``GradCAM`` of the first word alone;
* T words, one call: one forward, one batched backward (``is_grads_batched``) over the T words;
* T single-word calls: T forwards, T backwards (what a per-target library does);
* T words, words_per_pass=2: one forward, the batched backward 2 words at a time over the
  retained graph (``explain_caption(..., words_per_pass=2)``; the engine's ``targets_per_backward``):
  the backward's memory is bounded by the words per pass, not by T.

Time: the median of ``--runs`` calls. Memory: the peak resident memory a call adds on top of the
model (after one warm-up call), sampled every millisecond in a fresh process per row (CPU).

Usage:
    python benchmarks/vlm.py                          # llava, qwen2_vl, gemma3: a markdown table
    python benchmarks/vlm.py --models tiny 0.5b       # the shipped tiny VLM, the 0.5B LLaVA
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


#: ``user: <image> PROMPT assistant:`` (one user turn, then the generation prompt)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}:{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %} <image>{% else %} {{ item['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def vocabulary() -> list[str]:
    """Special tokens, the chat words, then every ShapeWorld caption, question and answer word (fixed order)."""
    from mmexplain import world
    from mmexplain.zoo.tiny_hf import QUESTION_WORDS

    words = ["a", *world.RELATION.split(), *world.SIZES, *world.COLORS, *world.SHAPES, *(s + "s" for s in world.SHAPES),
             *QUESTION_WORDS, *world.answers(), "describe", "the", "image"]
    return ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "<image>", "user:", "assistant:", *dict.fromkeys(words)]


def word_tokenizer(specials: list[str], extra: dict | None = None):
    """A word-level tokenizer over ShapeWorld's words, with a family's special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = [w for w in vocabulary() if w not in specials]
    vocab = {w: i for i, w in enumerate([*base, *specials])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]", extra_special_tokens=extra or {})


def lm(tok, **kw):
    return {**dict(vocab_size=len(tok), hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=688, max_position_embeddings=1024, pad_token_id=0,
                   head_dim=64), **kw}


def vision(**kw):
    return {**dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768,
                   image_size=224, patch_size=16), **kw}


def image224():
    return torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0))


def family_llava():
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = word_tokenizer(["<image>"], {"image_token": "<image>"})
    ip = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=16, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
    cfg = LlavaConfig(vision_config=dict(model_type="clip_vision_model", **vision()),
                      text_config=dict(model_type="llama", **lm(tok)), image_token_id=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    return mx.hf.adapter(LlavaForConditionalGeneration(cfg).eval(), proc, prompt="describe the image"), image224(), "LLaVA"


def family_qwen2_vl():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers import Qwen2VLVideoProcessor

    specials = ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
    tok = word_tokenizer(specials, {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                    "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"})
    ip = Qwen2VLImageProcessor(size={"shortest_edge": 224 * 224, "longest_edge": 224 * 224}, patch_size=14,
                               merge_size=2, temporal_patch_size=2)
    proc = Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                            chat_template=CHAT_TEMPLATE.replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>"))
    ids = [tok.convert_tokens_to_ids(t) for t in specials]
    text = lm(tok, rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]})  # head_dim 64
    cfg = Qwen2VLConfig(text_config=text, vision_config=dict(depth=4, embed_dim=192, hidden_size=256, num_heads=3,
                                                             mlp_ratio=4, patch_size=14, spatial_merge_size=2,
                                                             temporal_patch_size=2),
                        image_token_id=ids[0], vision_start_token_id=ids[1], vision_end_token_id=ids[2],
                        video_token_id=ids[3])
    torch.manual_seed(0)
    return (mx.hf.adapter(Qwen2VLForConditionalGeneration(cfg).eval(), proc, prompt="describe the image"), image224(),
            "Qwen2-VL")


def family_gemma3():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    specials = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok = word_tokenizer(specials, {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                                    "eoi_token": "<end_of_image>"})
    proc = Gemma3Processor(image_processor=Gemma3ImageProcessor(size={"height": 224, "width": 224}), tokenizer=tok,
                           image_seq_length=64, chat_template=CHAT_TEMPLATE.replace("<image>", "<start_of_image>"))
    cfg = Gemma3Config(vision_config=dict(model_type="siglip_vision_model", **vision(patch_size=14)),  # 16 x 16 -> 8 x 8
                       text_config=dict(model_type="gemma3_text", **lm(tok, sliding_window=512)), mm_tokens_per_image=64,
                       image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
                       boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                       eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"))
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(cfg).eval()
    model.model.multi_modal_projector.mm_input_projection_weight.data.normal_(0, 0.02)  # zeros at initialisation
    return mx.hf.adapter(model, proc, prompt="describe the image"), image224(), "Gemma 3"


def tiny_vlm():
    vlm = mx.zoo.load("tiny-llava")
    return vlm, mx.world.generate(mx.world.split_seeds("test", 1)[0], size=96).image, "tiny-llava"


def llava_05b():
    """A random LLaVA of ~0.5B parameters: CLIP ViT-B/32-like tower (224 px, 7 x 7 patches), Qwen2-0.5B-like LM."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, \
        LlavaForConditionalGeneration, LlavaProcessor

    tok = word_tokenizer(["<image>"], {"image_token": "<image>"})
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


MODELS = {"llava": family_llava, "qwen2_vl": family_qwen2_vl, "gemma3": family_gemma3, "tiny": tiny_vlm,
          "0.5b": llava_05b}


def setup(which: str):
    vlm, image, label = MODELS[which]()
    pixels = vlm.load_image(image)
    words = vlm.split_words(CAPTION)
    inputs, spans = vlm.teacher_forced(pixels, words)
    targets = [mx.targets.SequenceLogProb(t, positions=p) for p, t in spans]
    reshape = vlm.reshape_for(pixels)
    return vlm, inputs, targets, reshape, label, pixels


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
        GradCAM(vlm.model, vlm.default_layer, reshape=reshape)(inputs, targets, targets_per_backward=2)


def resident_mib() -> float:
    """The process's resident memory now (Linux ``/proc/self/statm``), MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_child(which: str, row: str) -> None:
    """In a fresh process: the peak resident memory ``row`` adds over the model after one forward (MiB).

    A thread samples the resident memory every millisecond during the call.
    """
    import threading

    vlm, inputs, targets, reshape, _, _ = setup(which)
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
    parser.add_argument("--models", nargs="+", default=["llava", "qwen2_vl", "gemma3"], choices=sorted(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak", nargs=2, metavar=("MODEL", "ROW"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.peak:
        peak_child(args.peak[0], args.peak[1])
        return 0
    lines = ["| model | params | image tokens | T | row | time s (median) | x one word | extra peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for which in args.models:
        vlm, inputs, targets, reshape, label, pixels = setup(which)
        params = sum(p.numel() for p in vlm.hf_model.parameters())
        tokens = len(vlm.image_positions(pixels))
        runs = args.runs_large if which == "0.5b" else args.runs
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
    print(f"CPU, {args.threads} torch threads; caption {CAPTION!r}; time: median of {args.runs} calls "
          f"({args.runs_large} for 0.5b)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
