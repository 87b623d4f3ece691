"""The LM methods (attention, tam, lm-gradcam, gradxinput) on a tiny random LLaVA (ModelTester pattern: width 32,
3 LM layers, a 32 px image on a 4 x 4 patch grid, a word-level tokenizer built here; seeded, nothing downloads).

Each method against a hand-written reference on the same forward: attention from the model's own eager
``output_attentions``; tam from the model's full logits at every position and the documented removal written
as loops; lm-gradcam and gradxinput from ``torch.autograd.grad`` of each word's log-probability at a hook of
our own. Also: the grid of the image tokens (row-major, CLS level, Qwen2-VL's merged grid), the rank Gaussian
filter by hand, the registry entries, ``explain_caption`` through the adapter, the model left as found.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import mmexplain as mx  # noqa: E402
from mmexplain.methods import lm_maps  # noqa: E402
from mmexplain.methods.lm_maps import (  # noqa: E402
    GradientXInput, LMAttention, LMGradCAM, TokenActivationMap, image_grid, lm_view, rank_gaussian_filter,
)
from mmexplain.targets import Counterfactual, SequenceLogProb  # noqa: E402

WORDS = "a red blue green circle square triangle left of describe image user: assistant:".split()
CHAT = ("{% for message in messages %}{{ message['role'] }}:{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %} <image>{% else %} {{ item['text'] }}{% endif %}{% endfor %} {% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")
CAPTION = "a red circle left of a blue square".split()


def tokenizer(specials=("<image>",), extra=None):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", *specials]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(base + WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in base])
    return PreTrainedTokenizerFast(tokenizer_object=backend, extra_special_tokens=extra or {"image_token": "<image>"},
                                   pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]")


@functools.lru_cache(maxsize=None)
def built():
    """(adapter, pixels, inputs, spans): a tiny LLaVA and one teacher-forced caption."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    torch.manual_seed(0)
    tok = tokenizer()
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                            image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=CHAT)
    vision = dict(model_type="clip_vision_model", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, image_size=32, patch_size=8)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=37, max_position_embeddings=128, pad_token_id=0,
                bos_token_id=2, eos_token_id=3)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    return teacher_forced_caption(LlavaForConditionalGeneration(cfg).eval(), proc, (32, 32))


def teacher_forced_caption(model, proc, size):
    """(adapter, image, pixels, inputs, spans): CAPTION teacher-forced on a seeded random image of ``size``."""
    vlm = mx.hf.adapter(model, proc, prompt="describe image", max_new_tokens=4)
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(7))
    pixels = vlm.load_image(image)
    inputs, spans = vlm.teacher_forced(pixels, CAPTION)
    with torch.no_grad():
        vlm.model(**inputs)  # transformers installs its capture hooks on the first forward
    return vlm, image, pixels, inputs, spans


def targets_of(spans):
    return [SequenceLogProb(tokens, positions=positions) for positions, tokens in spans]


def absolute(inputs, spans):
    """Per word, the absolute position of its (first) logit row."""
    length, keep = inputs["input_ids"].shape[1], inputs.get("logits_to_keep")
    return [length - keep + positions[0] if keep else positions[0] for positions, _ in spans]


def full(inputs):
    return {k: v for k, v in inputs.items() if k != "logits_to_keep"}


def image_positions(vlm, inputs):
    return (inputs["input_ids"][0] == vlm.hf_model.config.image_token_id).nonzero()[:, 0]


