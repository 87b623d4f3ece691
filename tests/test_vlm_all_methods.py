"""Every registered method on an LLM-based VLM (the tiny random LLaVA and Qwen2-VL of test_lm_methods).

- relevancy through the LM's self-attention, with no arguments, equals Chefer et al.'s rule written here on
  the model's own eager ``output_attentions`` (the attention probabilities in the graph) and ``torch.autograd``;
- perturbation methods mask the picture and run the processor again (``PictureInputs``): Occlusion on Qwen2-VL's
  flattened patches equals the score drops of pictures with a window of the processor's mean colour (its
  normalised 0, Zeiler & Fergus' grey square) sent one at a time through the adapter;
  Ablation-CAM equals the relative drop with one channel of the vision layer zeroed by a hook of our own;
  on LLaVA, whose processor gives a (B, 3, H, W) tensor, Score-CAM through the picture equals Score-CAM on it;
- every method in the registry runs through explain_caption and explain_answer on both, leaving them as found.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import mmexplain as mx  # noqa: E402
from mmexplain.methods.pictures import PictureInputs  # noqa: E402
from conftest import feature_zeroed  # noqa: E402
from test_lm_methods import CAPTION, absolute, built, built_qwen, full, image_positions, targets_of  # noqa: E402


def eager_attentions(hf, inputs):
    """The LM's attention probabilities (layers of (1, heads, L, L)) and the output, from an eager forward."""
    own = hf.config._attn_implementation
    hf.set_attn_implementation("eager")
    try:
        out = hf(**full(inputs), output_attentions=True)
    finally:
        hf.set_attn_implementation(own)
    return out


def chefer_reference(vlm, inputs, spans, grid, *, tower=False):
    """Per word: R = I, R += E_h[(dA * A)^+] R over the LM layers in order; the word's logit row over the image
    tokens. ``tower``: continued into LLaVA's CLIP tower (its eager attention weights caught by hooks of our own):
    R_v by the same rule over the tower's layers, each patch token given its image token's relevancy (CLS none),
    the map u R_v over the patches."""
    hf = vlm.hf_model
    caught = []
    hooks = [m.register_forward_hook(lambda mod, args, out: caught.append(out[1]))
             for n, m in hf.named_modules() if tower and n.startswith("model.vision_tower") and n.endswith("self_attn")]
    try:
        out = eager_attentions(hf, inputs)
    finally:
        for h in hooks:
            h.remove()
    attn = list(out.attentions)
    logp = out.logits[0].log_softmax(-1)
    img = image_positions(vlm, inputs)
    maps = []
    for q, (_, tokens) in zip(absolute(inputs, spans), spans):
        rows = range(q, q + len(tokens))
        score = sum(logp[r, t] for r, t in zip(rows, tokens))
        grads = torch.autograd.grad(score, attn + caught, retain_graph=True, allow_unused=True)
        length = attn[0].shape[-1]
        r = torch.eye(length)
        for a, g in zip(attn, grads):
            r = r + (g[0] * a[0]).clamp(min=0).mean(dim=0) @ r
        per_token = r[list(rows)][:, img].mean(dim=0)  # (M,)
        if tower:
            r_v = torch.eye(caught[0].shape[-1])
            for a, g in zip(caught, grads[len(attn):]):
                if g is not None:
                    r_v = r_v + (g[0] * a[0]).clamp(min=0).mean(dim=0) @ r_v
            per_token = torch.cat([per_token.new_zeros(1), per_token]) @ r_v[:, 1:]  # CLS first, then the patches
        maps.append(per_token.reshape(grid))
    return torch.stack(maps)


@pytest.mark.parametrize("which", ["llava", "qwen2vl"])
def test_relevancy_through_the_lm_equals_chefer_rule(which):
    vlm, image, pixels, inputs, spans = built() if which == "llava" else built_qwen()
    grid = (4, 4) if which == "llava" else (3, 4)
    assert "attention" in vlm.capabilities and "lm" in vlm.capabilities
    res = mx.methods.Relevancy(vlm.model, reshape=vlm.reshape_for(pixels), vision=False)(inputs, targets_of(spans))
    expected = chefer_reference(vlm, inputs, spans, grid)
    torch.testing.assert_close(res.raw[:, 0], expected, rtol=1e-4, atol=1e-6)
    assert float(expected.detach().sum()) > 0


