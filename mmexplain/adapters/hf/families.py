"""What differs between image-text-to-text families: the layer the LM reads, the image's tokens, the prompt.

One class per family; the adapter (:class:`~mmexplain.adapters.hf.vlm.ImageTextToText`)
asks it, per image, for:

* ``site()``: the vision layer the language model reads, by default (names inside the
  transformers model, derived from its config and module tree, not fixed strings):
  LLaVA's ``vision_feature_layer`` (``hidden_states[k]`` is the output of layer ``k - 1``),
  SigLIP's / Idefics3's / GIT's final LayerNorm, Qwen's last vision block (the merger's
  input), BLIP-2's last vision layer (its ``post_layernorm`` runs twice), Florence-2's last
  DaViT block;
* ``images(image)``: the image processor's tensors; ``grid(images)``: the
  :class:`~.layouts.TokenGrid` of its vision layers; ``view(images)``: the picture the
  grid lies on (the processor's own pixels, un-normalized, un-patchified, tiles stitched);
* ``prompt_inputs(image, prompt)``: the processor's inputs for one prompt (chat template
  when the processor has one);
* ``image_positions(inputs)``: where the image's tokens sit in the sequence the language
  model (or Florence-2's encoder) reads: ``input_ids == config.image_token_id``, or
  GIT's prefix of image tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..grids import conv_grid
from .common import display_of, pixels_of
from .layouts import Level, TokenGrid, as_int, merge_blocks, row_major, stitch, tiles, unpatchify, windows
from ...errors import InputError

__all__ = ["FAMILIES", "Family", "chat_text", "tower_of"]


def chat_text(processor: Any, prompt: str, *, image: bool = True) -> str:
    """The processor's chat template applied to one user turn ``[image, prompt]`` (``image=False``: a later
    turn, ``[prompt]`` alone), with the generation prompt."""
    content = [{"type": "image"}] if image else []
    messages = [{"role": "user", "content": [*content, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def find(model: nn.Module, name: str, *, under: str = "") -> str:
    """The shortest module path (under ``under``) whose last part is ``name``; ValueError naming it otherwise."""
    prefix = under + "." if under else ""
    hits = [n for n, _ in model.named_modules() if n.startswith(prefix) and n.rsplit(".", 1)[-1] == name]
    if not hits:
        raise InputError(f"{type(model).__name__} has no module {name!r}" + (f" under {under!r}" if under else "")
                         + "; pass layer=")
    return min(hits, key=len)


def blocks(model: nn.Module, under: str) -> str:
    """The longest ``nn.ModuleList`` of blocks under ``under`` (its path)."""
    lists = [(n, m) for n, m in model.named_modules() if n.startswith(under + ".") and isinstance(m, nn.ModuleList)
             and n.rsplit(".", 1)[-1] in ("layers", "layer", "blocks")]
    if not lists:
        raise InputError(f"{type(model).__name__}: no list of vision blocks under {under!r}; pass layer=")
    return max(lists, key=lambda item: (len(item[1]), -len(item[0])))[0]


def pixel_key(images: dict[str, Any]) -> str:
    """The processor's pixels: ``pixel_values``, or the one key that starts with it (``pixel_values_images``)."""
    if "pixel_values" in images:
        return "pixel_values"
    keys = [k for k in images if k.startswith("pixel_values") and "video" not in k]
    if len(keys) != 1:
        raise InputError(f"images: expected pixel_values from the processor, got keys {sorted(images)}")
    return keys[0]


def tower_of(model: nn.Module) -> str | None:
    """The vision tower: the outermost module built from ``config.vision_config`` (None when there is none)."""
    vision = getattr(model.config, "vision_config", None)
    if vision is None:
        return None
    hits = [n for n, m in model.named_modules() if n and getattr(m, "config", None) is vision]
    return min(hits, key=lambda n: (n.count("."), "video" in n)) if hits else None  # Video-LLaVA: its image tower