def test_view_and_grid():
    vlm, _, pixels, inputs, _ = built()
    view = lm_view(vlm.model)  # through the adapter's wrapper
    hf = vlm.hf_model
    assert view.top is hf and view.head is hf.lm_head and view.decoder is hf.model.language_model
    assert view.layers is hf.model.language_model.layers and view.norm is hf.model.language_model.norm
    positions, grid = image_grid(inputs["input_ids"], view.image_token, vlm.reshape_for(pixels))
    assert grid == (4, 4) and torch.equal(positions, image_positions(vlm, inputs))
    # a level of exactly M tokens (CLS first) keeps its order; a square count without reshape is row-major
    ids = torch.tensor([[9, 4, 4, 4, 4, 4, 9]])
    from mmexplain.adapters.hf.layouts import TokenGrid

    level = TokenGrid({5: (torch.tensor([1, 2, 3, 4]), (2, 2)), 20: (torch.arange(20), (4, 5))})
    pos, g = image_grid(ids, 4, level)
    assert g == (2, 2) and pos.tolist() == [2, 3, 4, 5]
    pos, g = image_grid(torch.tensor([[9, 4, 4, 4, 4]]), 4)
    assert g == (2, 2) and pos.tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="no grid of 3 cells"):
        image_grid(torch.tensor([[4, 4, 4]]), 4)
    with pytest.raises(ValueError, match="no grid of 4 cells"):  # a square count, but the grid says otherwise
        image_grid(torch.tensor([[9, 4, 4, 4, 4]]), 4, TokenGrid({6: (torch.arange(6), (2, 3))}))
    with pytest.raises(ValueError, match="no image token"):
        image_grid(torch.tensor([[1, 2]]), 4)
    with pytest.raises(TypeError, match="language model head"):
        lm_view(torch.nn.Linear(2, 2))


def test_qwen2vl_merged_grid():
    """Qwen2-VL's image tokens are the merged grid, row-major: image_grid_thw // merge."""
    from mmexplain.adapters.hf.layouts import TokenGrid, merge_blocks, row_major

    h, w, m = 6, 8, 2
    grid = TokenGrid({h * w: (merge_blocks(h, w, merge=m), (h, w)), 12: (row_major(3, 4), (3, 4))})
    ids = torch.tensor([[1, 2, *([5] * 12), 3]])
    pos, g = image_grid(ids, 5, grid)
    assert g == (3, 4) and pos.tolist() == list(range(2, 14))


def test_attention_equals_eager_output_attentions():
    vlm, _, _, inputs, spans = built()
    targets = targets_of(spans)
    res = LMAttention(vlm.model)(inputs, [*targets, Counterfactual(targets[0])], size=(32, 32))
    hf = vlm.hf_model
    own = hf.config._attn_implementation
    hf.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = hf(**full(inputs), output_attentions=True)
    finally:
        hf.set_attn_implementation(own)
    attn = torch.stack(out.attentions)  # (layers, B, heads, L, L)
    img = image_positions(vlm, inputs)
    for n, q in enumerate(absolute(inputs, spans)):
        expected = attn[:, 0, :, q, img].mean(dim=(0, 1)).reshape(4, 4)
        torch.testing.assert_close(res.pre_relu[n, 0], expected, rtol=1e-4, atol=1e-6)
    assert float(res.pre_relu[-1].abs().sum()) == 0  # a counterfactual has no attention map
    last = LMAttention(vlm.model, layers="last-half")(inputs, targets[0])
    q = absolute(inputs, spans)[0]
    torch.testing.assert_close(last.pre_relu[0], attn[1:, 0, :, q, img].mean(dim=(0, 1)).reshape(4, 4), rtol=1e-4,
                               atol=1e-6)
    logp = out.logits[0].log_softmax(-1)
    torch.testing.assert_close(res.scores[:len(spans), 0],
                               torch.stack([logp[q, t[0]] for q, (_, t) in zip(absolute(inputs, spans), spans)]))
    assert hf.config._attn_implementation == own


