"""Which image-text-to-text classes mmexplain explains, checked.

1. Every family with a tiny model and processor built here (tests/vlm_builders.py): per-word Grad-CAM of a
   given caption and the generated answer's map, each equal to a hand-written autograd reference (our own
   hooks on every vision layer the LM reads, ``torch.autograd.grad`` of the word's summed token
   log-probabilities, channel-mean weights per layer, the layers' pre-ReLU maps summed, ReLU).
2. (slow) Every class of transformers' ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES``, from a tiny config
   made by shrinking its default config: ``mx.hf.adapter`` places it (and names the rule) or refuses it
   with ``mx.hf.Unsupported`` saying what is missing; nothing else may be raised.

``python tests/test_vlm_coverage.py`` prints the table README shows.
"""

from __future__ import annotations

import copy
import functools
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))

import mmexplain as mx  # noqa: E402
from mmexplain.adapters import hf  # noqa: E402

from vlm_builders import BUILDERS  # noqa: E402

CAPTION = "a red circle left of a blue square"
QUESTION = "what color is the circle ?"
NO_PROMPT = ("git", "blip2")


@functools.cache
def built(name):
    torch.manual_seed(sum(map(ord, name)))
    model, proc, (h, w) = BUILDERS[name]()
    vlm = hf.adapter(model.eval(), proc, prompt="" if name in NO_PROMPT else "describe image", max_new_tokens=4)
    return vlm, torch.rand(3, h, w, generator=torch.Generator().manual_seed(7))


def reference_map(vlm, pixels, inputs, span):
    """(score, map (h, w)) of one target by hand: hooks on every site, autograd.grad, per-site channel means."""
    store = {}
    handles = [vlm.hf_model.get_submodule(s).register_forward_hook(
        lambda m, a, o, s=s: store.__setitem__(s, o if torch.is_tensor(o) else o[0])) for s in vlm.sites]
    try:
        with torch.enable_grad():
            logits = vlm.hf_model(**inputs).logits[0]  # (rows, V)
    finally:
        for h in handles:
            h.remove()
    positions, tokens = span
    score = sum(logits[p].float().log_softmax(-1)[t] for p, t in zip(positions, tokens))
    grads = torch.autograd.grad(score, [store[s] for s in vlm.sites])
    grid = vlm.reshape_for(pixels)
    total = 0
    for site, grad in zip(vlm.sites, grads):
        act = store[site].detach().float()
        if act.dim() != 4:
            act, grad = act.reshape(1, -1, act.shape[-1]), grad.float().reshape(1, -1, grad.shape[-1])
            act, grad = grid(act), grid(grad)  # (1, D, h, w): the grid's cells only
        alpha = grad.float().mean(dim=(-2, -1))  # (1, D)
        total = total + (alpha[..., None, None] * act).sum(1)[0]  # (h, w)
    return score.detach(), F.relu(total)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_caption_and_answer_equal_an_autograd_reference(name):
    vlm, image = built(name)
    pixels = vlm.load_image(image)
    words = CAPTION.split()
    ex = mx.explain_caption(vlm, image, CAPTION)
    assert ex.words == words and torch.isfinite(ex.maps).all() and (ex.maps.flatten(1).amax(1) > 0).sum() >= 4
    inputs, spans = vlm.teacher_forced(pixels, words)
    for index in (1, 6):
        score, cam = reference_map(vlm, pixels, dict(inputs), spans[index])
        assert torch.allclose(ex.logprobs[index], score, atol=1e-4), name
        torch.testing.assert_close(ex.result.raw[index, 0], cam, atol=1e-5, rtol=1e-4)
    # the answer: generated (a random model may stop at once: then a given one), its whole log-probability
    generated = vlm.answer(pixels, QUESTION)
    ax = mx.explain_answer(vlm, image, QUESTION, None if generated else "red")
    query = vlm.query(pixels, QUESTION, None if generated else "red")
    target = query.targets[0]
    score, cam = reference_map(vlm, pixels, dict(query.inputs), (target.positions, target.tokens))
    assert torch.allclose(ax.scores[0], score, atol=1e-4), name
    torch.testing.assert_close(ax.result.raw[0, 0], cam, atol=1e-5, rtol=1e-4)
    assert vlm.rule and isinstance(vlm.rule, str)