def has_module(model: nn.Module, name: str) -> bool:
    """True when some module's last name part is ``name``."""
    return any(n.rsplit(".", 1)[-1] == name for n, _ in model.named_modules())


def feature_layer_of(config: Any) -> Any:
    """``config.vision_feature_layer`` (VipLLaVA: ``vision_feature_layers``), or None."""
    value = getattr(config, "vision_feature_layer", None)
    return getattr(config, "vision_feature_layers", None) if value is None else value


def feature_layers(model: nn.Module, tower: str) -> list[str]:
    """The blocks ``config.vision_feature_layer`` selects (an int or a list): ``hidden_states[k]`` is block ``k - 1``."""
    layers = blocks(model, tower)
    count = len(model.get_submodule(layers))
    chosen = feature_layer_of(model.config)
    chosen = list(chosen) if isinstance(chosen, (list, tuple)) else [chosen]
    indices = sorted({k if k >= 0 else k + count + 1 for k in chosen})
    if indices[0] < 1:
        raise InputError("the model reads its vision embeddings (vision_feature_layer selects hidden_states[0]); "
                         "pass layer=")
    return [f"{layers}.{k - 1}" for k in indices]


def patches_of(conv: nn.Conv2d, size: tuple[int, int]) -> tuple[int, int]:
    """The output grid of a patch convolution (``padding="valid"`` is no padding, as SigLIP's)."""
    if conv.padding == "valid":
        k, s = conv.kernel_size, conv.stride
        return (size[0] - k[0]) // s[0] + 1, (size[1] - k[1]) // s[1] + 1
    return conv_grid(conv, size)


def plain_levels(h: int, w: int) -> dict[int, Level]:
    """A ViT-style tower: ``h*w`` patches row-major, with or without a CLS token before them."""
    return {h * w: (row_major(h, w), (h, w)), h * w + 1: (row_major(h, w, prefix=1), (h, w))}


