"""mx.hf.ImageTextToText on tiny random image-text-to-text VLMs (ModelTester pattern: width 32, 2 layers,
32-64 px images), each with a word-level tokenizer and its family's processor built here: nothing downloads.

Per family (LLaVA, Qwen2-VL, Qwen2.5-VL, PaliGemma, Idefics3, SmolVLM, BLIP-2, GIT, Florence-2): shapes,
finiteness, non-zero maps; word scores against the model's own log-softmax at absolute positions
(no logits_to_keep); the per-word identity (ReLU of the summed pre-ReLU word maps == the whole
caption's map, from a separate call on the caption's log-probability); the map against a direct
autograd reference at the layer the LM reads (a hook of our own, torch.autograd.grad, channel-mean
weights over the image's patch tokens); image-token positions against the processor's own
placeholder expansion and the number of features the model's vision path hands the LM; token
orders (merge blocks, windows, tiles) against the processor's own patchify, read back from a probe
image; the model untouched after a call and after an error; no gradient at a layer the LM does not
read (LLaVA's last vision layer) is a clear error; a bf16 model gives float32 maps; the shipped
models/tiny-vlm once it exists.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import mmexplain as mx  # noqa: E402
from mmexplain.adapters import hf  # noqa: E402
from mmexplain.adapters.hf import families, layouts  # noqa: E402
from mmexplain.adapters.protocols import AnswerAdapter, CaptionAdapter  # noqa: E402

from conftest import assert_unchanged, snapshot  # noqa: E402

WORDS = "a red blue green circle square triangle left of what color is the shape ? describe image user: assistant:".split()
CAPTION = "a red circle left of a blue square"
QUESTION = "what color is the circle ?"
CHAT = ("{% for message in messages %}{{ message['role'] }}:{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %} IMAGE{% else %} {{ item['text'] }}{% endif %}{% endfor %} {% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")
IDEFICS_SPECIALS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                    *(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))]


def make_tokenizer(specials=(), extra=None, **named):
    """Word level over WORDS, with [PAD] [UNK] [BOS] [EOS] and the family's special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", *specials]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(base + WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # "? ?" stays two words
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in base])
    return PreTrainedTokenizerFast(tokenizer_object=backend, extra_special_tokens=extra or {}, pad_token="[PAD]",
                                   unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]",
                                   clean_up_tokenization_spaces=False, **named)


def vit(**kw):
    return {**dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
                   patch_size=8), **kw}


def llama(tok, **kw):
    return {**dict(model_type="llama", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=37, max_position_embeddings=128, pad_token_id=0,
                   bos_token_id=2, eos_token_id=3), **kw}


def half():
    return {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}


def build_llava(feature_layer=-2):
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaProcessor

    tok = make_tokenizer(["<image>"], extra={"image_token": "<image>"})
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, **half())
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=CHAT.replace("IMAGE", "<image>"))
    cfg = LlavaConfig(vision_config=dict(model_type="clip_vision_model", **vit(num_hidden_layers=3)),
                      text_config=llama(tok), image_token_id=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=feature_layer, vision_feature_select_strategy="default")
    return transformers.LlavaForConditionalGeneration(cfg), proc, (40, 50)


def build_qwen(version):
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    specials = ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
    tok = make_tokenizer(specials, extra={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                          "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"})
    ip = Qwen2VLImageProcessor(size={"shortest_edge": 64, "longest_edge": 64 * 64}, patch_size=8, merge_size=2,
                               temporal_patch_size=2, **half())
    Processor = transformers.Qwen2VLProcessor if version == 2 else transformers.Qwen2_5_VLProcessor
    proc = Processor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                     chat_template=CHAT.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>"))
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in zip(("image", "start", "end", "video"), specials)}
    text = llama(tok, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
    text.pop("model_type")
    if version == 2:
        vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=8,
                      spatial_merge_size=2, temporal_patch_size=2)
        Config, Model = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
    else:
        vision = dict(depth=2, hidden_size=32, intermediate_size=37, num_heads=4, out_hidden_size=32, patch_size=8,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=32, fullatt_block_indexes=[1])
        Config, Model = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
    cfg = Config(text_config=text, vision_config=vision, image_token_id=ids["image"], video_token_id=ids["video"],
                 vision_start_token_id=ids["start"], vision_end_token_id=ids["end"])
    return Model(cfg), proc, (48, 64)  # 6 x 8 patches, 3 x 4 merged, 2 x 2 windows (Qwen2.5: padded)


