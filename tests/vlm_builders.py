"""Tiny image-text-to-text models with their processors, built here (ModelTester pattern: width 32, 2 layers,
patch 8, 32-64 px images; word-level tokenizers with each family's special tokens): nothing downloads.

``BUILDERS[name]() -> (model, processor, (h, w))``; ``tiny_config(model_type)`` shrinks any config of
the installed transformers for the coverage sweep.
"""

from __future__ import annotations

import transformers

from test_vlm import BUILDERS as BASE
from test_vlm import CHAT, half, llama, make_tokenizer, vit


def qwen3(model_cls="Qwen3VLForConditionalGeneration", config_cls="Qwen3VLConfig", processor_cls="Qwen3VLProcessor",
          text_type=None):
    from transformers import Qwen2VLImageProcessor

    specials = ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
    tok = make_tokenizer(specials, extra={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                          "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"})
    ip = Qwen2VLImageProcessor(size={"shortest_edge": 64, "longest_edge": 64 * 64}, patch_size=8, merge_size=2,
                               temporal_patch_size=2, **half())
    from transformers import Qwen3VLVideoProcessor

    proc = getattr(transformers, processor_cls)(image_processor=ip, tokenizer=tok, video_processor=Qwen3VLVideoProcessor(
        patch_size=8, merge_size=2, temporal_patch_size=2),
        chat_template=CHAT.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>"))
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in zip(("image", "start", "end", "video"), specials)}
    text = llama(tok, rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2], "mrope_interleaved": True},
                 head_dim=8)
    text.pop("model_type")
    if text_type:
        text["model_type"] = text_type
    vision = dict(depth=3, hidden_size=32, intermediate_size=37, num_heads=4, out_hidden_size=32, patch_size=8,
                  spatial_merge_size=2, temporal_patch_size=2, deepstack_visual_indexes=[0, 1],
                  num_position_embeddings=64)
    cfg = getattr(transformers, config_cls)(text_config=text, vision_config=vision, image_token_id=ids["image"],
                                            video_token_id=ids["video"], vision_start_token_id=ids["start"],
                                            vision_end_token_id=ids["end"])
    return getattr(transformers, model_cls)(cfg), proc, (48, 64)


def glm4v(prefix="Glm4v"):
    from transformers import Glm4vImageProcessor, Glm4vVideoProcessor

    Glm4vConfig = getattr(transformers, f"{prefix}Config")
    Glm4vForConditionalGeneration = getattr(transformers, f"{prefix}ForConditionalGeneration")
    Glm4vProcessor = getattr(transformers, f"{prefix}Processor")

    specials = ["<|image|>", "<|begin_of_image|>", "<|end_of_image|>", "<|video|>", "<|begin_of_video|>",
                "<|end_of_video|>"]
    tok = make_tokenizer(specials, extra={"image_token": "<|image|>", "video_token": "<|video|>"})
    ip = Glm4vImageProcessor(size={"shortest_edge": 64 * 48, "longest_edge": 64 * 64}, patch_size=8, merge_size=2,
                             temporal_patch_size=2, **half())
    proc = Glm4vProcessor(image_processor=ip, tokenizer=tok, video_processor=Glm4vVideoProcessor(),
                          chat_template=CHAT.replace("IMAGE", "<|begin_of_image|><|image|><|end_of_image|>"))
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    text = llama(tok, rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2]}, head_dim=8,
                 partial_rotary_factor=1.0)
    text.pop("model_type")
    vision = dict(depth=2, hidden_size=32, intermediate_size=37, num_heads=4, out_hidden_size=32, patch_size=8,
                  spatial_merge_size=2, temporal_patch_size=2, image_size=32)
    cfg = Glm4vConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image|>"],
                      video_token_id=ids["<|video|>"], image_start_token_id=ids["<|begin_of_image|>"],
                      image_end_token_id=ids["<|end_of_image|>"], video_start_token_id=ids["<|begin_of_video|>"],
                      video_end_token_id=ids["<|end_of_video|>"])
    return Glm4vForConditionalGeneration(cfg), proc, (48, 64)