def test_tam_equals_logit_lens_with_interference_removed():
    vlm, _, _, inputs, spans = built()
    res = TokenActivationMap(vlm.model, denoise=False)(inputs, targets_of(spans))
    with torch.no_grad():
        z = vlm.hf_model(**full(inputs)).logits[0]  # (L, V): head(norm(h)) at every position
    ids = inputs["input_ids"][0].tolist()
    img = image_positions(vlm, inputs).tolist()
    scales = []
    for n, (q, (_, tokens)) in enumerate(zip(absolute(inputs, spans), spans)):
        c = tokens[0]
        a = torch.tensor([float(z[i, c]) for i in img])
        context = [j for j in range(q + 1) if j not in img]
        w = torch.tensor([max(0.0, float(z[j, c])) for j in context])
        inter = torch.zeros(len(img))
        for wj, j in zip(w, context):
            if float(w.sum()) > 0:
                inter += wj / w.sum() * torch.tensor([float(z[i, ids[j]]) for i in img])
        scale = max(0.0, float(a @ inter) / float(inter @ inter)) if float(w.sum()) > 0 else 0.0
        scales.append(scale)
        torch.testing.assert_close(res.pre_relu[n, 0], (a - scale * inter).reshape(4, 4), rtol=1e-4, atol=1e-5)
    assert any(s > 0 for s in scales), scales  # the removal acts on this model's words
    assert res.activations.shape == (1, 32, 4, 4)
    smooth = TokenActivationMap(vlm.model)(inputs, targets_of(spans))
    low = res.pre_relu.amin(dim=(-2, -1), keepdim=True)
    scaled = (res.pre_relu - low) / (res.pre_relu.amax(dim=(-2, -1), keepdim=True) - low)  # [0, 1] per map
    torch.testing.assert_close(smooth.pre_relu, rank_gaussian_filter(scaled))
    negated = TokenActivationMap(vlm.model, denoise=False)(inputs, Counterfactual(targets_of(spans)[0]))
    torch.testing.assert_close(negated.pre_relu, -res.pre_relu[0])
    first = targets_of(spans)[0]
    both = TokenActivationMap(vlm.model)(inputs, [first, Counterfactual(first)])
    raw = res.pre_relu[0]  # the counterfactual's map, -raw, scaled to [0, 1], then filtered
    torch.testing.assert_close(both.pre_relu[1], rank_gaussian_filter((raw.max() - raw) / (raw.max() - raw.min())))


def test_rank_gaussian_filter_by_hand():
    """sigma per window = std / mean of its values (TAM's code); weights exp(-r^2 / 2 sigma^2) over the ranks
    r = -4..4 of the sorted window; a fixed sigma = 1 is median-like."""
    def by_hand(window, sigma=None):
        v = torch.sort(window.flatten()).values
        if sigma is None:
            if float(v.mean()) <= 0:
                return 0.0
            sigma = float(v.std(correction=0) / v.mean())
        w = torch.exp(-(torch.arange(9.0) - 4) ** 2 / (2 * sigma ** 2))
        return float((v * w).sum() / w.sum())

    x = torch.zeros(5, 5)
    x[2, 2] = 9.0  # an isolated spike: softened (sigma 2.83), not erased; with sigma = 1 nearly erased
    out = rank_gaussian_filter(x)
    assert abs(float(out[2, 2]) - by_hand(x[1:4, 1:4])) < 1e-5 and float(out[2, 2]) > 0.5
    assert float(rank_gaussian_filter(x, sigma=1.0)[2, 2]) < 0.01  # the spike's weight is e^-8
    assert float(out[0, 0]) == 0  # a window of zeros (mean 0) gives 0
    torch.testing.assert_close(rank_gaussian_filter(torch.full((3, 4), 2.0)), torch.full((3, 4), 2.0))
    y = torch.arange(9.0).reshape(3, 3)
    assert abs(float(rank_gaussian_filter(y)[1, 1]) - by_hand(y)) < 1e-5
    assert abs(float(rank_gaussian_filter(y, sigma=1.0)[1, 1]) - by_hand(y, 1.0)) < 1e-5
    reflected = torch.tensor([[4.0, 3, 4], [1, 0, 1], [4, 3, 4]])  # y's corner (0, 0), its border reflected
    assert abs(float(rank_gaussian_filter(y)[0, 0]) - by_hand(reflected)) < 1e-5
    assert torch.equal(rank_gaussian_filter(y, kernel=1), y)
    with pytest.raises(ValueError, match="kernel"):
        rank_gaussian_filter(y, kernel=2)
    for bad in (0.0, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="sigma"):
            rank_gaussian_filter(y, sigma=bad)
    vlm, *_ = built()
    with pytest.raises(ValueError, match="sigma"):  # at construction, before any forward
        TokenActivationMap(vlm.model, sigma=0)
    with pytest.raises(ValueError, match="kernel"):
        TokenActivationMap(vlm.model, kernel=4)


