"""Relevancy: gradient-weighted attention propagated through every layer (Chefer et al. 2021).

Chefer, Gur and Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
Encoder-Decoder Transformers" (arXiv 2103.15679). Per attention layer, with A (heads, Lq, Lk)
its probabilities and dy/dA their gradient for the explained scalar y:

    A-bar = E_h[(dy/dA * A)^+]        (* element-wise, ^+ the positive part, E_h the mean over heads)

Relevancy maps start as R^ss = I, R^qq = I, R^sq = 0, R^qs = 0 (s: text / decoder tokens,
q: image tokens) and are updated layer by layer, in the order the layers run:

    self-attention of stream x:   R^xx += A-bar R^xx;  R^xy += A-bar R^xy
    cross-attention s -> q:       R^sq += (R-bar^ss)^T A-bar R-bar^qq;
                                  R^ss += A-bar R^qs
    R-bar = (R - I) / rowsum(R - I) + I          (for the cross-attention rule)

A single-stream model (ViT, ViLT) has one sequence and only the first rule. The explained
token's row, read over the image tokens and laid on the patch grid, is the map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..targets import Counterfactual, SequenceLogProb, Target, WordLogProb
from .attention_record import AttentionRecord, AttentionRecorder, has_cross_attention
from .base import CAMResult, call_model, check_size, check_targets, detach_all, find_image, upsample_and_normalize, warn_training
from .core import gradients, score_of
from .lm_maps import LMView, image_grid, lm_and_tower, lm_view, logit_rows
from .tower import into_tower, self_attention_rule
from ..errors import InputError, InputTypeError

__all__ = ["Relevancy"]


class Relevancy:
    """Chefer et al. 2021 relevancy for transformers: self-attention, and cross-attention to an image.

    A-bar = E_h[(dy/dA * A)^+] per attention layer; R^ss += A-bar R^ss, R^sq += A-bar R^sq for
    self-attention; R^sq += (R-bar^ss)^T A-bar R-bar^qq, R^ss += A-bar R^qs for cross-attention;
    R-bar = (R - I)/rowsum + I; start R^ss = R^qq = I, R^sq = 0. The map is the explained token's
    row of R^sq (encoder-decoder) or R (single stream) over the image tokens, on the patch grid.

    Attention probabilities are recorded for the call (see ``methods.attention_record``): through
    a kernel registered in transformers' ``AttentionInterface`` for ViT, GPT-2 and every model
    that dispatches through ``ALL_ATTENTION_FUNCTIONS``; through forward hooks on the modules that
    return them for ViLT and BLIP (vision and text). Any other attention raises ``TypeError`` at
    construction. The model is left as found: hooks, registered names, ``_attn_implementation``
    and ``output_attentions`` of every config are restored, also after an error. Every target
    comes from ONE forward pass and one batched backward (``is_grads_batched``) over the recorded
    attentions; no parameter gradient is computed.

    Which sequence is which: with no cross-attention the model is single-stream (ViT classifier,
    ViLT's joint ``[text, image CLS, patches]``) and the row read is ``token`` (default 0: the
    CLS token, which ViT's head and ViLT's pooler read). With cross-attention (VisionEncoderDecoder
    ViT + GPT-2, BLIP captioning) the self-attention layers of ``encoder`` form the image stream q,
    the rest (the decoder) the text stream s; the row read is the decoder position whose logits
    score the target (``WordLogProb.position``; the mean of the rows of ``SequenceLogProb.positions``,
    e.g. a word of several sub-word tokens), else ``token``, unless ``rows=`` says otherwise.

    An LLM-based VLM (LLaVA, Qwen2-VL, ...: image tokens inside a decoder-only language model,
    found by ``lm_view``) needs no arguments: the LM's self-attention layers form the one
    stream, the image tokens are where ``input_ids`` holds the image token (laid on
    ``reshape``'s grid, as the ``lm_maps`` methods do), and a word's rows are its logit rows
    (``logits_to_keep`` honoured). With ``vision=True`` (default) the relevancy is continued
    into the vision tower: its self-attention layers give R_v by the same rule, each image
    token passes its relevancy to the vision tokens under its cell (``reshape``'s finest
    level, a merge block's four patches sharing their token's), and the map is u R_v laid on
    the patch grid; ``vision=False`` stops at the image tokens.

    How an adapter passes image tokens and grid: ViT-style encoders ``[CLS, patches]`` of a square
    image need nothing (the square grid and the last h*w tokens are found). Otherwise the adapter
    builds one ``Relevancy`` per image, as for ``GradCAM(..., reshape=adapter.reshape_for(pixels))``:
    ``Relevancy(adapter.model, grid=adapter.patch_grid(pixels))`` (ViLT through its
    ``ViltPatchOrder`` wrapper, whose patches come last, row-major; non-square images); a model
    whose patches are not the last tokens (an image-text-to-text VLM) also passes
    ``image_tokens=`` (their positions in the sequence, row-major). Construction is cheap.

    Args:
        model: a transformers model or a module around one (wrappers run it unchanged).
        image_tokens: positions of the patch tokens among the image stream's keys (the joint
            sequence for a single-stream model, the encoder's sequence for an encoder-decoder),
            in row-major grid order; a slice or a list of ints. Default: the last h*w tokens.
        grid: (h, w) of the patch grid; default: square, from ``len(image_tokens)`` or from the
            sequence length L as ``sqrt(L - p)`` for the smallest p in (0, 1, 2) that gives a square.
        encoder: dotted name of the submodule whose self-attention layers encode the image
            (``"encoder"`` for VisionEncoderDecoder, ``"vision_model"`` for BLIP). Default: the
            branch of the module tree whose attention layers include no cross-attention.
        token: the row read for a target that names no logit position (default 0).
        reshape: the call form's token-grid callable; without ``grid=`` its ``grid`` attribute
            (h, w), when it has one, is the patch grid (an adapter's ``PatchGrid``).
        vision: on an LLM-based VLM, continue the image tokens' relevancy into the vision tower's
            self-attention (default True; the map is then on the tower's patch grid).

    Example:
        >>> import torch, transformers
        >>> from mmexplain.methods.relevancy import Relevancy
        >>> import mmexplain as mx
        >>> config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ...     intermediate_size=32, image_size=32, patch_size=8, num_labels=3)
        >>> model = transformers.ViTForImageClassification(config).eval()
        >>> res = Relevancy(model)(torch.rand(2, 3, 32, 32), [mx.targets.ClassLogit(c) for c in range(3)])
        >>> res.maps.shape, res.raw.shape, res.weights.shape   # 3 classes, 2 images, 4x4 patches (+CLS)
        (torch.Size([3, 2, 32, 32]), torch.Size([3, 2, 4, 4]), torch.Size([3, 2, 17]))

    In an encoder-decoder the encoder never sees the text, so R^qs stays 0 and the rule
    R^ss += A-bar R^qs adds nothing there; it is applied all the same, as written.

    Departures from the paper: a row of R - I that sums to zero (a stream no layer updated) is
    left as it is by the normalisation instead of dividing by zero; a target scored at several
    positions reads the mean of their rows; the map is bilinearly upsampled and min-max normalised
    like every method here. The gradient of y w.r.t. A is the total derivative through all later
    layers, as in the authors' code (``register_hook`` on A).
    """

    def __init__(self, model: nn.Module, *, image_tokens: slice | Sequence[int] | None = None,
                 grid: tuple[int, int] | None = None, encoder: str | None = None, token: int = 0,
                 reshape: Any = None, vision: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if image_tokens is not None and not isinstance(image_tokens, slice):
            if (not isinstance(image_tokens, Sequence) or not image_tokens
                    or not all(isinstance(i, int) and not isinstance(i, bool) for i in image_tokens)):
                raise InputError(f"image_tokens: expected a slice or a non-empty list of ints, got {image_tokens!r}")
        if grid is None and reshape is not None:
            grid = getattr(reshape, "grid", None)  # the adapter's token grid (mx.adapters.PatchGrid), when it knows one
        if grid is not None:
            grid = check_size(grid, "grid")
        if encoder is not None:
            if not isinstance(encoder, str) or encoder not in dict(model.named_modules()):
                raise InputError(f"encoder: expected the dotted name of a submodule of the model, got {encoder!r}")
        if isinstance(token, bool) or not isinstance(token, int):
            raise InputTypeError(f"token: expected an int, got {type(token).__name__}")
        if not isinstance(vision, bool):
            raise InputTypeError(f"vision: expected True or False, got {type(vision).__name__}")
        self.lm = _language_model(model) if encoder is None and image_tokens is None else None
        self.vision = vision and self.lm is not None
        if self.lm is not None and not self.vision:
            encoder = self.lm.decoder_name
        self.model = model
        self.image_tokens = image_tokens
        self.grid = grid
        self.reshape = reshape
        self.encoder = encoder
        self.token = token
        # every recorded layer enters a rule: with one stream named by encoder=, only its layers are recorded
        within = encoder if encoder is not None and not has_cross_attention(model) else None
        self.recorder = AttentionRecorder(model, within=within)  # TypeError for attention it cannot record

    def __call__(self, inputs: Any, targets: Target | Sequence[Target], *,
                 rows: Sequence[int | Sequence[int]] | None = None, size: tuple[int, int] | None = None) -> CAMResult:
        """Explain one target, or a list of N targets from one forward and one batched backward.

        Args:
            inputs: what ``model(...)`` takes: a tensor, a tuple (positional) or a dict (keywords).
            targets: a target callable ``output -> (B,)`` or a list of them.
            rows: per target, the token position (or positions, averaged) whose row is read;
                default from the target (see the class docstring).
            size: (H, W) of ``maps``; default the first floating 4-D tensor in ``inputs``, else the grid.

        Returns:
            CAMResult: ``maps`` (N, B, H, W) in [0, 1]; ``raw`` = ``pre_relu`` (N, B, h, w) relevancy
            of the image tokens (non-negative: no ReLU is applied); ``weights`` (N, B, Lk) the read
            row over every key of the image stream (CLS, text tokens included); ``scores`` (N, B);
            ``activations`` (B, Lq, Lk) the head-mean attention of the last recorded layer. The N
            axis is dropped for a single target.
        """
        many, target_list = check_targets(targets)
        if rows is not None and (isinstance(rows, (str, int)) or len(rows) != len(target_list)):
            raise InputError(f"rows: expected one entry per target ({len(target_list)}), got {rows!r}")
        if size is not None:
            size = check_size(size)
        if torch.is_inference_mode_enabled():
            raise RuntimeError("Relevancy needs autograd: call it outside torch.inference_mode()")
        warn_training(self.model)

        with self.recorder.recording() as records:
            output = call_model(self.model, inputs)
        tower: list[AttentionRecord] = []
        if self.vision:  # the LM's layers form the stream; the vision tower's that feed it continue it
            records, tower = lm_and_tower(records, self.model, self.lm)
        if not records:
            where = f" under encoder={self.encoder!r}" if self.encoder is not None else ""
            raise InputError(f"no attention layer of {type(self.model).__name__}{where} ran during the forward pass")
        image_tokens, grid = self.image_tokens, self.grid
        if self.lm is not None:  # an LLM-based VLM: image tokens, grid and logit rows from the inputs
            ids = inputs["input_ids"]
            positions, grid = image_grid(ids, self.lm.image_token, self.reshape)
            image_tokens = positions.tolist()
            if rows is None:
                rows = [logit_rows(inputs, ids.shape[1], _positions(t, self.token)) for t in target_list]
        cams, scores = self._gradient_weighted(output, target_list, records + tower)  # [(N, B, Lq, Lk)], (N, B)
        with torch.no_grad():
            relevancy = _propagate(records, cams[:len(records)], self._streams(records))  # (N, B, Lrow, Lk)
            read = torch.stack([relevancy[n][:, self._rows(n, t, rows, relevancy.shape[-2])].mean(dim=-2)
                                for n, t in enumerate(target_list)])  # (N, B, Lk)
            h, w, index = self._patches(read.shape[-1], image_tokens, grid)
            raw = read[..., index].unflatten(-1, (h, w))  # (N, B, h, w)
            if tower:
                raw = into_tower(raw, cams[len(records):], self.reshape)
            if size is None:
                image = find_image(inputs)
                size = tuple(image.shape[-2:]) if image is not None else (h, w)
            maps = upsample_and_normalize(raw, size)  # (N, B, H, W)
        last = records[-1].probs.detach().mean(dim=1)  # (B, Lq, Lk)
        result = CAMResult(maps, raw, raw, read, scores, last, detach_all(output), many=True)
        return result if many else result[0]

    # ------------------------------------------------------------------ steps

    def _gradient_weighted(self, output: Any, targets: list[Target],
                           records: list[AttentionRecord]) -> tuple[list[Tensor], Tensor]:
        """A-bar = E_h[(dy/dA * A)^+] of every layer for every target: [(N, B, Lq, Lk)], and scores (N, B)."""
        batch = records[0].probs.shape[0]
        with torch.enable_grad():
            scores = [score_of(t, output, batch, index=i, grad=True) for i, t in enumerate(targets)]
            stacked = torch.stack(scores)  # (N, B); samples are independent in eval mode
            probs = [r.probs for r in records]
            grads = gradients(stacked.sum(dim=1), probs)  # one batched backward: [(N, B, H, Lq, Lk)]
        cams = []
        for a, g in zip(probs, grads):
            if g is None:  # a layer the targets do not reach (after the read-out, or unused)
                cams.append(a.new_zeros(len(targets), a.shape[0], *a.shape[2:]))
            else:
                cams.append((g * a.detach()).clamp(min=0).mean(dim=2))  # (N, B, Lq, Lk)
        return cams, stacked.detach()

    def _streams(self, records: list[AttentionRecord]) -> list[str]:
        """Per record: "q" (image self-attention), "s" (text / decoder self-attention) or "x" (cross)."""
        if not any(r.cross for r in records):
            lengths = {r.probs.shape[-1] for r in records} | {r.probs.shape[-2] for r in records}
            if len(lengths) != 1:
                raise InputError(f"the self-attention layers see sequences of lengths {sorted(lengths)} and none "
                                 "cross-attends: pass encoder= to explain one of the sequences")
            return ["q"] * len(records)
        if self.encoder is not None:
            inside = [r.name == self.encoder or r.name.startswith(self.encoder + ".") for r in records]
            return ["x" if r.cross else "q" if q else "s" for r, q in zip(records, inside)]
        parts = [r.name.split(".") for r in records]
        depth = 0  # the deepest module holding every recorded layer
        while all(len(p) > depth + 1 for p in parts) and len({p[depth] for p in parts}) == 1:
            depth += 1
        decoders = {p[depth] for p, r in zip(parts, records) if r.cross}
        return ["x" if r.cross else "s" if p[depth] in decoders else "q" for p, r in zip(parts, records)]

    def _rows(self, n: int, target: Target, rows: Sequence[Any] | None, length: int) -> list[int]:
        """The token positions whose rows are read for target n (negative positions count from the end)."""
        if rows is not None:
            chosen = [rows[n]] if isinstance(rows[n], int) else list(rows[n])
        else:
            chosen = _positions(target, self.token)
        bad = [p for p in chosen if isinstance(p, bool) or not isinstance(p, int) or not -length <= p < length]
        if bad or not chosen:
            raise InputError(f"rows: target {n} reads rows {chosen} (from rows=, its positions, or token=); "
                             f"expected ints in [-{length}, {length})")
        return [p % length for p in chosen]

    @staticmethod
    def _patches(length: int, image_tokens: slice | Sequence[int] | None,
                 grid: tuple[int, int] | None) -> tuple[int, int, Tensor]:
        """(h, w) and the indices of the patch tokens among ``length`` keys, row-major."""
        if image_tokens is None:
            h, w = grid if grid is not None else _square(length)
            if h * w > length:
                raise InputError(f"grid: a {h}x{w} grid needs {h * w} image tokens, the image stream has {length}")
            return h, w, torch.arange(length - h * w, length)
        index = torch.arange(length)[image_tokens] if isinstance(image_tokens, slice) else None
        if index is None:
            bad = [i for i in image_tokens if not -length <= i < length]
            if bad:
                raise InputError(f"image_tokens: positions {bad[:5]} out of range for {length} tokens")
            index = torch.tensor([i % length for i in image_tokens])
        if grid is not None:
            h, w = grid
        else:
            side = math.isqrt(len(index))
            if side * side != len(index):
                raise InputError(f"grid: {len(index)} image tokens are no square; pass grid=(h, w)")
            h = w = side
        if h * w != len(index):
            raise InputError(f"image_tokens: {len(index)} tokens for a {h}x{w} grid ({h * w} expected)")
        return h, w, index


# ---------------------------------------------------------------------- the rules


def _propagate(records: list[AttentionRecord], cams: list[Tensor], streams: list[str]) -> Tensor:
    """Apply the update rules in run order; the read-out matrix: R (single stream) or R^sq (N, B, Lrow, Lk)."""
    n, b = cams[0].shape[:2]
    like = cams[0]

    def eye(size: int) -> Tensor:
        return torch.eye(size, dtype=like.dtype, device=like.device).expand(n, b, size, size)

    cross = [c for c, s in zip(cams, streams) if s == "x"]
    q_len = next((c.shape[-1] for c, s in zip(cams, streams) if s in ("q", "x")), None)
    if not cross:  # R += A-bar R over the image stream
        return self_attention_rule([c for c, s in zip(cams, streams) if s == "q"])
    s_len = cross[0].shape[-2]
    r_qq, r_ss = eye(q_len), eye(s_len)
    r_sq, r_qs = like.new_zeros(n, b, s_len, q_len), like.new_zeros(n, b, q_len, s_len)
    for record, cam, stream in zip(records, cams, streams):
        if cam.shape[-2:] != {"q": (q_len, q_len), "s": (s_len, s_len), "x": (s_len, q_len)}[stream]:
            raise InputError(f"attention layer {record.name!r} has shape {tuple(cam.shape[-2:])}, expected "
                             f"{s_len} text and {q_len} image tokens; pass encoder= to name the image encoder")
        if stream == "q":
            r_qq, r_qs = r_qq + cam @ r_qq, r_qs + cam @ r_qs
        elif stream == "s":
            r_ss, r_sq = r_ss + cam @ r_ss, r_sq + cam @ r_sq
        else:  # both updates read the maps from before this layer
            r_sq, r_ss = r_sq + _normalize(r_ss).mT @ cam @ _normalize(r_qq), r_ss + cam @ r_qs
    return r_sq


def _normalize(r: Tensor) -> Tensor:
    """R-bar = (R - I) / rowsum(R - I) + I; a zero row of R - I stays zero."""
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)
    extra = r - eye
    total = extra.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, extra / torch.where(total > 0, total, torch.ones_like(total)), extra) + eye


# ---------------------------------------------------------------------- helpers


def _language_model(model: nn.Module) -> LMView | None:
    """The LM view of an LLM-based VLM without cross-attention (image tokens in the LM's sequence), else None."""
    if has_cross_attention(model):
        return None
    try:
        return lm_view(model)
    except (TypeError, ValueError):
        return None


def _positions(target: Target, token: int) -> list[int]:
    """The logit positions a target scores (its word's rows), else ``[token]``."""
    while isinstance(target, Counterfactual):
        target = target.target
    if isinstance(target, WordLogProb):
        return [target.position]
    if isinstance(target, SequenceLogProb):
        return list(target.positions)
    return [token]


def _square(length: int) -> tuple[int, int]:
    for prefix in (0, 1, 2):
        side = math.isqrt(max(length - prefix, 0))
        if side > 0 and side * side == length - prefix:
            return side, side
    raise InputError(f"grid: cannot infer a square patch grid from {length} image-stream tokens; "
                     "pass grid=(h, w) or image_tokens=")