def gemma3():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    specials = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok = make_tokenizer(specials, extra={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                                          "eoi_token": "<end_of_image>"})
    ip = Gemma3ImageProcessor(size={"height": 32, "width": 32}, **half())
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4,
                           chat_template=CHAT.replace("IMAGE", "<start_of_image>"))
    text = llama(tok, model_type="gemma3_text", head_dim=8, sliding_window=16)
    cfg = Gemma3Config(vision_config=dict(model_type="siglip_vision_model", **vit()), text_config=text,
                       mm_tokens_per_image=4, image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
                       boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                       eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"))
    model = Gemma3ForConditionalGeneration(cfg)
    model.model.multi_modal_projector.mm_input_projection_weight.data.normal_(0, 0.2)  # initialised to zeros
    return model, proc, (40, 30)


def mistral3():
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessor, PixtralProcessor

    specials = ["[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    tok = make_tokenizer(specials)
    ip = PixtralImageProcessor(size={"longest_edge": 48}, patch_size=8, **half())
    proc = PixtralProcessor(image_processor=ip, tokenizer=tok, patch_size=8, spatial_merge_size=2,
                            chat_template=CHAT.replace("IMAGE", "[IMG]"))
    vision = dict(model_type="pixtral", hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, head_dim=8, image_size=48, patch_size=8)
    cfg = Mistral3Config(vision_config=vision, text_config=llama(tok, model_type="mistral", head_dim=8),
                         image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2,
                         vision_feature_layer=-1)
    return Mistral3ForConditionalGeneration(cfg), proc, (48, 32)


def vipllava():
    model, proc, size = BASE["llava"]()
    from transformers import VipLlavaConfig, VipLlavaForConditionalGeneration

    cfg = VipLlavaConfig(vision_config=dict(model_type="clip_vision_model", **vit(num_hidden_layers=3)),
                         text_config=model.config.text_config.to_dict(), image_token_index=model.config.image_token_id,
                         vision_feature_layers=[-3, -2], projector_layernorm_eps=1e-5)
    proc.vision_feature_select_strategy = "full"
    proc.num_additional_image_tokens = 0
    return VipLlavaForConditionalGeneration(cfg), proc, size


def internvl():
    from transformers import GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers import InternVLVideoProcessor

    specials = ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tok = make_tokenizer(specials, extra={"start_image_token": "<img>", "end_image_token": "</img>",
                                          "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    ip = GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=False, max_patches=1, **half())
    proc = InternVLProcessor(image_processor=ip, tokenizer=tok, video_processor=InternVLVideoProcessor(),
                             image_seq_length=4, chat_template=CHAT.replace("IMAGE", "<IMG_CONTEXT>"))
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=[32, 32], patch_size=[8, 8])
    cfg = InternVLConfig(vision_config=vision, text_config=llama(tok, model_type="qwen2"),
                         image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5,
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    return InternVLForConditionalGeneration(cfg), proc, (40, 30)


def idefics2():
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration, Idefics2ImageProcessor, Idefics2Processor

    from test_vlm import IDEFICS_SPECIALS

    tok = make_tokenizer(IDEFICS_SPECIALS)
    ip = Idefics2ImageProcessor(do_image_splitting=False, size={"longest_edge": 32, "shortest_edge": 32}, **half())
    proc = Idefics2Processor(image_processor=ip, tokenizer=tok, image_seq_len=4,
                             chat_template=CHAT.replace("IMAGE", "<image>"))
    cfg = Idefics2Config(vision_config=vit(), text_config=llama(tok, model_type="mistral"),
                         perceiver_config=dict(hidden_size=32, resampler_n_latents=4, resampler_depth=1,
                                               resampler_n_heads=2, resampler_head_dim=8, num_key_value_heads=1),
                         image_token_id=tok.convert_tokens_to_ids("<image>"))
    return Idefics2ForConditionalGeneration(cfg), proc, (40, 30)


def instructblip():
    from transformers import (BlipImageProcessor, InstructBlipConfig, InstructBlipForConditionalGeneration,
                              InstructBlipProcessor)

    tok = make_tokenizer()
    proc = InstructBlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}, **half()),
                                 tokenizer=tok, qformer_tokenizer=make_tokenizer(), num_query_tokens=4)
    cfg = InstructBlipConfig(
        vision_config=vit(), num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"),
        qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                            encoder_hidden_size=32, vocab_size=len(proc.qformer_tokenizer)),
        text_config=dict(model_type="opt", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, ffn_dim=37, word_embed_proj_dim=32, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3, max_position_embeddings=64))
    return InstructBlipForConditionalGeneration(cfg), proc, (40, 30)


def aya_vision():
    from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration, AyaVisionProcessor, GotOcr2ImageProcessor

    specials = ["<image>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>", "TILE",
                "TILE_GLOBAL"]
    tok = make_tokenizer(specials)
    ip = GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=False, max_patches=1, **half())
    proc = AyaVisionProcessor(image_processor=ip, tokenizer=tok, patch_size=8, img_size=32, downsample_factor=2,
                              chat_template=CHAT.replace("IMAGE", "<image>"))
    text = llama(tok, model_type="cohere2", head_dim=8, sliding_window=64, layer_types=["full_attention"] * 2)
    cfg = AyaVisionConfig(vision_config=dict(model_type="siglip_vision_model", **vit()), text_config=text,
                          downsample_factor=2, image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
                          vision_feature_layer=-1, vision_feature_select_strategy="full")
    return AyaVisionForConditionalGeneration(cfg), proc, (40, 30)


PINPOINTS = [[32, 64], [64, 32], [64, 64]]