def hooked_reference(vlm, inputs, spans, module, *, input):
    """Per word, (grad, act) at ``module``'s output (or first input) at the image positions: (M, D) each."""
    kept = []
    if input:
        handle = module.register_forward_pre_hook(lambda m, args: kept.append(args[0]))
    else:
        handle = module.register_forward_hook(lambda m, args, out: kept.append(out if torch.is_tensor(out) else out[0]))
    try:
        out = vlm.hf_model(**full(inputs))
    finally:
        handle.remove()
    act = kept[0]  # (1, L, D)
    img = image_positions(vlm, inputs)
    logp = out.logits[0].log_softmax(-1)
    result = []
    for q, (_, tokens) in zip(absolute(inputs, spans), spans):
        (grad,) = torch.autograd.grad(logp[q, tokens[0]], act, retain_graph=True)
        result.append((grad[0, img], act[0, img].detach()))
    return result


def test_lm_gradcam_equals_autograd_reference():
    vlm, _, _, inputs, spans = built()
    res = LMGradCAM(vlm.model)(inputs, targets_of(spans), size=(32, 32))
    layer = vlm.hf_model.model.language_model.layers[1]  # the documented default: len(layers) // 2
    for n, (grad, act) in enumerate(hooked_reference(vlm, inputs, spans, layer, input=False)):
        expected = (act @ grad.mean(dim=0)).reshape(4, 4)  # alpha_d = mean over image tokens
        torch.testing.assert_close(res.pre_relu[n, 0], expected, rtol=1e-4, atol=1e-6)
    assert res.maps.shape == (len(spans), 1, 32, 32)
    last = LMGradCAM(vlm.model, layer=-1)(inputs, targets_of(spans)[0])
    assert float(last.pre_relu.abs().max()) == 0  # the last layer's image tokens reach no word's logit
    with pytest.raises(ValueError, match="layer"):
        LMGradCAM(vlm.model, layer=3)


def test_gradxinput_equals_autograd_reference():
    vlm, _, _, inputs, spans = built()
    res = GradientXInput(vlm.model)(inputs, targets_of(spans))
    layer = vlm.hf_model.model.language_model.layers[0]
    for n, (grad, act) in enumerate(hooked_reference(vlm, inputs, spans, layer, input=True)):
        torch.testing.assert_close(res.pre_relu[n, 0], (grad * act).sum(-1).reshape(4, 4), rtol=1e-4, atol=1e-6)
    assert float(res.pre_relu.min()) < 0  # signed before the ReLU
    torch.testing.assert_close(res.raw, F.relu(res.pre_relu))


def test_registry_entries():
    for name in ("attention", "tam", "lm-gradcam", "gradxinput"):
        spec = mx.methods.method_spec(name)
        assert spec.requires == frozenset({"lm"}) and not spec.needs_layer
        assert spec.why_not({"layer", "pixels", "attention"}) is not None and spec.why_not({"lm"}) is None
    assert mx.methods.method_spec("tam").uses_gradient is False
    assert mx.methods.method_spec("lm-gradcam").uses_gradient is True
    assert lm_maps.__all__