class Family:
    """A family of image-text-to-text models; subclasses override what their layout needs."""

    names: tuple[str, ...] = ()  # transformers class names
    tower: str = "vision_tower"  # the vision tower's module name
    default_prompt = "Describe the image."
    encoder_decoder = False
    #: what marks the image in a prompt without chat template ("" when the processor inserts the image itself)
    placeholder_of: str = "image_token"

    def __init__(self, model: nn.Module, processor: Any, image_processor: Any, tokenizer: Any) -> None:
        self.model, self.processor, self.image_processor, self.tokenizer = model, processor, image_processor, tokenizer
        self.tower_name = tower_of(model) or find(model, self.tower)

    @classmethod
    def claims(cls, model: nn.Module) -> str | None:
        """Why this family lays out ``model`` (the rule, in words), or None when it does not."""
        return f"class name {type(model).__name__}" if type(model).__name__ in cls.names else None

    # ------------------------------------------------------------- vision
    def site(self) -> str:
        """The vision layer the language model reads."""
        return find(self.model, "post_layernorm", under=self.tower_name)

    def sites(self) -> list[str]:
        """Every vision layer the language model reads (several: their maps are summed on one grid)."""
        return [self.site()]

    def images(self, image: Tensor) -> dict[str, Tensor]:
        """The image processor's tensors for one (3, H, W) image in [0, 1]."""
        return pixels_of(self.image_processor, image)

    def patch_grid(self, images: dict[str, Tensor]) -> tuple[int, int]:
        """The (h, w) patch grid of the tower's patch convolution on these pixels."""
        conv = next(m for n, m in self.model.named_modules() if n.startswith(self.tower_name) and isinstance(m, nn.Conv2d))
        return patches_of(conv, tuple(images["pixel_values"].shape[-2:]))

    def grid(self, images: dict[str, Tensor]) -> TokenGrid:
        return TokenGrid(plain_levels(*self.patch_grid(images)))

    def view(self, images: dict[str, Tensor]) -> Tensor:
        """(3, H, W) in [0, 1]: the processor's pixels, un-normalized."""
        return display_of(self.image_processor, images["pixel_values"])

    def pixel_layout(self, images: dict[str, Tensor]) -> Callable[[Tensor], Tensor] | None:
        """Lays a tensor shaped as ``images``' pixel tensor onto the picture :meth:`view` shows, ``-> (C, H, W)``;
        None when the pixels are no one picture (tiles, crops)."""
        pixels = images[pixel_key(images)]
        if pixels.dim() < 4 or pixels.shape[:-3].numel() != 1:
            return None
        return lambda values: values.reshape(-1, *values.shape[-3:])[0]

    # ------------------------------------------------------------- text
    def placeholder(self) -> str:
        return getattr(self.processor, self.placeholder_of, "") if self.placeholder_of else ""

    def prompt_text(self, prompt: str, *, chat: bool) -> str:
        if chat:
            return chat_text(self.processor, prompt)
        mark = self.placeholder()
        return f"{mark}{prompt}" if mark else prompt

    def prompt_inputs(self, image: Tensor, prompt: str, *, chat: bool) -> dict[str, Tensor]:
        """The processor's inputs (batch of one) for ``prompt`` and the image; ``labels`` dropped."""
        text = self.prompt_text(prompt, chat=chat)
        try:
            enc = dict(self.processor(text=text, images=[image], return_tensors="pt", do_rescale=False))
        except (TypeError, ValueError) as exc:  # a processor that loads images itself (Idefics2) takes PIL images
            if "format" not in str(exc) and "PIL" not in str(exc):
                raise
            from torchvision.transforms.functional import to_pil_image

            enc = dict(self.processor(text=text, images=[to_pil_image(image)], return_tensors="pt"))
        enc.pop("labels", None)
        return enc

    def continuation(self, key: str, values: Tensor, n: int) -> Tensor:
        """Per-token inputs other than ids and mask for ``n`` generated tokens: what ``generate`` appends."""
        if key == "mm_token_type_ids":
            return values.new_zeros(1, n)  # text tokens
        return values[:, -1:].expand(1, n)  # GenerationMixin repeats the last value

    def per_token(self) -> tuple[str, ...]:
        """Inputs of more than two dims with one row per token (axis 1) that teacher forcing extends."""
        return ()

    def image_positions(self, inputs: dict[str, Tensor]) -> Tensor:
        """(K,) positions of the image tokens in the sequence the language model reads."""
        token = getattr(self.model.config, "image_token_id", None)
        if token is None:
            token = getattr(self.model.config, "image_token_index", None)
        return (inputs["input_ids"][0] == int(token)).nonzero()[:, 0]


class OneImage(Family):
    """A tower that reads the image as one frame: crops the processor makes are refused by name."""

    def images(self, image: Tensor) -> dict[str, Tensor]:
        return self.one_frame(super().images(image))

    def one_frame(self, enc: dict[str, Tensor]) -> dict[str, Tensor]:
        """``enc`` when its pixels are one image; ValueError when the processor cut it into crops."""
        pixels = enc.get(pixel_key(enc))
        if isinstance(pixels, Tensor) and pixels.dim() >= 4 and pixels.shape[:-3].numel() != 1:
            raise InputError(f"{type(self.model).__name__}: the processor made {pixels.shape[:-3].numel()} crops of one "
                             "image; crops are not stitched back for this model (set the processor to one crop, e.g. "
                             "crop_to_patches=False / do_image_splitting=False / max_patches=1)")
        return enc

    def view(self, images: dict[str, Tensor]) -> Tensor:
        pixels = images[pixel_key(images)]
        return super().view({"pixel_values": pixels.reshape(-1, *pixels.shape[-3:])[:1]})

    def patch_grid(self, images: dict[str, Tensor]) -> tuple[int, int]:
        pixels = images[pixel_key(images)]
        return super().patch_grid({"pixel_values": pixels.reshape(-1, *pixels.shape[-3:])[:1]})

    def prompt_inputs(self, image: Tensor, prompt: str, *, chat: bool) -> dict[str, Tensor]:
        return self.one_frame(super().prompt_inputs(image, prompt, chat=chat))


