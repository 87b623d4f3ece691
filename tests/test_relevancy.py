"""Relevancy (Chefer et al. 2021) on tiny transformers models, all on CPU, nothing downloads.

- exact values: a 1-layer, 1-head ViT against the closed form R = I + A-bar (CLS row);
- cross-check: a 2-layer VisionEncoderDecoder (ViT + GPT-2) against the rules written out here,
  per sample and per word, from attentions the model returns itself (eager, output_attentions)
  and one backward per word;
- the model untouched (configs, registered kernels, hooks, weights, grads), also after errors,
  and its logits equal to the eager model's;
- the shipped tiny-ved and tiny-vilt, and a tiny random BLIP captioner: shapes, finite, non-constant.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import mmexplain as mx  # noqa: E402
from mmexplain.methods.relevancy import Relevancy  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "models"


# ---------------------------------------------------------------------------- tiny models


def tiny_vit(layers: int = 1, heads: int = 1, **extra):
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=8, num_hidden_layers=layers, num_attention_heads=heads,
                                    intermediate_size=16, image_size=16, patch_size=4, num_labels=3,
                                    initializer_range=0.5, **extra)
    return transformers.ViTForImageClassification(config).eval()


def tiny_ved():
    torch.manual_seed(0)
    enc = transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                 image_size=16, patch_size=4, initializer_range=0.3)
    dec = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=20, n_positions=12,
                                  add_cross_attention=True, is_decoder=True, bos_token_id=1, eos_token_id=2,
                                  initializer_range=0.3)
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id = 1
    return transformers.VisionEncoderDecoderModel(config).eval()  # sdpa, the default


def tiny_blip():
    torch.manual_seed(0)
    text = dict(vocab_size=30, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=32, bos_token_id=3, pad_token_id=0, sep_token_id=2, eos_token_id=2,
                initializer_range=0.2)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  image_size=32, patch_size=8, initializer_range=0.2)
    config = transformers.BlipConfig(text_config=text, vision_config=vision, projection_dim=32)
    return transformers.BlipForConditionalGeneration(config).eval()


VED_IDS = torch.tensor([[1, 4, 5, 6, 7], [1, 9, 8, 3, 5]])  # (B, T) decoder inputs, start token first
VED_WORDS = [mx.targets.WordLogProb(k, VED_IDS[:, k + 1].tolist()) for k in range(4)]  # word k+1 at logit k


def ved_inputs():
    torch.manual_seed(1)
    return {"pixel_values": torch.rand(2, 3, 16, 16), "decoder_input_ids": VED_IDS}


def state(model):
    """Everything a call must leave as it found it."""
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
    return {
        "params": {n: (p.detach().clone(), p.requires_grad, p.grad) for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        "configs": [(c._attn_implementation, c.output_attentions) for c in configs.values()]
                   + [(getattr(c, k)._attn_implementation,) for c in configs.values() for k in c.sub_configs],
        "kernels": sorted(AttentionInterface._global_mapping), "masks": sorted(AttentionMaskInterface._global_mapping),
        "grad": torch.is_grad_enabled(),
    }


def assert_same_state(before, after):
    for name, (value, requires_grad, grad) in before["params"].items():
        v2, r2, g2 = after["params"][name]
        assert torch.equal(value, v2) and requires_grad == r2 and grad is None and g2 is None, name
    for key in ("training", "hooks", "configs", "kernels", "masks", "grad"):
        assert before[key] == after[key], key


# ---------------------------------------------------------------------------- exact values


def test_one_layer_one_head_vit_equals_closed_form():
    model = tiny_vit(attn_implementation="eager")
    x = torch.rand(2, 3, 16, 16)
    res = Relevancy(model)(x, [mx.targets.ClassLogit(c) for c in range(3)])
    assert res.maps.shape == (3, 2, 16, 16) and res.raw.shape == (3, 2, 4, 4)
    for c in range(3):
        out = model(x, output_attentions=True)
        (attention,) = out.attentions  # (B, 1, 17, 17)
        (grad,) = torch.autograd.grad(out.logits[:, c].sum(), attention)
        a_bar = (grad * attention).clamp(min=0)[:, 0]  # one head: the mean is the head itself
        r = torch.eye(17) + a_bar  # R = I + A-bar R with R = I
        expected = r[:, 0, 1:].reshape(2, 4, 4)  # CLS row, CLS column dropped
        torch.testing.assert_close(res.raw[c], expected, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(res.scores[c], out.logits[:, c].detach())
    assert res.raw.amax() > 0


def _normalized(r):
    eye = torch.eye(r.shape[-1])
    extra = r - eye
    total = extra.sum(-1, keepdim=True)
    return torch.where(total > 0, extra / total.where(total > 0, torch.ones_like(total)), extra) + eye


def _rules_by_hand(model, inputs, target, row):
    """The paper's rules, sample by sample, from the eager model's own attentions and one backward."""
    out = model(**inputs, output_attentions=True)
    enc, dec, cross = list(out.encoder_attentions), list(out.decoder_attentions), list(out.cross_attentions)
    grads = torch.autograd.grad(target(out).sum(), enc + dec + cross)
    g_enc, g_dec, g_cross = grads[:len(enc)], grads[len(enc):len(enc) + len(dec)], grads[len(enc) + len(dec):]
    maps = []
    for b in range(inputs["pixel_values"].shape[0]):
        def cam(a, g):
            return (g[b] * a[b]).clamp(min=0).mean(dim=0)  # (Lq, Lk)

        m, t = enc[0].shape[-1], dec[0].shape[-1]
        r_qq, r_qs = torch.eye(m), torch.zeros(m, t)  # the image encoder never sees the text: R^qs stays 0
        for a, g in zip(enc, g_enc):
            r_qq = r_qq + cam(a, g) @ r_qq
        r_ss, r_sq = torch.eye(t), torch.zeros(t, m)
        for layer in range(len(dec)):  # GPT-2 block: self-attention, then cross-attention
            c = cam(dec[layer], g_dec[layer])
            r_ss, r_sq = r_ss + c @ r_ss, r_sq + c @ r_sq
            c = cam(cross[layer], g_cross[layer])
            r_sq, r_ss = r_sq + _normalized(r_ss).T @ c @ _normalized(r_qq), r_ss + c @ r_qs
        maps.append(r_sq[row, 1:].reshape(4, 4))  # the word's decoder row, CLS column dropped
    return torch.stack(maps)


def test_encoder_decoder_equals_rules_written_here_for_many_words():
    model = tiny_ved()
    reference = copy.deepcopy(model)
    reference.set_attn_implementation("eager")
    inputs = ved_inputs()
    res = Relevancy(model)(inputs, VED_WORDS)  # four words: one forward, one batched backward
    assert res.raw.shape == (4, 2, 4, 4) and res.weights.shape == (4, 2, 17)
    for k, word in enumerate(VED_WORDS):
        expected = _rules_by_hand(reference, inputs, word, row=k)
        torch.testing.assert_close(res.raw[k], expected, rtol=1e-4, atol=1e-7)
    assert all(res.raw[k].amax() > res.raw[k].amin() for k in range(4))
    # a word of two tokens reads the mean of its two rows
    pair = mx.targets.SequenceLogProb(VED_IDS[0, 2:4].tolist(), positions=[1, 2])
    both = Relevancy(model)({k: v[:1] for k, v in inputs.items()}, pair)
    by_rows = Relevancy(model)({k: v[:1] for k, v in inputs.items()}, [pair, pair], rows=[1, 2])
    torch.testing.assert_close(both.raw, by_rows.raw.mean(dim=0))


def test_frozen_model_gives_the_same_maps():
    """Parameters without requires_grad: the recorded layers start the graph themselves."""
    model, inputs = tiny_ved(), ved_inputs()
    expected = Relevancy(model)(inputs, VED_WORDS).raw
    for p in model.parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(Relevancy(model)(inputs, VED_WORDS).raw, expected)


# ---------------------------------------------------------------------------- the model untouched


def test_model_untouched_and_logits_equal_eager():
    model, inputs = tiny_ved(), ved_inputs()
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    before = state(model)
    res = Relevancy(model)(inputs, VED_WORDS[0])
    assert_same_state(before, state(model))
    assert model.config.encoder._attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(res.output.logits, eager(**inputs).logits, rtol=0, atol=1e-5)

    def broken(output):
        raise RuntimeError("inside the target")

    with pytest.raises(RuntimeError, match="inside the target"):
        Relevancy(model)(inputs, [VED_WORDS[0], broken])
    assert_same_state(before, state(model))
    bad = {**inputs, "decoder_input_ids": torch.full_like(VED_IDS, 99)}  # fails in the decoder, after the encoder
    with pytest.raises(IndexError):
        Relevancy(model)(bad, VED_WORDS[0])
    assert_same_state(before, state(model))


# ---------------------------------------------------------------------------- shipped and tiny models


def test_shipped_tiny_ved_every_word():

    cap = mx.zoo.load("tiny-ved", MODELS / "tiny-ved")
    pixels = cap.load_image(mx.world.generate(2_000_000, size=64).image)
    words = cap.generate(pixels)
    inputs, spans = cap.teacher_forced(pixels, words)
    targets = [mx.targets.SequenceLogProb(t, positions=p) for p, t in spans]
    before = state(cap.model)
    res = Relevancy(cap.model)(inputs, targets)
    assert_same_state(before, state(cap.model))
    assert res.maps.shape == (len(words), 1, 64, 64) and res.raw.shape == (len(words), 1, 8, 8)
    assert torch.isfinite(res.raw).all() and (res.raw >= 0).all()
    assert all(m.amax() > m.amin() for m in res.raw)
    assert ((res.maps >= 0) & (res.maps <= 1)).all()


def test_shipped_tiny_vilt_reads_the_cls_row():
    from mmexplain.adapters.hf import ViltPatchOrder

    vqa = mx.zoo.load("tiny-vilt", MODELS / "tiny-vilt")
    wrapper = ViltPatchOrder(vqa.hf_model)  # image tokens in row-major patch order
    side = 64 // vqa.hf_model.config.patch_size
    pixels = vqa.load_image(mx.world.generate(2_000_001, size=64).image)
    inputs = {"pixel_values": pixels, **vqa.tokenizer("what color is the circle ?", return_tensors="pt")}
    with torch.no_grad():
        logits = wrapper(**inputs).logits
    before = state(wrapper)
    res = Relevancy(wrapper, grid=(side, side))(inputs, [mx.targets.TopClass(0), mx.targets.TopClass(1)])
    assert_same_state(before, state(wrapper))
    assert vqa.hf_model.config.output_attentions is False
    text = inputs["input_ids"].shape[1]
    assert res.raw.shape == (2, 1, 8, 8) and res.weights.shape == (2, 1, text + 1 + 64)  # [text, image CLS, patches]
    assert torch.isfinite(res.raw).all() and all(m.amax() > m.amin() for m in res.raw)
    torch.testing.assert_close(res.output.logits, logits)
    torch.testing.assert_close(res.raw, res.weights[..., -64:].unflatten(-1, (8, 8)))  # row 0, patch columns
    with pytest.raises(IndexError):  # an error inside the recorded forward (hooks and config set)
        bad = {**inputs, "input_ids": inputs["input_ids"] + 10_000}
        Relevancy(wrapper, grid=(side, side))(bad, mx.targets.TopClass(0))
    assert_same_state(before, state(wrapper))


def test_tiny_blip_caption_and_frozen_hooks():
    model = tiny_blip()
    torch.manual_seed(2)
    ids = torch.tensor([[3, 5, 6, 7, 8]])
    inputs = {"pixel_values": torch.rand(1, 3, 32, 32), "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    words = [mx.targets.WordLogProb(k, int(ids[0, k + 1])) for k in range(4)]
    before = state(model)
    res = Relevancy(model)(inputs, words)
    assert_same_state(before, state(model))
    assert res.maps.shape == (4, 1, 32, 32) and res.raw.shape == (4, 1, 4, 4) and res.weights.shape == (4, 1, 17)
    assert torch.isfinite(res.raw).all() and all(m.amax() > m.amin() for m in res.raw)
    for p in model.parameters():  # the hooks start the graph at the attention inputs
        p.requires_grad_(False)
    torch.testing.assert_close(Relevancy(model)(inputs, words).raw, res.raw)
    # naming the encoder by hand gives the same streams as finding it
    torch.testing.assert_close(Relevancy(model, encoder="vision_model")(inputs, words).raw, res.raw)


# ---------------------------------------------------------------------------- errors


def test_unsupported_attention_and_bad_arguments():
    config = transformers.VisualBertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                           intermediate_size=8, visual_embedding_dim=8)
    with pytest.raises(TypeError, match="VisualBertModel"):
        Relevancy(transformers.VisualBertModel(config))
    with pytest.raises(TypeError, match="no transformers attention"):
        Relevancy(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    model = tiny_vit(layers=2, heads=2)
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="grid"):
        Relevancy(model, grid=(3, 0))
    with pytest.raises(ValueError, match="image_tokens"):
        Relevancy(model, image_tokens=range(1, 10), grid=(4, 4))(x, mx.targets.ClassLogit(0))
    with pytest.raises(ValueError, match="encoder"):
        Relevancy(model, encoder="decoder")
    with pytest.raises(ValueError, match="rows"):
        Relevancy(model)(x, [mx.targets.ClassLogit(0)], rows=[0, 1])
    with pytest.raises(ValueError, match="rows"):
        Relevancy(model, token=40)(x, mx.targets.ClassLogit(0))
    with pytest.raises(ValueError, match="one scalar per sample"):
        Relevancy(model)(x, lambda out: out.logits.sum())
    # explicit image tokens and grid give the default's answer
    explicit = Relevancy(model, image_tokens=slice(1, None), grid=(4, 4))(x, mx.targets.ClassLogit(1))
    torch.testing.assert_close(explicit.raw, Relevancy(model)(x, mx.targets.ClassLogit(1)).raw)