def test_several_sites_are_summed_on_one_grid():
    """VipLLaVA reads two layers and Qwen3-VL its deepstack blocks: the adapter explains all of them, and one
    layer alone (layer=) gives a different map."""
    for name, count in (("vipllava", 2), ("qwen3_vl", 3)):
        vlm, image = built(name)
        assert len(vlm.sites) == count, vlm.sites
        one = hf.adapter(vlm.hf_model, vlm.processor, layer=vlm.sites[-1], prompt=vlm.prompt)
        both, alone = mx.explain_caption(vlm, image, CAPTION), mx.explain_caption(one, image, CAPTION)
        assert both.result.activations.shape[1] > alone.result.activations.shape[1]
        assert not torch.allclose(both.result.raw, alone.result.raw)
        torch.testing.assert_close(both.logprobs, alone.logprobs)


@pytest.mark.parametrize("name", ["qwen3_vl", "glm4v"])
def test_merge_block_order_matches_the_processors_patchify(name):
    """A probe image whose pixels encode their own row and column: the patch each token holds, read back from
    the processor's flattened patches, lies on the cell our grid puts the token on."""
    vlm, image = built(name)
    h, w = image.shape[-2:]
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w) / h
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w) / w
    probe = torch.stack([rows, cols, torch.zeros(h, w)])  # (3, H, W) in [0, 1]
    images = vlm.family.images(probe)
    ip = vlm.image_processor
    p, t = ip.patch_size, ip.temporal_patch_size
    patches = images["pixel_values"].reshape(-1, 3, t, p, p)[:, :2, 0]  # (N, 2, P, P) in the processor's order
    tokens = (patches.mean(dim=(-2, -1)) * 0.5 + 0.5)[None]  # (1, N, 2): un-normalized (row, col) / size
    laid = vlm.reshape_for(probe[None])(tokens)[0]  # (2, gh, gw)
    assert (laid[0].diff(dim=0) > 0).all() and (laid[0].diff(dim=1).abs() < 1e-4).all(), name
    assert (laid[1].diff(dim=1) > 0).all() and (laid[1].diff(dim=0).abs() < 1e-4).all(), name


@pytest.mark.parametrize("size", [(32, 64), (64, 32), (64, 64)])
def test_mllama_tiles_match_the_processors_tiling(size):
    """Mllama: probe images in three arrangements (1 x 2, 2 x 1, 2 x 2 tiles); each tile's patches, read back
    from pixel_values into the towers' padded sequence ([CLS] + patches + padding per tile), lie on our cells."""
    vlm, _ = built("mllama")
    h, w = size
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w) / h
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w) / w
    probe = torch.stack([rows, cols, torch.zeros(h, w)])
    images = vlm.family.images(probe)
    frames = images["pixel_values"][0, 0, :, :2] * 0.5 + 0.5  # (T, 2, S, S)
    p = vlm.hf_model.config.vision_config.patch_size
    patches = frames.unfold(2, p, p).unfold(3, p, p).mean(dim=(-2, -1)).flatten(2).transpose(1, 2)  # (T, n*n, 2)
    stride = patches.shape[1] + 1 + (8 - (patches.shape[1] + 1) % 8) % 8
    tokens = torch.full((patches.shape[0], stride, 2), -1.0)
    tokens[:, 1:1 + patches.shape[1]] = patches
    laid = vlm.reshape_for(probe[None])(tokens.reshape(1, -1, 2))[0]  # (2, gh, gw)
    assert (laid >= 0).all()
    assert (laid[0].diff(dim=0) > 0).all() and (laid[0].diff(dim=1).abs() < 1e-4).all()
    assert (laid[1].diff(dim=1) > 0).all() and (laid[1].diff(dim=0).abs() < 1e-4).all()
    assert vlm.display_image(probe[None]).shape[-2:] == (laid.shape[1] * p, laid.shape[2] * p)