class Llava(OneImage):
    """The LM reads ``hidden_states[vision_feature_layer]`` of the tower (several layers for a list: VipLLaVA);
    patches row-major, a CLS token dropped or kept by the projector (LLaVA, Mistral3 / Pixtral, Aya Vision,
    InternVL with one tile, VipLLaVA, Cohere2-Vision, ...): the layout of a plain ViT, whatever the projector
    does after it (pixel shuffle, patch merger)."""

    names = ("LlavaForConditionalGeneration",)

    @classmethod
    def claims(cls, model: nn.Module) -> str | None:
        config = model.config
        if feature_layer_of(config) is None or tower_of(model) is None:
            return None
        if getattr(config, "image_grid_pinpoints", None):
            return None  # anyres tiles
        return "config.vision_feature_layer: the blocks whose hidden states the projector reads"

    def site(self) -> str:
        return feature_layers(self.model, self.tower_name)[-1]  # the deepest layer read

    def sites(self) -> list[str]:
        return feature_layers(self.model, self.tower_name)


class PaliGemma(Family):
    """PaliGemma: SigLIP tower (no CLS), its final LayerNorm; prefix tokens attend both ways, the answer causally."""

    names = ("PaliGemmaForConditionalGeneration",)
    default_prompt = "caption en"

    @classmethod
    def claims(cls, model: nn.Module) -> str | None:
        if getattr(model.config, "model_type", "") == "paligemma":
            return "config.model_type 'paligemma': token_type_ids mark the causal suffix"
        return None
    placeholder_of = ""  # the processor puts the image tokens and BOS before the prompt

    def continuation(self, key: str, values: Tensor, n: int) -> Tensor:
        if key == "token_type_ids":
            return values.new_ones(1, n)  # generated tokens are the causal suffix
        return super().continuation(key, values, n)


