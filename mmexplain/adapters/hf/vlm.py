"""``ImageTextToText``: per-word maps and answer grounding for LLM-based VLMs (one adapter, both roles).

The model generates text after a prompt (the processor's chat template applied when it
has one); every word of that text, a caption or an answer, is explained from ONE
teacher-forced forward over ``prompt + words`` and one batched backward: word ``i``'s
scalar is the sum of its sub-word tokens' log-probabilities. The logits are computed at
the words' positions only (``logits_to_keep``, where the model takes it), so the memory
of the backward grows with the words, not with the image tokens.

The explained layer is the vision layer the language model reads (see
:mod:`.families`), reached through a :class:`~.tap.VisionTap` (``adapter.model``):
``default_layer`` is the tap's ``"features"``, and ``layer=`` names another layer of the
transformers model to tap. ``reshape_for(pixels)`` lays its tokens on the image's patch
grid (:class:`~.layouts.TokenGrid`: CLS dropped, merge blocks, windows, tiles stitched,
pixel-shuffled tokens), computed per image from the processed inputs.

Roles: ``explain_caption`` explains the words the model writes after ``prompt`` (a
caption by default; ``with_prompt(question)`` makes the answer's words the "caption",
so an answer gets per-word maps the same way). ``explain_answer`` explains the whole
generated answer's log-probability (``SequenceLogProb`` over all its tokens, one
target), its counterfactual, and the question tokens' gradient x embedding from the
same backward (``question_layer``: the LM's input embedding). ``top_k`` > 1 is refused:
a generated answer has no ranked alternatives.

Example:
    >>> import mmexplain as mx
    >>> from transformers import AutoModelForImageTextToText, AutoProcessor               # doctest: +SKIP
    >>> model = AutoModelForImageTextToText.from_pretrained(local_dir).eval()             # doctest: +SKIP
    >>> vlm = mx.hf.adapter(model, AutoProcessor.from_pretrained(local_dir))              # doctest: +SKIP
    >>> ex = mx.explain_caption(vlm, "cat.jpg")              # per-word maps of its caption  # doctest: +SKIP
    >>> ax = mx.explain_answer(vlm, "cat.jpg", "What is the cat sitting on?")            # doctest: +SKIP
    >>> words = mx.explain_caption(vlm.with_prompt("What is the cat sitting on?"), "cat.jpg")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...methods.base import repeat_rows
from ...methods.pictures import PictureInputs
from ...targets import SequenceLogProb
from ..images import load_image
from ..items import ItemQuestions
from ..protocols import AnswerQuery, WordSpan, check_copies
from .common import device_of, display_of, split_processor
from .words import GeneratedWords, generated_words, tokenize_words
from .discovery import discover
from .families import Family, chat_text
from .layouts import TokenGrid
from .tap import VisionTap
from ...errors import InputError, InputTypeError

__all__ = ["ImageTextToText", "chat_text"]


class ImageTextToText(ItemQuestions):
    """An image-text-to-text VLM as a caption adapter and an answer adapter (see the module docstring).

    Args:
        model: an image-text-to-text transformers model whose layout :func:`~.discovery.discover` finds
            from its config and modules (or a family registered with ``mx.hf.register_family``).
        processor: its processor (image processor, tokenizer, chat template).
        image_processor, tokenizer: given separately (they win over the processor's).
        layer: dotted name (in ``model``) of the vision layer to explain instead of the one
            the language model reads.
        prompt: the instruction whose continuation is the caption (default: the family's,
            e.g. ``"Describe the image."``, PaliGemma's ``"caption en"``, Florence-2's ``"<CAPTION>"``).
        chat: apply the processor's chat template (default: when it has one).
        max_new_tokens: generation length limit (greedy decoding).

    Attributes:
        model: the :class:`~.tap.VisionTap` the engine hooks; ``hf_model``: the model itself.
        default_layer: ``"features"``, the tap's output (the ``site`` layer's output).
        site: the explained layer's name in ``hf_model`` (the deepest, when the LM reads several).
        sites: every vision layer the LM reads (their maps are summed on one grid, see :mod:`.tap`).
        rule: which discovery rule placed the model, in words.
        question_layer: the LM input embedding, relative to ``model``.
    """

    targets_in_batch = False  # one batched backward over the words
    tasks = frozenset({"caption", "answer"})

    def __init__(self, model: nn.Module, processor: Any = None, *, image_processor: Any = None, tokenizer: Any = None,
                 layer: str | None = None, prompt: str | None = None, chat: bool | None = None,
                 max_new_tokens: int = 30) -> None:
        family, self.rule = discover(model)  # Unsupported (a TypeError) saying what is missing
        if processor is None:
            raise InputTypeError("ImageTextToText: expected processor= (the model's processor builds its prompts)")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens: expected an int >= 1, got {max_new_tokens!r}")
        if prompt is not None and not isinstance(prompt, str):
            raise InputTypeError(f"prompt: expected a str or None, got {type(prompt).__name__}")
        if chat is not None and not isinstance(chat, bool):
            raise InputTypeError(f"chat: expected True, False or None, got {type(chat).__name__}")
        self.image_processor, self.tokenizer = split_processor("ImageTextToText", processor, image_processor, tokenizer)
        self.processor = processor
        self.hf_model = model
        self.family: Family = family(model, processor, self.image_processor, self.tokenizer)
        has_template = bool(getattr(processor, "chat_template", None))
        if chat and not has_template:
            raise InputError("chat: the processor has no chat template")
        self.chat = has_template if chat is None else chat
        self.prompt = self.family.default_prompt if prompt is None else prompt
        self.max_new_tokens = max_new_tokens
        self.sites = self.family.sites() if layer is None else [layer]
        self.site = self.sites[-1]
        self.model = VisionTap(model, self.sites)
        self.default_layer = "features"
        embedding = model.get_input_embeddings()
        self.question_layer = "model." + next(n for n, m in model.named_modules() if m is embedding)
        self.logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    def __repr__(self) -> str:
        return (f"ImageTextToText({type(self.hf_model).__name__}, sites={self.sites!r}, prompt={self.prompt!r}, "
                f"chat={self.chat}, rule={self.rule!r})")

    def with_prompt(self, prompt: str) -> ImageTextToText:
        """The same adapter (model, processor, layer) writing after ``prompt``: e.g. a question, so that
        ``explain_caption`` gives the per-word maps of its answer."""
        if not isinstance(prompt, str):
            raise InputTypeError(f"prompt: expected a str, got {type(prompt).__name__}")
        other = copy.copy(self)
        other.prompt = prompt
        return other

    @functools.cached_property
    def capabilities(self) -> frozenset[str]:
        """A layer, a language model and a picture (perturbation methods mask it before the processor);
        ``"pixels"`` when the processor gives a (B, 3, H, W) image (not flattened patches or tiles);
        ``"image-gradient"`` when its pixel tensor lays onto one picture (flattened patches do; tiles not);
        ``"attention"`` when the relevancy recorder sees the attention (the LM's, for a decoder-only
        VLM; every layer's for an encoder-decoder); ``"relu"`` for ReLU-like units. Read once."""
        from ...methods.relevancy import Relevancy

        found = {"layer", "lm", "picture"}
        try:
            Relevancy(self.model)
            found.add("attention")
        except (TypeError, ValueError):
            pass
        images = self.family.images(torch.zeros(3, 32, 32))
        if images["pixel_values"].dim() == 4:
            found.add("pixels")
        if self.family.pixel_layout(images) is not None:
            found.add("image-gradient")
        return frozenset(found) | (super().capabilities & {"relu"})

    # ------------------------------------------------------------- images

    def load_image(self, image: Any) -> Tensor:
        """A path, PIL image, array or (3, H, W) tensor -> the image itself, (1, 3, H, W) in [0, 1] (CPU).

        The processor resizes, crops, tiles or patchifies it for each call, so every method
        takes these pixels and derives the model's inputs, the grid and the view from them.
        """
        return load_image(image)[None]

    def _image(self, pixels: Tensor) -> Tensor:
        if not isinstance(pixels, Tensor) or pixels.dim() != 4 or pixels.shape[:2] != (1, 3):
            got = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
            raise InputError(f"pixels: expected (1, 3, H, W) from load_image, got {got}")
        return pixels[0].detach().cpu()

    def display_image(self, pixels: Tensor) -> Tensor:
        """(3, H', W') in [0, 1]: the picture the model's patch grid covers (resized, cropped, tiles stitched)."""
        return self.family.view(self.family.images(self._image(pixels)))

    def picture_inputs(self, pixels: Tensor, inputs: dict[str, Tensor]) -> PictureInputs:
        """``inputs`` (made from ``pixels``) as a :class:`~mmexplain.methods.pictures.PictureInputs`.

        A perturbation method then masks the picture the patch grid covers (``display_image``)
        and the processor runs again on each masked copy, so flattened patches (Qwen2-VL),
        resized and cropped inputs all take masks; the text inputs are repeated with the copies.
        Masks work about the processor's mean colour (``zero``), as they would on its normalised
        tensor: an occluded window or a masked-out region is that colour, not black.

        Raises:
            ValueError: the processor does not map its own view back to the same tensors (crops).
        """
        picture = self.display_image(pixels)[None]  # (1, 3, H, W)
        again = self.family.images(picture[0])
        changed = [k for k, v in again.items() if not isinstance(inputs.get(k), Tensor) or inputs[k].shape != v.shape]
        if changed:
            raise InputError(f"{type(self.hf_model).__name__}: the processor gives {changed[0]!r} another shape on its "
                             "own view of the image; perturbation methods need a processor that keeps it")
        text = {k: v for k, v in inputs.items() if k not in again}
        device = device_of(self.hf_model)

        def process(pictures: Tensor) -> dict[str, Any]:
            each = [self.family.images(p.detach().cpu()) for p in pictures]
            images = {k: torch.cat([e[k] for e in each]).to(device) for k in each[0]}
            return {**repeat_rows(text, len(pictures), 1), **images}

        zero = display_of(self.family.image_processor, picture.new_zeros(3, 1, 1))  # (3, 1, 1): normalises to 0
        return PictureInputs(picture, process, zero=zero)

    def reshape_for(self, pixels: Tensor) -> TokenGrid:
        """The :class:`~.layouts.TokenGrid` of the vision layers for these pixels (patch and merged levels),
        with the layout of the processor's pixel tensor on the picture (``.pixels``) where it is one picture."""
        images = self.family.images(self._image(pixels))
        grid = self.family.grid(images)
        grid.pixels = self.family.pixel_layout(images)
        return grid

    # ------------------------------------------------------------- text

    def prompt_inputs(self, pixels: Tensor, prompt: str | None = None) -> dict[str, Tensor]:
        """The processor's inputs for ``prompt`` (default: the adapter's) and the image, on the model's device."""
        enc = self.family.prompt_inputs(self._image(pixels), self.prompt if prompt is None else prompt, chat=self.chat)
        device = device_of(self.hf_model)
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in enc.items()}

    def _generate(self, pixels: Tensor, prompt: str) -> GeneratedWords:
        inputs = self.prompt_inputs(pixels, prompt)
        with torch.no_grad():
            out = self.hf_model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        if self.family.encoder_decoder:
            return generated_words(self.tokenizer, out[0], start=self.decoder_start())
        return generated_words(self.tokenizer, out[0, inputs["input_ids"].shape[1]:])  # (T,) after the prompt

    def decoder_start(self) -> int:
        """An encoder-decoder's decoder start token id."""
        start = self.hf_model.generation_config.decoder_start_token_id
        return int(self.hf_model.config.get_text_config().decoder_start_token_id if start is None else start)

    def generate(self, pixels: Tensor) -> GeneratedWords:
        """The model's greedy continuation of the prompt, as words that carry the generated ids
        (:class:`~.words.GeneratedWords`: teacher forcing scores exactly those tokens)."""
        return self._generate(pixels, self.prompt)

    def split_words(self, caption: str) -> list[str]:
        """A given caption -> its words; a word the tokenizer only knows as unknown raises ValueError."""
        if not isinstance(caption, str):
            raise InputTypeError(f"caption: expected a str, got {type(caption).__name__}")
        words = caption.split()
        if words:
            ids, groups = tokenize_words(self.tokenizer, words)
            unk = self.tokenizer.unk_token_id
            bad = [w for w, g in zip(words, groups) if unk is not None and any(ids[k] == unk for k in g)]
            if bad:
                raise InputError(f"caption: unknown word {bad[0]!r} (the tokenizer maps it to {self.tokenizer.unk_token})")
        return words

    def teacher_forced(self, pixels: Tensor, words: Sequence[str], *,
                       copies: int = 1) -> tuple[dict[str, Tensor], list[WordSpan]]:
        """Inputs of one teacher-forced forward over ``prompt + words``, and per word (logit rows, token ids)."""
        return self._forced(pixels, self.prompt, words, copies=copies)

    def _forced(self, pixels: Tensor, prompt: str, words: Sequence[str], *,
                copies: int = 1) -> tuple[dict[str, Tensor], list[WordSpan]]:
        """``prompt + words`` teacher-forced; token ``j`` of the words is scored by logit row ``j``.

        With ``logits_to_keep = n + 1`` the model returns the rows of the ``n + 1`` last
        positions, the first of which (the prompt's last token) predicts word token 0;
        without it, the rows are the absolute positions (prompt length - 1 + j).
        """
        if check_copies(copies) != 1:
            raise InputError(f"copies: {type(self).__name__} explains the words with one batched backward "
                             f"(targets_in_batch=False), got copies={copies}")
        kept = words.tokens_for(words) if isinstance(words, GeneratedWords) else None
        ids, groups = kept if kept is not None else tokenize_words(self.tokenizer, list(words))
        inputs = self.prompt_inputs(pixels, prompt)
        text = torch.tensor([ids], device=inputs["input_ids"].device)  # (1, n)
        n = len(ids)
        if self.family.encoder_decoder:
            lead: list[int] = []
            if kept is None:  # given words: the tokenizer's own BOS before them (generated ids carry theirs)
                full, _ = tokenize_words(self.tokenizer, list(words), add_special_tokens=True)
                lead = full[:full.index(ids[0])] if ids[0] in full else []
            prefix = torch.tensor([[self.decoder_start(), *lead]], device=text.device)
            inputs["decoder_input_ids"] = torch.cat([prefix, text], dim=1)  # (1, s + n)
            inputs["decoder_attention_mask"] = torch.ones_like(inputs["decoder_input_ids"])
            offset = prefix.shape[1] - 1
        else:
            length = inputs["input_ids"].shape[1]
            for key, value in list(inputs.items()):
                if key == "input_ids":
                    inputs[key] = torch.cat([value, text], dim=1)  # (1, P + n)
                elif isinstance(value, Tensor) and value.dim() >= 2 and value.shape[:2] == (1, length) \
                        and (value.dim() == 2 or key in self.family.per_token()) and not key.startswith("qformer"):
                    extra = value.new_ones(1, n) if key == "attention_mask" else self.family.continuation(key, value, n)
                    inputs[key] = torch.cat([value, extra], dim=1)
            offset = length - 1
        if self.logits_to_keep:
            inputs["logits_to_keep"] = n + 1
            offset = 0
        spans = [([offset + k for k in g], [ids[k] for k in g]) for g in groups]
        return inputs, spans

    # ------------------------------------------------------------- answers

    def answer(self, pixels: Tensor, question: str) -> str:
        """The model's greedy answer to ``question``, as text."""
        return " ".join(self._generate(pixels, self._check_question(question)))

    @staticmethod
    def _check_question(question: Any) -> str:
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"question: expected a non-empty string, got {question!r}")
        return question

    def query(self, pixels: Tensor, question: str, answer: str | None = None, top_k: int = 1) -> AnswerQuery:
        """The teacher-forced ``question + answer`` (default: the generated answer) and its log-probability target."""
        self._check_question(question)
        if answer is None and top_k != 1:
            raise InputError(f"top_k: a generated answer has no ranked alternatives (top_k=1), got {top_k}; "
                             "pass answer= to explain another")
        words: list[str] = answer.split() if answer is not None else self._generate(pixels, question)
        if answer is None:
            answer = " ".join(words)
            if not answer:
                raise InputError(f"the model generated an empty answer to {question!r}; pass answer=")
        inputs, spans = self._forced(pixels, question, words)  # generated words keep their generated ids
        target = SequenceLogProb([t for _, tokens in spans for t in tokens],
                                 positions=[p for positions, _ in spans for p in positions])
        key = "input_ids"
        tokens, positions = self.question_tokens(inputs[key][0], question)
        return AnswerQuery(inputs, [target], tokens, positions, answers=[answer])

    def question_tokens(self, input_ids: Tensor, question: str) -> tuple[list[str], list[int]]:
        """The question's tokens in ``input_ids (L,)`` and their positions: the last place its tokens occur."""
        seq = input_ids.tolist()
        for ids in (self.tokenizer(question, add_special_tokens=False).input_ids,
                    tokenize_words(self.tokenizer, question.split())[0]):
            for start in range(len(seq) - len(ids), -1, -1):
                if ids and seq[start:start + len(ids)] == ids:
                    positions = list(range(start, start + len(ids)))
                    return self.tokenizer.convert_ids_to_tokens(ids), positions
        raise InputError(f"question: its tokens are not found in the prompt the processor made ({question!r})")

    def answers(self, query: AnswerQuery, output: Any) -> list[str]:
        """The answer text the query was built for (given or generated)."""
        return list(query.answers or [])

    def probabilities(self, query: AnswerQuery, output: Any) -> Tensor:
        """(1,) p(answer | image, question): the exponential of the answer's summed token log-probabilities."""
        return torch.stack([t(output).detach()[0] for t in query.targets]).exp()  # (k,)

    def image_positions(self, pixels: Tensor, prompt: str | None = None) -> Tensor:
        """(K,) where the image's tokens sit in the sequence the language model (Florence-2: its encoder) reads."""
        return self.family.image_positions(self.prompt_inputs(pixels, prompt)).cpu()