@pytest.mark.parametrize("name", ["llava_next", "llava_onevision"])
def test_anyres_cells_are_the_tokens_the_model_packs(name):
    """The model's own pack_image_features, fed each token's index as its feature, lists the crop tokens the
    LM reads (base image first, then the unpadded crop grid row by row): our grid's cells, in the same order."""
    vlm, image = built(name)
    pixels = vlm.load_image(image)
    images = vlm.family.images(pixels[0])
    grid = vlm.reshape_for(pixels)
    frames = images["pixel_values"].shape[1]
    n = vlm.hf_model.config.vision_config.image_size // vlm.hf_model.config.vision_config.patch_size
    index = torch.arange(frames * n * n, dtype=torch.float32).reshape(frames, n * n, 1)
    inner = vlm.hf_model.model
    kwargs = {"vision_feature_select_strategy": "full"} if name == "llava_next" else {}
    packed, _ = inner.pack_image_features([index], images["image_sizes"], image_newline=None, **kwargs)
    packed = torch.cat(packed) if isinstance(packed, (list, tuple)) else packed  # (L, 1)
    order, (h, w) = grid.levels[frames * n * n]
    assert packed[: n * n, 0].tolist() == list(range(n * n))  # the base image first
    assert packed[n * n:, 0].long().tolist() == order.tolist() and h * w == packed.shape[0] - n * n
    assert vlm.display_image(pixels).shape[-2:] == (h * 8, w * 8)


def test_register_family_places_a_class_discovery_refuses():
    """A class discovery cannot place (here: LLaVA under another name, its tower not built from its config)
    is refused by name; registered, it works and matches the built-in family."""
    from mmexplain.adapters.hf.families import Llava

    vlm, image = built("llava")

    class Renamed(type(vlm.hf_model)):
        pass

    model = Renamed(vlm.hf_model.config)
    model.load_state_dict(vlm.hf_model.state_dict())
    model.eval()
    model.config.vision_config = copy.deepcopy(model.config.vision_config)  # no module is built from it now
    with pytest.raises(hf.Unsupported, match="Renamed.*vision_config"):
        hf.adapter(model, vlm.processor)

    class MyFamily(Llava):
        def sites(self):
            return [vlm.site]

    hf.register_family(MyFamily, names=("Renamed",))
    try:
        mine = hf.adapter(model, vlm.processor, prompt="describe image")
        assert mine.rule == "registered for class Renamed" and mine.sites == [vlm.site]
        torch.testing.assert_close(mx.explain_caption(mine, image, CAPTION).result.raw,
                                   mx.explain_caption(vlm, image, CAPTION).result.raw)
    finally:
        hf.unregister_family(MyFamily)
    with pytest.raises(TypeError, match="subclass"):
        hf.register_family(object, names=("X",))
    with pytest.raises(ValueError, match="names="):
        hf.register_family(MyFamily)


# ----------------------------------------------------------------------------- the whole mapping

SHRINK = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              embed_dim=32, depth=2, num_heads=4, d_model=32, encoder_layers=1, decoder_layers=1,
              encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37,
              num_layers=2, head_dim=8, out_hidden_size=32, projection_dim=32, text_hidden_size=32,
              vision_hidden_size=32, ffn_dim=37, word_embed_proj_dim=32, image_size=32, patch_size=8, num_experts=2,
              n_routed_experts=2, moe_intermediate_size=16, num_experts_per_tok=1, shared_expert_intermediate_size=16,
              qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, kv_lora_rank=8, q_lora_rank=8, vocab_size=300)
TINY_PARAMETERS = 5_000_000  # a shrunk config that is still larger is listed as not tiny