def test_relevancy_continues_into_the_vision_tower():
    """explain_caption's relevancy on LLaVA: the LM's rule, then the CLIP tower's, each patch under its image token."""
    vlm, image, pixels, inputs, spans = built()
    ex = mx.explain_caption(vlm, image, " ".join(CAPTION), method="relevancy")
    expected = chefer_reference(vlm, inputs, spans, (4, 4), tower=True)
    torch.testing.assert_close(ex.result.raw[:, 0], expected, rtol=1e-4, atol=1e-6)
    lm_only = chefer_reference(vlm, inputs, spans, (4, 4))
    assert float((expected - lm_only).detach().abs().max()) > 0  # the tower's attention changed the map
    qwen, qimage, *_ = built_qwen()  # 3 x 4 image tokens continued onto the 6 x 8 patch grid (merge blocks)
    assert mx.explain_caption(qwen, qimage, " ".join(CAPTION), method="relevancy").result.raw.shape[-2:] == (6, 8)


def occlusion_reference(vlm, image, window, stride):
    """(gh, gw) drops of every word's log-probability, one occluded picture per forward through the adapter."""
    def windows(size):  # the documented grid: ceil(size / stride) cells, windows centred on them, cut at the edges
        cells = -(-size // stride)
        starts = [round((i + 0.5) * size / cells - window / 2) for i in range(cells)]
        return [(max(s, 0), min(s + window, size)) for s in starts]

    pixels = vlm.load_image(image)
    picture = vlm.display_image(pixels)  # (3, H, W)
    mean = torch.tensor(vlm.processor.image_processor.image_mean)[:, None, None]  # (3, 1, 1)
    inputs, spans = vlm.teacher_forced(pixels, CAPTION)
    targets = targets_of(spans)
    with torch.no_grad():
        clean = torch.stack([t(vlm.model(**inputs)) for t in targets])[:, 0]  # (T,)
        rows, cols = windows(picture.shape[-2]), windows(picture.shape[-1])
        drops = torch.zeros(len(targets), len(rows), len(cols))
        for i, (r0, r1) in enumerate(rows):
            for j, (c0, c1) in enumerate(cols):
                hidden = picture.clone()
                hidden[:, r0:r1, c0:c1] = mean  # the processor's mean colour: its normalised 0
                masked, _ = vlm.teacher_forced(hidden[None], CAPTION)
                out = vlm.model(**masked)
                drops[:, i, j] = clean - torch.stack([t(out) for t in targets])[:, 0]
    return drops


def test_occlusion_masks_the_picture_before_the_processor_on_qwen2vl():
    vlm, image, pixels, inputs, spans = built_qwen()
    assert "pixels" not in vlm.capabilities and "picture" in vlm.capabilities  # flattened patches
    ex = mx.explain_caption(vlm, image, " ".join(CAPTION), method="occlusion")
    expected = occlusion_reference(vlm, image, 16, 8)
    torch.testing.assert_close(ex.result.raw[:, 0], expected, rtol=1e-4, atol=1e-5)
    assert float(expected.abs().sum()) > 0


def test_ablation_cam_zeroes_one_channel_of_the_vision_layer_on_qwen2vl():
    vlm, image, pixels, inputs, spans = built_qwen()
    ex = mx.explain_caption(vlm, image, " ".join(CAPTION), method="ablationcam")
    targets = targets_of(spans)
    site = vlm.hf_model.get_submodule(vlm.site)
    with torch.no_grad():
        y = torch.stack([t(vlm.model(**inputs)) for t in targets])[:, 0]  # (T,)
        channels = ex.result.weights.shape[-1]
        dropped = torch.zeros(len(targets), channels)
        for k in range(channels):
            with feature_zeroed(site, k):
                out = vlm.hf_model(**inputs)
            dropped[:, k] = torch.stack([t(out) for t in targets])[:, 0]
    expected = (y[:, None] - dropped) / y.abs()[:, None]
    torch.testing.assert_close(ex.result.weights[:, 0], expected, rtol=1e-4, atol=1e-5)


def test_scorecam_masks_the_picture_as_it_masks_the_normalised_tensor():
    """Through the adapter, Score-CAM masks the picture in [0, 1] about the processor's mean colour and runs the
    processor again; Score-CAM on the processor's own normalised ``pixel_values`` (masks about 0, no processor
    re-run) gives the same maps. Masking the raw picture (fading to black) would not."""
    vlm, image, pixels, inputs, spans = built()
    ex = mx.explain_caption(vlm, image, " ".join(CAPTION), method="scorecam")
    wrapped = vlm.picture_inputs(pixels, inputs)
    assert isinstance(wrapped, PictureInputs) and wrapped.picture.shape == (1, 3, 32, 32)
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)  # the processor only normalises: the two paths can agree
    torch.testing.assert_close(wrapped.zero.flatten(), torch.tensor(vlm.processor.image_processor.image_mean))
    direct = mx.ScoreCAM(vlm.model, "features", reshape=vlm.reshape_for(pixels))(
        dict(inputs), targets_of(spans), size=(32, 32))
    torch.testing.assert_close(ex.result.pre_relu, direct.pre_relu, rtol=1e-4, atol=1e-5)
    black = PictureInputs(wrapped.picture, wrapped.process)  # zero None: masks fade to black
    faded = mx.ScoreCAM(vlm.model, "features", reshape=vlm.reshape_for(pixels))(black, targets_of(spans), size=(32, 32))
    assert not torch.allclose(faded.pre_relu, direct.pre_relu, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("which", ["llava", "qwen2vl"])
def test_every_registered_method_runs_on_the_vlm_or_says_why_not(which):
    from conftest import assert_unchanged, snapshot

    vlm, image, *_ = built() if which == "llava" else built_qwen()
    before = snapshot(vlm.hf_model)
    for name, spec in mx.methods.METHODS.items():
        reason = spec.why_not(vlm.capabilities)
        if reason is not None:
            assert name == "guided" and "pixels" in reason or "relu" in reason, (name, reason)
            continue
        ex = mx.explain_caption(vlm, image, " ".join(CAPTION), method=name)
        assert ex.maps.shape[0] == len(CAPTION) and torch.isfinite(ex.maps).all(), name
        ax = mx.explain_answer(vlm, image, "describe image", "red circle", method=name)
        assert ax.maps.shape[0] == 1 and torch.isfinite(ax.maps).all(), name
    assert_unchanged(vlm.hf_model, before)


def test_attention_continues_into_the_vision_tower_by_rollout():
    """LM attention with vision=True on LLaVA: the word's head-mean attention to the image tokens, then attention
    rollout (R = I, R += A R, A the head-mean eager attention caught by hooks) over the CLIP layers the LM reads:
    vision_feature_layer=-2 leaves the last layer out."""
    vlm, image, pixels, inputs, spans = built()
    hf = vlm.hf_model
    caught = []
    hooks = [m.register_forward_hook(lambda mod, args, out: caught.append(out[1].detach()))
             for n, m in hf.named_modules() if n.startswith("model.vision_tower") and n.endswith("self_attn")]
    try:
        with torch.no_grad():
            out = eager_attentions(hf, inputs)
    finally:
        for h in hooks:
            h.remove()
    assert len(caught) == hf.config.vision_config.num_hidden_layers == 2
    img = image_positions(vlm, inputs)
    lm = torch.stack(out.attentions)[:, 0].mean(dim=(0, 1))  # (L, L): mean over layers and heads

    def rollout(layers):
        r = torch.eye(caught[0].shape[-1])
        for a in layers:
            r = r + a[0].mean(dim=0) @ r
        return r

    res = mx.methods.LMAttention(vlm.model, reshape=vlm.reshape_for(pixels), vision=True)(inputs, targets_of(spans))
    for n, q in enumerate(absolute(inputs, spans)):
        per_token = torch.cat([lm.new_zeros(1), lm[q, img]])  # CLS first, then the patches
        expected = (per_token @ rollout(caught[:-1])[:, 1:]).reshape(4, 4)
        torch.testing.assert_close(res.pre_relu[n, 0], expected, rtol=1e-4, atol=1e-6)
        wrong = (per_token @ rollout(caught)[:, 1:]).reshape(4, 4)  # the unread last layer changes the map
        assert float((wrong - expected).abs().max()) > 1e-4
    plain = mx.methods.LMAttention(vlm.model, reshape=vlm.reshape_for(pixels))(inputs, targets_of(spans))
    assert plain.pre_relu.shape == res.pre_relu.shape and float((plain.pre_relu - res.pre_relu).abs().max()) > 0
    qwen, qimage, qpixels, qinputs, qspans = built_qwen()  # 3 x 4 image tokens onto the 6 x 8 patch grid
    maps = mx.methods.LMAttention(qwen.model, reshape=qwen.reshape_for(qpixels), vision=True)(qinputs,
                                                                                             targets_of(qspans))
    assert maps.pre_relu.shape[-2:] == (6, 8) and bool(torch.isfinite(maps.maps).all())