def build_paligemma():
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipImageProcessor

    tok = make_tokenizer(["<image>"], extra={"image_token": "<image>"})
    ip = SiglipImageProcessor(size={"height": 32, "width": 32}, **half())
    ip.image_seq_length = 16
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)  # adds location tokens to the tokenizer
    cfg = PaliGemmaConfig(vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **vit()),
                          text_config=llama(tok, model_type="gemma", num_key_value_heads=1, head_dim=8),
                          image_token_id=tok.convert_tokens_to_ids("<image>"), projection_dim=32)
    return PaliGemmaForConditionalGeneration(cfg), proc, (40, 30)


def build_idefics(smol):
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    tok = make_tokenizer(IDEFICS_SPECIALS)
    ip = Idefics3ImageProcessor(do_image_splitting=True, size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                **half())
    # SmolVLM's own processor needs num2words for videos; its image placeholders are Idefics3's
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4,
                             chat_template=CHAT.replace("IMAGE", "<image>"))
    Config = transformers.SmolVLMConfig if smol else transformers.Idefics3Config
    Model = transformers.SmolVLMForConditionalGeneration if smol else transformers.Idefics3ForConditionalGeneration
    cfg = Config(vision_config=vit(), text_config=llama(tok), image_token_id=tok.convert_tokens_to_ids("<image>"),
                 scale_factor=2)
    return Model(cfg), proc, (40, 64)  # 2 x 2 tiles of 4 x 4 patches + the global image


def build_blip2():
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    tok = make_tokenizer()  # the processor adds <image>
    proc = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}, **half()), tokenizer=tok,
                          num_query_tokens=4)
    cfg = Blip2Config(vision_config=vit(), num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=37, encoder_hidden_size=32, vocab_size=len(tok)),
                      text_config=dict(model_type="opt", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=4, ffn_dim=37, word_embed_proj_dim=32, pad_token_id=0,
                                       bos_token_id=2, eos_token_id=3, max_position_embeddings=64))
    return Blip2ForConditionalGeneration(cfg), proc, (40, 30)


def build_git():
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    tok = make_tokenizer(cls_token="[BOS]", sep_token="[EOS]")
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, **half())
    cfg = GitConfig(vision_config=vit(), vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=37, max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    return GitForCausalLM(cfg), GitProcessor(image_processor=ip, tokenizer=tok), (32, 40)


def build_florence():
    from transformers import CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    tok = make_tokenizer(["<image>"], extra={"image_token": "<image>"})
    ip = CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False, **half())
    ip.image_seq_length = 17  # 4 x 4 spatial + 1 temporal token
    proc = Florence2Processor(image_processor=ip, tokenizer=tok)
    cfg = Florence2Config(
        vision_config=dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                           patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[2, 4], num_groups=[2, 4],
                           window_size=2, projection_dim=32, max_position_embeddings=16, drop_path_rate=0.0),
        text_config=dict(model_type="bart", vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37,
                         max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                         decoder_start_token_id=3),
        image_token_id=tok.convert_tokens_to_ids("<image>"))
    return Florence2ForConditionalGeneration(cfg), proc, (40, 30)


BUILDERS = {"llava": build_llava, "qwen2_vl": lambda: build_qwen(2), "qwen2_5_vl": lambda: build_qwen(2.5),
            "paligemma": build_paligemma, "idefics3": lambda: build_idefics(False), "smolvlm": lambda: build_idefics(True),
            "blip2": build_blip2, "git": build_git, "florence2": build_florence}
FAMILIES = sorted(BUILDERS)


@functools.cache
def built(name):
    """(adapter, image) of a family, built once per session, seeded; the model has run once (see ``warm``)."""
    torch.manual_seed(sum(map(ord, name)))
    model, proc, (h, w) = BUILDERS[name]()
    model.eval()
    vlm = hf.adapter(model, proc, prompt="" if name in ("git", "blip2") else "describe image", max_new_tokens=4)
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(7))
    warm(vlm, image)
    return vlm, image