def llava_next(video=False):
    from transformers import LlavaNextImageProcessor

    prefix = "LlavaNextVideo" if video else "LlavaNext"
    LlavaNextConfig = getattr(transformers, f"{prefix}Config")
    LlavaNextForConditionalGeneration = getattr(transformers, f"{prefix}ForConditionalGeneration")
    tok = make_tokenizer(["<image>", "<video>"], extra={"image_token": "<image>", "video_token": "<video>"})
    ip = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                 image_grid_pinpoints=PINPOINTS, **half())
    kwargs = dict(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                  num_additional_image_tokens=1, chat_template=CHAT.replace("IMAGE", "<image>"))
    if video:
        kwargs["video_processor"] = transformers.LlavaNextVideoVideoProcessor()
    proc = getattr(transformers, f"{prefix}Processor")(**kwargs)
    extra = {"video_token_index": tok.convert_tokens_to_ids("<video>")} if video else {}
    cfg = LlavaNextConfig(**extra,vision_config=dict(model_type="clip_vision_model", **vit(num_hidden_layers=3)),
                          text_config=llama(tok, max_position_embeddings=256),
                          image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=PINPOINTS,
                          vision_feature_layer=-2, vision_feature_select_strategy="default")
    return LlavaNextForConditionalGeneration(cfg), proc, (40, 64)  # 1 x 2 crops + the base image


def llava_onevision():
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    tok = make_tokenizer(["<image>", "<video>"], extra={"image_token": "<image>", "video_token": "<video>"})
    ip = LlavaOnevisionImageProcessor(size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS, **half())
    proc = LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=LlavaOnevisionVideoProcessor(),
                                   num_image_tokens=16, vision_feature_select_strategy="full",
                                   chat_template=CHAT.replace("IMAGE", "<image>"))
    cfg = LlavaOnevisionConfig(vision_config=dict(model_type="siglip_vision_model", **vit()),
                               text_config=llama(tok, model_type="qwen2", max_position_embeddings=256),
                               image_token_index=tok.convert_tokens_to_ids("<image>"),
                               video_token_index=tok.convert_tokens_to_ids("<video>"), image_grid_pinpoints=PINPOINTS,
                               vision_feature_layer=-1, vision_feature_select_strategy="full")
    return LlavaOnevisionForConditionalGeneration(cfg), proc, (64, 40)  # 2 x 1 crops + the base image


def mllama():
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessor, MllamaProcessor

    tok = make_tokenizer(["<|image|>", "<|python_tag|>"], extra={"image_token": "<|image|>"})
    ip = MllamaImageProcessor(size={"height": 32, "width": 32}, max_image_tiles=4, **half())
    proc = MllamaProcessor(image_processor=ip, tokenizer=tok, chat_template=CHAT.replace("IMAGE", "<|image|>"))
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_global_layers=1, num_attention_heads=4,
                  image_size=32, patch_size=8, max_num_tiles=4, intermediate_layers_indices=[1], vision_output_dim=64)
    text = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=37, cross_attention_layers=[1], pad_token_id=0, bos_token_id=2, eos_token_id=3,
                max_position_embeddings=128)
    cfg = MllamaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<|image|>"))
    model = MllamaForConditionalGeneration(cfg)
    for name, param in model.named_parameters():
        if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
            param.data.fill_(1.0)  # initialised to zeros: the LM would not read the image
    return model, proc, (32, 64)  # 1 x 2 tiles of 4 x 4 patches


def video_llava():
    from transformers import (VideoLlavaConfig, VideoLlavaForConditionalGeneration, VideoLlavaImageProcessor,
                              VideoLlavaProcessor, VideoLlavaVideoProcessor)

    tok = make_tokenizer(["<image>", "<video>"], extra={"image_token": "<image>", "video_token": "<video>"})
    ip = VideoLlavaImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, **half())
    proc = VideoLlavaProcessor(image_processor=ip, video_processor=VideoLlavaVideoProcessor(), tokenizer=tok,
                               patch_size=8, chat_template=CHAT.replace("IMAGE", "<image>"))
    cfg = VideoLlavaConfig(vision_config=dict(model_type="clip_vision_model", **vit(num_hidden_layers=3)),
                           text_config=llama(tok), image_token_index=tok.convert_tokens_to_ids("<image>"),
                           video_token_index=tok.convert_tokens_to_ids("<video>"), vision_feature_layer=-2)
    return VideoLlavaForConditionalGeneration(cfg), proc, (40, 50)


BUILDERS = {
    **BASE,
    "qwen3_vl": qwen3,
    "qwen3_vl_moe": lambda: qwen3("Qwen3VLMoeForConditionalGeneration", "Qwen3VLMoeConfig"),
    "glm4v": glm4v,
    "gemma3": gemma3,
    "mistral3": mistral3,
    "vipllava": vipllava,
    "internvl": internvl,
    "idefics2": idefics2,
    "instructblip": instructblip,
    "aya_vision": aya_vision,
    "llava_next": llava_next,
    "llava_onevision": llava_onevision,
    "mllama": mllama,
    "glm46v": lambda: glm4v("Glm46V"),
    "llava_next_video": lambda: llava_next(video=True),
    "video_llava": video_llava,
}
