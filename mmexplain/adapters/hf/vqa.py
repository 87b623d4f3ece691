"""VQA adapters for transformers models: BLIP (generated answers) and ViLT (an answer classifier).

ViLT shares its answer logic (targets, names, probabilities) with the zoo VQA model
through :class:`mmexplain.adapters.answers.AnswerClassifier`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...targets import SequenceLogProb
from ..answers import AnswerClassifier
from ..grids import PatchGrid
from ..protocols import AnswerQuery
from .common import ProcessedImages, check_model, decode_words, last_layer, tokenize_words
from .wrappers import DecoderLogits, ViltPatchOrder
from ...errors import InputError

__all__ = ["BlipVQA", "ViltVQA"]


class _VQA(ProcessedImages):
    """What VQA adapters share: the question's inputs and tokens."""

    default_layer: str
    question_layer: str | None
    tasks = frozenset({"answer"})

    def _question(self, question: str, device: torch.device) -> tuple[dict[str, Tensor], list[str], list[int]]:
        """Question inputs, its tokens as the model reads them, and their positions (specials excluded)."""
        if not isinstance(question, str) or not question.split():
            raise InputError(f"question: expected a non-empty string, got {question!r}")
        ids, groups = tokenize_words(self.tokenizer, question.split(), add_special_tokens=True)
        positions = [k for g in groups for k in g]
        tokens = self.tokenizer.convert_ids_to_tokens([ids[k] for k in positions])
        input_ids = torch.tensor([ids], device=device)  # (1, Tq)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}, tokens, positions


class BlipVQA(_VQA):
    """``BlipForQuestionAnswering``: the generated answer's map and question-token attributions.

    The target is the answer's log-probability: the sum over its tokens of
    ``log p(token)`` from the answer decoder, teacher-forced on ``[BOS] answer``.
    ``model`` is a :class:`~mmexplain.adapters.hf.wrappers.DecoderLogits` wrapper (the
    real ``forward`` does not return the answer logits); layer names are relative to it
    (``"model.vision_model..."``). One answer per call: the greedy one, or the one given
    (``top_k`` > 1 would need one forward per answer).

    Args:
        model: a ``BlipForQuestionAnswering``.
        processor: a ``BlipProcessor`` (or give ``image_processor=`` and ``tokenizer=``).
        layer: module name (relative to the wrapper) to explain instead of the default,
            the vision encoder's last block.
        max_new_tokens: answer length limit.

    Example:
        >>> vqa = BlipVQA(model, processor)                                    # doctest: +SKIP
        >>> ax = mx.explain_answer(vqa, "cat.jpg", "what is on the sofa?")     # doctest: +SKIP
        >>> ax.answer, ax.map.shape, ax.token_attributions.shape               # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, processor: Any = None, *, image_processor: Any = None,
                 tokenizer: Any = None, layer: str | None = None, max_new_tokens: int = 10) -> None:
        check_model("BlipVQA", model, ("BlipForQuestionAnswering",))
        super().__init__("BlipVQA", processor, image_processor, tokenizer,
                         patch_embedding="model.vision_model.embeddings.patch_embedding")
        self.hf_model = model
        self.model = DecoderLogits(model, "text_decoder")
        self.default_layer = layer or "model." + last_layer(model, "vision_model.encoder.layers")
        self.question_layer = "model.text_encoder.embeddings.word_embeddings"
        self.start_token_id = int(model.config.text_config.bos_token_id)
        self.max_new_tokens = max_new_tokens

    def answer(self, pixels: Tensor, question: str) -> str:
        """The model's generated answer (greedy), as text."""
        q, _, _ = self._question(question, pixels.device)
        with torch.no_grad():
            ids = self.hf_model.generate(input_ids=q["input_ids"], pixel_values=pixels,
                                         attention_mask=q["attention_mask"], max_new_tokens=self.max_new_tokens)
        return " ".join(decode_words(self.tokenizer, ids[0], start=self.start_token_id))

    def query(self, pixels: Tensor, question: str, answer: str | None = None, top_k: int = 1) -> AnswerQuery:
        """Inputs and target for ``answer`` (default: the generated answer)."""
        if answer is None and top_k != 1:
            raise InputError(f"top_k: BlipVQA explains one generated answer (top_k=1), got {top_k}; "
                             "pass answer= to explain another")
        q, q_tokens, q_positions = self._question(question, pixels.device)
        if answer is None:
            answer = self.answer(pixels, question)
            if not answer:
                raise InputError(f"the model generated an empty answer to {question!r}; pass answer=")
        ids, _ = tokenize_words(self.tokenizer, answer.split())
        decoder_ids = torch.tensor([[self.start_token_id, *ids]], device=pixels.device)  # (1, 1+n)
        # token k of the answer is read at logit k of [BOS, t_1..t_n]
        target = SequenceLogProb(ids, positions=list(range(len(ids))))
        inputs = {"pixel_values": pixels, **q, "decoder_input_ids": decoder_ids,
                  "decoder_attention_mask": torch.ones_like(decoder_ids)}
        return AnswerQuery(inputs, [target], q_tokens, q_positions, answers=[answer])

    def answers(self, query: AnswerQuery, output: Any) -> list[str]:
        """The answer text the query was built for (given or generated)."""
        return list(query.answers or [])

    def probabilities(self, query: AnswerQuery, output: Any) -> Tensor:
        """(1,) p(answer | image, question): the exponential of the answer's summed token log-probabilities."""
        return torch.stack([t(output).detach()[0] for t in query.targets]).exp()  # (k,)

    @property
    def reshape(self) -> PatchGrid:
        """``PatchGrid()``: a square grid from the token count; ``reshape_for(pixels)`` is exact for any size."""
        return PatchGrid()