def warm(vlm, image):
    """One plain forward: transformers installs its own output-capturing hooks on the first forward that
    records hidden states, so a model's hooks are compared from then on."""
    inputs, _ = vlm.teacher_forced(vlm.load_image(image), CAPTION.split())
    with torch.no_grad():
        vlm.model(**inputs)


def model_logprobs(vlm, inputs, spans):
    """Each word's log-probability from the model's own full logits (no logits_to_keep), at absolute positions."""
    full = {k: v for k, v in inputs.items() if k != "logits_to_keep"}
    with torch.no_grad():
        logits = vlm.hf_model(**full).logits[0]  # (L, V)
    kept = inputs.get("logits_to_keep")
    first = logits.shape[0] - kept if kept else 0  # the row of logit position 0
    logp = logits.log_softmax(-1)
    return torch.stack([sum(logp[first + p, t] for p, t in zip(pos, tok)) for pos, tok in spans])


def patch_tokens(vlm, pixels, act):
    """The image's patch tokens of a site activation (1, L, D), by what the model's config says, in the
    model's own order: CLS dropped, an Idefics3 global image dropped (order does not matter for alpha)."""
    levels = vlm.reshape_for(pixels).levels
    order, _ = levels[act.shape[1]]
    keep = torch.zeros(act.shape[1], dtype=torch.bool)
    keep[order] = True
    return act[0, keep]  # (N, D)