@pytest.mark.parametrize("name", ["attention", "tam", "lm-gradcam", "gradxinput"])
def test_explain_caption_routes_lm_methods(name):
    from conftest import assert_unchanged, snapshot

    vlm, image, pixels, inputs, spans = built()
    before = snapshot(vlm.hf_model)
    ex = mx.explain_caption(vlm, image, " ".join(CAPTION), method=name)
    assert_unchanged(vlm.hf_model, before)
    assert ex.words == CAPTION and ex.maps.shape == (len(CAPTION), 32, 32) and torch.isfinite(ex.maps).all()
    cls = mx.methods.get_method(name)
    direct = cls(vlm.model, reshape=vlm.reshape_for(pixels))(inputs, targets_of(spans), size=(32, 32))
    torch.testing.assert_close(ex.result.pre_relu, direct.pre_relu)
    torch.testing.assert_close(ex.logprobs, direct.scores[:, 0])


@pytest.mark.parametrize("name", ["attention", "tam", "lm-gradcam", "gradxinput"])
def test_explain_answer_routes_lm_methods(name):
    """An answer and its counterfactual from one call; the counterfactual of a signed map is its negation
    (TAM's before its filter)."""
    vlm, image, *_ = built()
    ax = mx.explain_answer(vlm, image, "describe image", "red circle", method=name)
    assert ax.maps.shape == ax.counterfactuals.shape == (1, 32, 32) and torch.isfinite(ax.maps).all()
    pre = ax.result.pre_relu[:, 0]  # (2, 4, 4): the answer, its counterfactual
    if name == "attention":
        assert float(pre[0].sum()) > 0 and float(pre[1].abs().sum()) == 0
    elif name == "tam":  # both scaled to [0, 1] before the filter (the negation is checked in the TAM test)
        assert 0 <= float(pre.min()) and float(pre.max()) <= 1 and float((pre[1] - pre[0]).abs().max()) > 0
    else:
        torch.testing.assert_close(pre[1], -pre[0])
    assert ax.token_attributions is not None and ax.token_attributions.shape == (1, 2)


@functools.lru_cache(maxsize=None)
def built_qwen():
    """A tiny Qwen2-VL: 48 x 64 px -> 6 x 8 patches, merged 2 x 2 -> 12 image tokens on a 3 x 4 grid."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    torch.manual_seed(1)
    specials = ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
    tok = tokenizer(specials, {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                               "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"})
    ip = Qwen2VLImageProcessor(size={"shortest_edge": 64, "longest_edge": 64 * 64}, patch_size=8, merge_size=2,
                               temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc = Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                            chat_template=CHAT.replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>"))
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in zip(("image", "start", "end", "video"), specials)}
    text = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=37, max_position_embeddings=128, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=8, spatial_merge_size=2,
                  temporal_patch_size=2)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["image"],
                        video_token_id=ids["video"], vision_start_token_id=ids["start"], vision_end_token_id=ids["end"])
    return teacher_forced_caption(Qwen2VLForConditionalGeneration(cfg).eval(), proc, (48, 64))


def test_qwen2vl_gradients_and_explainer():
    """On Qwen2-VL (patches, M-RoPE, merged tokens): lm-gradcam and gradxinput equal the autograd reference on
    the 3 x 4 merged grid, and every LM method runs through explain_caption."""
    vlm, image, pixels, inputs, spans = built_qwen()
    layers = vlm.hf_model.model.language_model.layers
    for cls, module, input in ((LMGradCAM, layers[1], False), (GradientXInput, layers[0], True)):
        res = cls(vlm.model, reshape=vlm.reshape_for(pixels))(inputs, targets_of(spans))
        for n, (grad, act) in enumerate(hooked_reference(vlm, inputs, spans, module, input=input)):
            expected = act @ grad.mean(dim=0) if cls is LMGradCAM else (grad * act).sum(-1)
            torch.testing.assert_close(res.pre_relu[n, 0], expected.reshape(3, 4), rtol=1e-4, atol=1e-6)
    for name in ("attention", "tam", "lm-gradcam", "gradxinput"):
        ex = mx.explain_caption(vlm, image, " ".join(CAPTION), method=name)
        assert ex.maps.shape[0] == len(CAPTION) and ex.result.raw.shape[-2:] == (3, 4)
        assert torch.isfinite(ex.maps).all()