class ViltVQA(_VQA, AnswerClassifier):
    """``ViltForQuestionAnswering``: answer-logit maps and question-token attributions.

    ViLT runs text and image patches as one sequence ``[text, image CLS, patches]``.
    ``model`` is a :class:`~mmexplain.adapters.hf.wrappers.ViltPatchOrder` wrapper that
    fixes the patch order; ``reshape_for(pixels)`` takes the last ``h * w`` tokens of the
    joint sequence (text and image CLS dropped) with the grid that ViLT's patch
    convolution makes of those pixels, computed per call. Default layer: the last
    block's ``layernorm_before``, the input of its attention, through which every image
    token reaches the pooled text CLS (the final LayerNorm's image tokens get no
    gradient). Probabilities are sigmoids of the logits (ViLT's VQA head is trained
    with binary cross-entropy on soft answer scores).

    Args:
        model: a ``ViltForQuestionAnswering``.
        processor: a ``ViltProcessor`` (or give ``image_processor=`` and ``tokenizer=``).
        layer: module name (relative to the wrapper) to explain instead of the default.

    Example:
        >>> vqa = ViltVQA(model, processor)                                      # doctest: +SKIP
        >>> ax = mx.explain_answer(vqa, "cats.jpg", "how many cats are there?", top_k=3)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, processor: Any = None, *, image_processor: Any = None,
                 tokenizer: Any = None, layer: str | None = None) -> None:
        check_model("ViltVQA", model, ("ViltForQuestionAnswering",))
        _VQA.__init__(self, "ViltVQA", processor, image_processor, tokenizer,
                      patch_embedding="model.vilt.embeddings.patch_embeddings.projection")
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        AnswerClassifier.__init__(self, [id2label.get(i, str(i)) for i in range(model.config.num_labels)],
                                  activation="sigmoid")
        self.hf_model = model
        self.model = ViltPatchOrder(model)
        self.default_layer = layer or "model." + last_layer(model, "vilt.encoder.layer") + ".layernorm_before"
        self.question_layer = "model.vilt.embeddings.text_embeddings.word_embeddings"

    def query(self, pixels: Tensor, question: str, answer: str | None = None, top_k: int = 1) -> AnswerQuery:
        """Inputs and targets for ``answer``, or for the top-k answers (chosen from the same forward)."""
        q, q_tokens, q_positions = self._question(question, pixels.device)
        q["token_type_ids"] = torch.zeros_like(q["input_ids"])
        targets = self.answer_targets(answer, top_k)
        return AnswerQuery({"pixel_values": pixels, **q}, targets, q_tokens, q_positions,
                           answers=None if answer is None else [answer])