def tiny_config(model_type):
    """The default config of ``model_type`` with every size key of it and its sub-configs made small."""
    from transformers import AutoConfig, PretrainedConfig

    def shrink(cfg):
        for key, value in list(cfg.to_dict().items()):
            sub = getattr(cfg, key, None)
            if isinstance(sub, PretrainedConfig):
                shrink(sub)
            elif key in SHRINK and isinstance(value, int) and not isinstance(value, bool):
                setattr(cfg, key, SHRINK[key])
            elif key == "pad_token_id" and isinstance(value, int) and value >= SHRINK["vocab_size"]:
                setattr(cfg, key, 0)
        return cfg

    return shrink(AutoConfig.for_model(model_type))


def sweep_one(model_type, class_name):
    """(status, detail) of one class of the mapping."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES  # noqa: F401

    cls = getattr(transformers, class_name, None)
    if cls is None:
        return "not built", "not exported by transformers"
    try:
        config = tiny_config(model_type)
        with torch.device("meta"):
            size = sum(p.numel() for p in cls(config).parameters())
        if size > TINY_PARAMETERS:
            return "not built", f"its shrunk config still has {size / 1e6:.0f}M parameters"
        model = cls(config).eval()
    except Exception as exc:  # a config this sweep cannot shrink consistently: not the adapter's concern
        return "not built", f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    try:
        hf.adapter(model, None)
    except hf.Unsupported as exc:
        return "refused", str(exc).split(": ", 2)[-1].split(" (adapters by class")[0]
    except TypeError as exc:
        if "processor" not in str(exc):
            raise
    family, rule = (None, "its own adapter (mx.hf.caption_adapter)") if class_name in hf.dispatch.CAPTIONERS and class_name not in hf.dispatch.VLMS \
        else hf.discover(model)
    return "placed", rule


def checked_classes():
    """Class name -> builder name, for the families explained end to end above."""
    out = {}
    for name in BUILDERS:
        vlm, _ = built(name)
        out[type(vlm.hf_model).__name__] = (name, vlm.rule)
    return out


def sweep():
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES as MAPPING

    checked = checked_classes()
    rows = []
    for model_type, class_name in sorted(MAPPING.items(), key=lambda kv: kv[1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            status, detail = sweep_one(model_type, class_name)
        if class_name in checked and status != "refused":
            status = "works"
            detail = f"{checked[class_name][1]} (checked against autograd: tests/vlm_builders.py {checked[class_name][0]})"
        rows.append((class_name, model_type, status, detail))
    return rows


@pytest.mark.slow
def test_every_class_of_the_mapping_is_placed_or_refused_by_name():
    rows = sweep()
    statuses = {r[2] for r in rows}
    assert statuses <= {"works", "placed", "refused", "not built"}
    works = {r[0] for r in rows if r[2] == "works"}
    for name in ("LlavaForConditionalGeneration", "Qwen3VLForConditionalGeneration", "Gemma3ForConditionalGeneration",
                 "Mistral3ForConditionalGeneration", "InternVLForConditionalGeneration",
                 "Idefics2ForConditionalGeneration", "InstructBlipForConditionalGeneration",
                 "Glm4vForConditionalGeneration", "MllamaForConditionalGeneration",
                 "LlavaNextForConditionalGeneration", "LlavaOnevisionForConditionalGeneration",
                 "AyaVisionForConditionalGeneration"):
        assert name in works, name
    refused = {r[0]: r[3] for r in rows if r[2] == "refused"}
    assert all(refused.values())  # every refusal says why
    assert "cross-attention" in refused["IdeficsForVisionText2Text"]


def main():
    import logging

    logging.disable(logging.WARNING)
    rows = sweep()
    print("| class | model_type | status | rule or reason |")
    print("|---|---|---|---|")
    for class_name, model_type, status, detail in rows:
        print(f"| {class_name} | {model_type} | {status} | {detail.replace('|', '/')} |")
    counts = {s: sum(r[2] == s for r in rows) for s in ("works", "placed", "refused", "not built")}
    print("\n" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + f" (of {len(rows)} mapping entries)")


if __name__ == "__main__":
    main()