def reference_word(vlm, pixels, words, index):
    """Grad-CAM of word ``index`` by hand: our own hook on the site, autograd.grad, channel-mean weights.

    Returns the word's score and its per-token map values (ReLU(A alpha)), sorted (the grid order is
    checked separately, against the processor).
    """
    inputs, spans = vlm.teacher_forced(pixels, words)
    store = {}
    handle = vlm.hf_model.get_submodule(vlm.site).register_forward_hook(
        lambda m, a, o: store.__setitem__("act", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.enable_grad():
            logits = vlm.hf_model(**inputs).logits[0]  # (rows, V)
    finally:
        handle.remove()
    positions, tokens = spans[index]
    score = sum(logits[p].log_softmax(-1)[t] for p, t in zip(positions, tokens))
    (grad,) = torch.autograd.grad(score, store["act"])
    act = store["act"].detach()
    if act.dim() == 4:  # a convolutional map (Florence-2)
        alpha = grad.mean(dim=(-2, -1))[0]  # (C,)
        return score.detach(), F.relu((alpha[:, None, None] * act[0]).sum(0)).flatten().sort().values
    act, grad = act.reshape(1, -1, act.shape[-1]), grad.reshape(1, -1, grad.shape[-1])
    a, g = patch_tokens(vlm, pixels, act), patch_tokens(vlm, pixels, grad)  # (N, D)
    return score.detach(), F.relu(a @ g.mean(0)).sort().values


# ----------------------------------------------------------------------------- units


def test_token_orders():
    assert layouts.merge_blocks(2, 4, merge=2).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    assert layouts.tiles(1, 2, 2).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]  # two 2 x 2 tiles side by side
    window = torch.tensor([2, 0, 3, 1])  # blocks in the order windows visit them
    assert layouts.windows(torch.arange(4), window, unit=1).tolist() == [1, 3, 0, 2]
    grid = layouts.TokenGrid(families.plain_levels(2, 2))  # 2 x 2 patches, with or without CLS
    with pytest.raises(ValueError, match="has 6 tokens"):
        grid(torch.zeros(1, 6, 1))
    assert grid(torch.arange(5.0).reshape(1, 5, 1))[0, 0].tolist() == [[1, 2], [3, 4]]  # CLS dropped
    with pytest.raises(ValueError, match="unbatched"):
        grid(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="grid"):
        layouts.TokenGrid({4: (torch.arange(3), (2, 2))})


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "idefics3"])
def test_token_orders_match_the_processors_patchify(name):
    """A probe image whose pixels encode their own row and column goes through the processor; the patch
    each token holds, read back from pixel_values, must lie on the cell our TokenGrid puts the token on."""
    vlm, image = built(name)
    h, w = image.shape[-2:]
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w) / h
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w) / w
    probe = torch.stack([rows, cols, torch.zeros(h, w)])  # (3, H, W) in [0, 1]
    images = vlm.family.images(probe)
    grid = vlm.reshape_for(probe[None])
    if name.startswith("qwen"):
        ip = vlm.image_processor
        p, t = ip.patch_size, ip.temporal_patch_size
        patches = images["pixel_values"].reshape(-1, 3, t, p, p)[:, :, 0]  # (N, 3, P, P) in the processor's order
        centre = patches[:, :2].mean(dim=(-2, -1)) * 0.5 + 0.5  # (N, 2): un-normalized (row, col) / size
        if name == "qwen2_5_vl":  # the tower reorders merge blocks into windows: apply it to the probe
            from transformers.vision_utils import get_vision_window_index

            vision = vlm.hf_model.config.vision_config
            window, _ = get_vision_window_index(images["image_grid_thw"], spatial_merge_size=2,
                                                window_size=vision.window_size, patch_size=vision.patch_size)
            centre = centre.reshape(-1, 4, 2)[window].reshape(-1, 2)
        tokens = centre[None]  # (1, N, 2)
    else:
        frames = images["pixel_values"][0, :, :2] * 0.5 + 0.5  # (F, 2, S, S) un-normalized
        p = vlm.hf_model.config.vision_config.patch_size
        tokens = frames.unfold(2, p, p).unfold(3, p, p).mean(dim=(-2, -1)).flatten(2).transpose(1, 2)  # (F, n*n, 2)
        tokens = tokens.reshape(1, -1, 2)
    laid = grid(tokens)[0]  # (2, gh, gw): the probe's (row, col) of the token on each cell
    gh, gw = laid.shape[-2:]
    assert (laid[0].diff(dim=0) > 0).all() and (laid[0].diff(dim=1).abs() < 1e-4).all(), name  # rows go down
    assert (laid[1].diff(dim=1) > 0).all() and (laid[1].diff(dim=0).abs() < 1e-4).all(), name  # columns go right
    assert (gh, gw) == (vlm.display_image(probe[None]).shape[-2] // p, vlm.display_image(probe[None]).shape[-1] // p)


# ----------------------------------------------------------------------------- every family


@pytest.mark.parametrize("name", FAMILIES)
def test_word_maps_scores_identity_and_reference(name):
    vlm, image = built(name)
    assert isinstance(vlm, CaptionAdapter) and isinstance(vlm, AnswerAdapter) and type(vlm) is hf.ImageTextToText
    before = snapshot(vlm.hf_model)
    pixels = vlm.load_image(image)
    words = CAPTION.split()
    ex = mx.explain_caption(vlm, image, CAPTION)
    shown = vlm.display_image(pixels)
    assert ex.words == words and ex.maps.shape == (len(words), *shown.shape[-2:]) and ex.image.shape == shown.shape
    assert torch.isfinite(ex.maps).all() and ex.caption_map.amax() > 0 and (ex.maps.flatten(1).amax(1) > 0).sum() >= 4
    # word scores: the model's own log-softmax at absolute positions, without logits_to_keep
    inputs, spans = vlm.teacher_forced(pixels, words)
    assert torch.allclose(ex.logprobs, model_logprobs(vlm, inputs, spans), atol=1e-4)
    # identity: the whole caption's log-probability, explained by itself, = ReLU(sum of word pre-ReLU maps)
    whole = mx.targets.SequenceLogProb([t for _, ts in spans for t in ts], positions=[p for ps, _ in spans for p in ps])
    res = mx.GradCAM(vlm.model, vlm.default_layer, reshape=vlm.reshape_for(pixels))(inputs, whole)
    assert torch.allclose(res.raw[0], F.relu(ex.result.pre_relu[:, 0].sum(0)), atol=1e-5)
    assert torch.allclose(res.scores[0], ex.logprobs.sum(), atol=1e-4)
    # against a reference by hand at the layer the LM reads, for two words
    for index in (1, 6):
        score, values = reference_word(vlm, pixels, words, index)
        assert torch.allclose(ex.logprobs[index], score, atol=1e-4)
        ours = ex.result.raw[index, 0].flatten().sort().values
        assert ours.shape == values.shape and torch.allclose(ours, values, atol=1e-5, rtol=1e-4), name
    assert_unchanged(vlm.hf_model, before)


@pytest.mark.parametrize("name", FAMILIES)
def test_image_positions_match_the_processor_and_the_features(name):
    vlm, image = built(name)
    pixels = vlm.load_image(image)
    positions = vlm.image_positions(pixels)
    inputs = vlm.prompt_inputs(pixels)
    config = vlm.hf_model.config
    image_token = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    with torch.no_grad():
        if name == "git":  # image tokens are a prefix of the decoder's sequence: their logits come first
            logits = vlm.hf_model(**inputs).logits  # (1, K + P, V)
            count = logits.shape[1] - inputs["input_ids"].shape[1]
            assert positions.tolist() == list(range(count))
        else:
            assert positions.tolist() == (inputs["input_ids"][0] == image_token).nonzero()[:, 0].tolist()
            keys = {k: v for k, v in inputs.items() if k.startswith(("pixel", "image_grid"))}
            feats = vlm.hf_model.get_image_features(**keys).pooler_output
            count = sum(f.reshape(-1, f.shape[-1]).shape[0] for f in (feats if isinstance(feats, (list, tuple)) else [feats]))
    assert len(positions) == count > 0
    text = (inputs["input_ids"][0] != image_token).nonzero()[:, 0] if name != "git" else None
    if text is not None and text.numel():
        assert positions.max() < text[-1], "the image comes before the prompt's last token"


@pytest.mark.parametrize("name", FAMILIES)
def test_generated_caption_and_answer(name):
    vlm, image = built(name)
    pixels = vlm.load_image(image)
    words = vlm.generate(pixels)
    generated = vlm.answer(pixels, QUESTION)  # a random model may stop at once: then explain a given answer
    ax = mx.explain_answer(vlm, image, QUESTION, None if generated else "red")
    assert ax.answer == (generated or "red") and ax.maps.shape[0] == 1 and torch.isfinite(ax.maps).all()
    assert torch.allclose(ax.probabilities, ax.scores.exp()) and ax.counterfactuals.shape == ax.maps.shape
    assert ax.question_tokens == QUESTION.split() and ax.token_attributions.shape == (1, len(QUESTION.split()))
    assert torch.isfinite(ax.token_attributions).all()
    # the answer's words, explained like caption words (the same generation: its ids kept, a special token
    # the model wrote between words included): their log-probabilities add up to the answer's
    per_word = mx.explain_caption(vlm.with_prompt(QUESTION), image, None if generated else "red")
    assert " ".join(per_word.words) == ax.answer
    assert torch.allclose(per_word.logprobs.sum(), ax.scores[0], atol=1e-4)
    assert all(w in vlm.tokenizer.get_vocab() for w in words)
    with pytest.raises(ValueError, match="top_k"):
        vlm.query(pixels, QUESTION, None, 2)


# ----------------------------------------------------------------------------- errors, state, dtype


def test_model_untouched_after_an_error():
    vlm, image = built("qwen2_5_vl")
    before = snapshot(vlm.hf_model)

    def broken(output):
        raise RuntimeError("target failed")

    pixels = vlm.load_image(image)
    inputs, _ = vlm.teacher_forced(pixels, CAPTION.split())
    cam = mx.GradCAM(vlm.model, vlm.default_layer, reshape=vlm.reshape_for(pixels))
    with pytest.raises(RuntimeError, match="target failed"):
        cam(inputs, mx.targets.Scalar(broken))
    with pytest.raises(ValueError, match="unknown word 'octagon'"):
        mx.explain_caption(vlm, image, "a red octagon")
    assert_unchanged(vlm.hf_model, before)
    assert vars(vlm.model).keys() == vars(hf.VisionTap(vlm.hf_model, vlm.site)).keys()  # nothing kept by calls


def test_no_gradient_at_a_layer_the_lm_does_not_read():
    """LLaVA reads hidden_states[-2]: its last vision layer gets no gradient, and saying so is an error."""
    vlm, image = built("llava")
    tower = vlm.hf_model.config.vision_config.num_hidden_layers
    assert vlm.site.endswith(f"layers.{tower - 2}")  # hidden_states[-2] = the output of block L - 2
    last = hf.adapter(vlm.hf_model, vlm.processor, layer=vlm.site[:-1] + str(tower - 1))
    with pytest.raises(ValueError, match="do not depend on layer"):
        mx.explain_caption(last, image, CAPTION)
    for _ in range(2):  # the default layer gets gradient, on every call (the tap runs before transformers' hooks)
        ex = mx.explain_caption(vlm, image, CAPTION)
        assert ex.caption_map.amax() > 0 and ex.result.weights.abs().sum() > 0
    # hooking the block directly works too, also on a second call: the engine's hooks run before the hooks
    # transformers 5 installs on the model's first forward to record hidden states
    pixels = vlm.load_image(image)
    inputs, spans = vlm.teacher_forced(pixels, CAPTION.split())
    direct = mx.GradCAM(vlm.model, "model." + vlm.site, reshape=vlm.reshape_for(pixels))
    target = mx.targets.SequenceLogProb(spans[0][1], positions=spans[0][0])
    first, second = direct(inputs, target), direct(inputs, target)
    torch.testing.assert_close(first.raw, second.raw)
    assert first.weights.abs().sum() > 0


def test_bf16_model_gives_float32_maps():
    model, proc, (h, w) = build_llava()
    torch.manual_seed(3)
    model = model.to(torch.bfloat16).eval()
    vlm = hf.adapter(model, proc, prompt="describe image")
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1))
    ex = mx.explain_caption(vlm, image, CAPTION)
    assert ex.result.raw.dtype == torch.float32 and ex.result.activations.dtype == torch.float32
    assert torch.isfinite(ex.maps).all() and ex.caption_map.amax() > 0