class QwenVL(Family):
    """Qwen2-VL / Qwen2.5-VL: unbatched tower over flattened patches in merge-block order (2.5: windows)."""

    names = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
    tower = "visual"

    @classmethod
    def claims(cls, model: nn.Module) -> str | None:
        vision = getattr(model.config, "vision_config", None)
        if getattr(vision, "spatial_merge_size", None) and getattr(vision, "temporal_patch_size", None) \
                and tower_of(model):
            return ("vision_config.spatial_merge_size + temporal_patch_size: flattened patches in merge-block order, "
                    "the grid from image_grid_thw")
        return None

    def site(self) -> str:
        post = f"{self.tower_name}.post_layernorm"  # GLM-4V: the final norm before the merge convolution
        if post in dict(self.model.named_modules()):
            return post
        layers = blocks(self.model, self.tower_name)
        return f"{layers}.{len(self.model.get_submodule(layers)) - 1}"  # the merger reads it

    def sites(self) -> list[str]:
        """The merger's input and, for Qwen3-VL, the deepstack blocks whose outputs the LM also reads."""
        deep = getattr(self.model.config.vision_config, "deepstack_visual_indexes", None) or []
        layers = blocks(self.model, self.tower_name)
        count = len(self.model.get_submodule(layers))
        extra = [f"{layers}.{k}" for k in sorted(set(deep)) if 0 <= k < count]
        return [*[e for e in extra if e != self.site()], self.site()]

    def placeholder(self) -> str:
        t = self.tokenizer
        start, end = getattr(t, "vision_bos_token", "<|vision_start|>"), getattr(t, "vision_eos_token", "<|vision_end|>")
        return f"{start}{self.processor.image_token}{end}"

    def patch_grid(self, images: dict[str, Tensor]) -> tuple[int, int]:
        thw = images["image_grid_thw"]  # (1, 3): t, h, w in patches
        return int(thw[0, 1]), int(thw[0, 2])

    def grid(self, images: dict[str, Tensor]) -> TokenGrid:
        h, w = self.patch_grid(images)
        vision = self.model.config.vision_config
        m = int(vision.spatial_merge_size)
        fine, coarse = merge_blocks(h, w, merge=m), row_major(h // m, w // m)
        if getattr(vision, "window_size", None) and hasattr(vision, "fullatt_block_indexes"):  # Qwen2.5-VL
            from transformers.vision_utils import get_vision_window_index

            window, _ = get_vision_window_index(images["image_grid_thw"], spatial_merge_size=m,
                                                window_size=vision.window_size, patch_size=vision.patch_size)
            fine, coarse = windows(fine, window, unit=m * m), windows(coarse, window, unit=1)
        return TokenGrid({h * w: (fine, (h, w)), h * w // (m * m): (coarse, (h // m, w // m))})

    def view(self, images: dict[str, Tensor]) -> Tensor:
        return display_of(self.image_processor, self._unpatchify(images["pixel_values"], images))  # (3, H, W)

    def pixel_layout(self, images: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
        """Flattened patches -> ``(T*3, H, W)``: each of the ``T`` temporal copies is 3 channels."""
        return lambda values: self._unpatchify(values, images, copies=True)

    def _unpatchify(self, values: Tensor, images: dict[str, Tensor], *, copies: bool = False) -> Tensor:
        ip = self.image_processor
        return unpatchify(values, self.patch_grid(images), patch=ip.patch_size, merge=ip.merge_size,
                          temporal=ip.temporal_patch_size, copies=copies)


class Idefics3(Family):
    """Idefics3 / SmolVLM: tiles + a global image through a SigLIP tower; pixel shuffle merges 2 x 2 patches."""

    names = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
    tower = "vision_model"

    @classmethod
    def claims(cls, model: nn.Module) -> str | None:
        if getattr(model.config, "scale_factor", None) and has_module(model, "connector") and tower_of(model):
            return "config.scale_factor + a connector: tiles (rows, cols) + a global image, pixel shuffle"
        return None

    def images(self, image: Tensor) -> dict[str, Tensor]:
        return pixels_of(self.image_processor, image, return_row_col_info=True)

    def _tiles(self, images: dict[str, Tensor]) -> tuple[int, int, int, int]:
        """(frames, rows, cols, patches per tile side)."""
        frames = images["pixel_values"].shape[1]  # (1, N, 3, S, S)
        rows, cols = as_int(images.get("rows", 0)), as_int(images.get("cols", 0))
        side = images["pixel_values"].shape[-1] // int(self.model.config.vision_config.patch_size)
        if frames != max(1, rows * cols + (rows * cols > 0)):
            raise InputError(f"Idefics3: {frames} frames for {rows} x {cols} tiles (+ global image)")
        return frames, rows, cols, side

    def grid(self, images: dict[str, Tensor]) -> TokenGrid:
        frames, rows, cols, n = self._tiles(images)
        r = int(self.model.config.scale_factor)
        levels = {}
        for side in (n, n // r):  # patch level, pixel-shuffle level
            order = tiles(rows, cols, side) if rows * cols else row_major(side, side)
            levels[frames * side * side] = (order, (max(rows, 1) * side, max(cols, 1) * side))
        return TokenGrid(levels)

    def view(self, images: dict[str, Tensor]) -> Tensor:
        _, rows, cols, _ = self._tiles(images)
        frames = torch.stack([display_of(self.image_processor, f) for f in images["pixel_values"][0]])  # (N, 3, S, S)
        return stitch(frames, rows, cols)

    def prompt_inputs(self, image: Tensor, prompt: str, *, chat: bool) -> dict[str, Tensor]:
        enc = super().prompt_inputs(image, prompt, chat=chat)
        enc.pop("rows", None)
        enc.pop("cols", None)
        return enc


class Blip2(Family):
    """BLIP-2: ViT tower -> Q-Former (query tokens, not spatial) -> LM; explained at the tower's last layer."""

    names = ("Blip2ForConditionalGeneration", "InstructBlipForConditionalGeneration")
    tower = "vision_model"

    @classmethod
    def claims(cls, model: nn.Module) -> str | None:
        if has_module(model, "qformer") and tower_of(model):
            return "a Q-Former (query tokens, not spatial): the map comes from the vision tower's last block"
        return None
    default_prompt = ""
    placeholder_of = ""  # the processor puts the query tokens before the prompt

    def __init__(self, model: nn.Module, processor: Any, image_processor: Any, tokenizer: Any) -> None:
        super().__init__(model, processor, image_processor, tokenizer)
        self.encoder_decoder = not model.config.use_decoder_only_language_model
        if "qformer_input_ids" in inspect.signature(model.forward).parameters:  # InstructBLIP reads an instruction
            self.default_prompt = Family.default_prompt

    def site(self) -> str:
        layers = blocks(self.model, self.tower_name)  # post_layernorm runs twice (tokens, pooled CLS)
        return f"{layers}.{len(self.model.get_submodule(layers)) - 1}"


class Git(Family):
    """GIT: CLIP tower; its CLS + patch tokens are the prefix of the decoder's sequence (their logits come first)."""

    names = ("GitForCausalLM",)
    tower = "image_encoder"

    @classmethod
    def claims(cls, model: nn.Module) -> str | None:
        return "config.model_type 'git': CLS + patch tokens prefix the text" if model.config.model_type == "git" else None
    default_prompt = ""

    def prompt_inputs(self, image: Tensor, prompt: str, *, chat: bool) -> dict[str, Tensor]:
        start = self.model.generation_config.bos_token_id
        start = self.tokenizer.cls_token_id if start is None else start
        ids = [int(start), *self.tokenizer(prompt, add_special_tokens=False).input_ids] if prompt else [int(start)]
        input_ids = torch.tensor([ids])  # (1, P)
        return {**self.images(image), "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def image_positions(self, inputs: dict[str, Tensor]) -> Tensor:
        h, w = self.patch_grid(inputs)
        return torch.arange(h * w + 1)  # CLS + patches, before the text


class Florence2(Family):
    """Florence-2: DaViT tower (a convolutional map) -> spatial + temporal tokens at the start of the encoder input."""

    names = ("Florence2ForConditionalGeneration",)
    default_prompt = "<CAPTION>"

    @classmethod
    def claims(cls, model: nn.Module) -> str | None:
        if model.config.model_type == "florence2":
            return "config.model_type 'florence2': a DaViT map before the encoder's text"
        return None
    encoder_decoder = True
    placeholder_of = ""  # the processor puts the image tokens first

    def site(self) -> str:
        stages = blocks(self.model, self.tower_name)
        last = f"{stages}.{len(self.model.get_submodule(stages)) - 1}"
        return f"{last}.{len(self.model.get_submodule(last)) - 1}"

    def patch_grid(self, images: dict[str, Tensor]) -> tuple[int, int]:
        size = tuple(images["pixel_values"].shape[-2:])
        for name, module in self.model.named_modules():  # every stage's strided convolution, in order
            if name.startswith(self.tower_name) and isinstance(module, nn.Conv2d) and ".convs." in name:
                size = patches_of(module, size)
        return size

    def grid(self, images: dict[str, Tensor]) -> TokenGrid:
        h, w = self.patch_grid(images)
        return TokenGrid({h * w: (row_major(h, w), (h, w))})


#: built-in families, asked in this order (the most specific rule first)
FAMILIES: tuple[type[Family], ...] = (Git, Florence2, Blip2, PaliGemma, QwenVL, Idefics3, Llava)