def test_dispatch_and_arguments():
    vlm, _ = built("llava")
    assert hf.dispatch.CAPTIONERS["LlavaForConditionalGeneration"] is hf.ImageTextToText
    assert hf.dispatch.ANSWERERS["Qwen2_5_VLForConditionalGeneration"] is hf.ImageTextToText
    assert type(hf.answer_adapter(vlm.hf_model, vlm.processor)) is hf.ImageTextToText
    with pytest.raises(TypeError, match="processor"):
        hf.adapter(vlm.hf_model, image_processor=vlm.image_processor, tokenizer=vlm.tokenizer)
    with pytest.raises(ValueError, match="max_new_tokens"):
        hf.adapter(vlm.hf_model, vlm.processor, max_new_tokens=0)
    with pytest.raises(ValueError, match="not found"):
        hf.adapter(vlm.hf_model, vlm.processor, layer="model.vision_tower.nope")
    with pytest.raises(ValueError, match="copies"):
        vlm.teacher_forced(vlm.load_image(torch.rand(3, 8, 8)), ["a"], copies=2)
    assert vlm.with_prompt(QUESTION).prompt == QUESTION and vlm.prompt == "describe image"


# ----------------------------------------------------------------------------- the shipped tiny VLM

TINY = Path(__file__).resolve().parents[1] / "models" / "tiny-llava"


def test_shipped_tiny_vlm():
    vlm = mx.zoo.load("tiny-vlm")  # the older name loads tiny-llava
    assert isinstance(vlm, hf.ImageTextToText) and vlm.site.endswith("layers.2")
    files = {p.name for p in TINY.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "CARD.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    scene = mx.world.generate(mx.world.split_seeds("test", 1)[0], size=96)
    ex = mx.explain_caption(vlm, scene.image)
    assert ex.words and torch.isfinite(ex.maps).all() and ex.maps.shape[-2:] == (96, 96)
    qa = scene.questions[0]
    ax = mx.explain_answer(vlm, scene.image, qa.question)
    pixels = vlm.load_image(scene.image)
    inputs = vlm.prompt_inputs(pixels, qa.question)
    with torch.no_grad():
        ids = vlm.hf_model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert ax.answer == vlm.tokenizer.decode(ids, skip_special_tokens=True).strip()
