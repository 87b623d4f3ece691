"""Record a transformers model's attention probabilities for one call, as graph tensors.

``Relevancy`` needs every attention layer's probabilities A (B, heads, Lq, Lk) *inside* the
autograd graph, so that dy/dA can be taken. Two ways in, chosen per sub-model (the innermost
``PreTrainedModel`` modules) when the recorder is built:

=====================================  ==================================================================
sub-model (transformers 5.x)           how its attention is recorded
=====================================  ==================================================================
ViT, GPT-2, any model whose attention  ``AttentionInterface``: a recording kernel is registered under a fresh
dispatches through                     name for the call (with transformers' eager mask function under the same
``ALL_ATTENTION_FUNCTIONS``            name in ``AttentionMaskInterface``), and every config of those sub-models
(``_supports_attention_backend``)      (``_attn_implementation``, sub-configs included) points at it. The kernel
                                       is the eager computation softmax(Q K^T * scale + mask), dropout only in
                                       training mode, and keeps the probabilities.
ViLT (``ViltSelfAttention``)           forward hook on the module: it returns the probabilities when
                                       ``output_attentions`` is on, which is set on its config for the call.
BLIP vision (``BlipAttention``),       forward hook on the module: it always returns the probabilities.
BLIP text (``BlipTextSelfAttention``)
=====================================  ==================================================================

A sub-model with attention modules that fits neither row raises ``TypeError`` naming its class.
Nothing of the model's code is copied or patched; hooks, the registered names and every config
attribute are undone in ``finally``, also when the forward raises.

Threads: the switched configs and hooks are seen by every thread that runs the model during the
call, so the kernel, the mask function and the hooks act only for the thread that opened the
recording. Another thread's forward (a ``generate``, a Grad-CAM, a prediction) passes through the
model's own attention implementation and mask function, unrecorded, with its own grad mode; two
recordings of one process take turns (a lock).

Autograd starts at the first attention layer: the forward runs with grad off until the first
recorded layer switches it on (a layer whose probabilities, or whose input hidden states, do not
require grad gets a fresh leaf there), so no graph is kept for the embeddings before it.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, InputTypeError

__all__ = ["AttentionRecord", "AttentionRecorder", "has_cross_attention", "is_cross_attention"]

# switching a model's attention implementation is visible to every thread that runs the model, so
# recordings take turns (a lock, not data: nothing is kept between calls)
_RECORDING = threading.RLock()

#: attention module classes recorded with a forward hook -> whether they need output_attentions=True
HOOKED_CLASSES = {"ViltSelfAttention": True, "BlipAttention": False, "BlipTextSelfAttention": False}
#: parts of a module name that mark cross-attention (GPT-2, BLIP text, BART-style, ...)
_CROSS_NAMES = ("crossattention", "cross_attn", "encoder_attn")


@dataclass
class AttentionRecord:
    """One attention layer's probabilities from the recorded forward pass.

    Attributes:
        name: the module's dotted name in the model.
        cross: True for cross-attention (queries from one sequence, keys from another).
        probs: (B, heads, Lq, Lk) softmax probabilities, part of the autograd graph.
    """

    name: str
    cross: bool
    probs: Tensor


def is_cross_attention(name: str, module: nn.Module) -> bool:
    """Cross-attention by the module's own flag (GPT-2) or its name (``crossattention``, ...)."""
    return bool(getattr(module, "is_cross_attention", False)) or any(p in _CROSS_NAMES for p in name.split("."))


def has_cross_attention(model: nn.Module) -> bool:
    """Whether the model holds a cross-attention module (by its flag or its name)."""
    return any(getattr(m, "is_cross_attention", False) is True or n.rsplit(".", 1)[-1] in _CROSS_NAMES
               for n, m in model.named_modules())


class AttentionRecorder:
    """Decides once how each sub-model's attention is recorded; ``recording()`` does it for one call.

    Args:
        model: a transformers model, or any module around one (adapter wrappers).
        within: record only the attention modules under this dotted submodule name (all by default);
            the others run the same computation unrecorded.

    Raises:
        TypeError: a sub-model computes attention outside ``ALL_ATTENTION_FUNCTIONS`` and has no
            hook here, or the model holds no transformers attention at all.
    """

    def __init__(self, model: nn.Module, *, within: str | None = None) -> None:
        from transformers import PreTrainedModel

        self.model = model
        self.within = within
        pretrained = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
        leaves = [m for m in pretrained if not any(isinstance(c, PreTrainedModel) for c in list(m.modules())[1:])]
        self.kernel_models = [m for m in leaves if getattr(type(m), "_supports_attention_backend", False)]
        self.hooked = {name: m for name, m in model.named_modules() if type(m).__name__ in HOOKED_CLASSES}
        hooked_here = {name: m for name, m in self.hooked.items() if _under(name, within)}
        for leaf in leaves:
            if leaf in self.kernel_models or any(type(m).__name__ in HOOKED_CLASSES for m in leaf.modules()):
                continue
            attention = [type(m).__name__ for m in leaf.modules() if "Attention" in type(m).__name__]
            if attention:
                raise InputTypeError(
                    f"model: {type(leaf).__name__} computes attention in {attention[0]} outside transformers' "
                    f"AttentionInterface (ALL_ATTENTION_FUNCTIONS), and Relevancy has no recording hook for it; "
                    f"supported: models using the AttentionInterface, and {', '.join(HOOKED_CLASSES)}"
                )
        if not self.kernel_models and not self.hooked:
            raise InputTypeError(f"model: found no transformers attention in {type(model).__name__}; Relevancy explains "
                            "transformers models (ViT, GPT-2, ViLT, BLIP, VisionEncoderDecoder, ...)")
        # configs switched to the recording kernel: the kernel sub-models', their composites' (when these hold
        # no hooked module) and every sub-config of those, by identity
        holders = [m for m in pretrained if any(k in self.kernel_models for k in m.modules())
                   and not any(type(c).__name__ in HOOKED_CLASSES for c in m.modules())]
        holders += [c for k in self.kernel_models for c in k.modules()]
        self.kernel_configs = _configs([getattr(m, "config", None) for m in holders])
        # configs that must return attention probabilities (ViLT): every PreTrainedModel above such a module
        needs = [m for name, m in self.hooked.items() if HOOKED_CLASSES[type(m).__name__]]
        self.output_configs = _configs([p.config for p in pretrained if any(n in needs for n in p.modules())])
        self.hooked = hooked_here

    @contextmanager
    def recording(self) -> Iterator[list[AttentionRecord]]:
        """Within the block, every forward pass of the model appends its attention layers, in run order."""
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
        from transformers.modeling_utils import AttentionInterface

        records: list[AttentionRecord] = []
        names = {id(m): n for n, m in self.model.named_modules() if _under(n, self.within)}
        key = f"mmexplain_record_{uuid.uuid4().hex}"  # a fresh name per call: never clashes with a registered one
        handles = []
        grad_was = torch.is_grad_enabled()
        _RECORDING.acquire()  # the attention switch acts on the whole model: one recording at a time
        saved = [(c, c._attn_implementation_internal, c._output_attentions) for c in {
            id(c): c for c in [*self.kernel_configs, *self.output_configs]}.values()]
        own = _Owner(threading.get_ident(), {id(c): impl for c, impl, _ in saved})
        try:
            if self.kernel_configs:
                AttentionInterface.register(key, _kernel(records, names, own))
                AttentionMaskInterface.register(key, _mask(own))
                for config in self.kernel_configs:
                    config._attn_implementation_internal = key  # the internal field: no recursion, exact restore
            for config in self.output_configs:
                config.output_attentions = True
            for name, module in self.hooked.items():
                handles.append(module.register_forward_pre_hook(_enter_graph_inputs(own), with_kwargs=True))
                handles.append(module.register_forward_hook(_hook(records, name, own)))
            torch.set_grad_enabled(False)  # the first recorded layer switches autograd on
            yield records
        finally:
            torch.set_grad_enabled(grad_was)
            for handle in handles:
                handle.remove()
            for config, implementation, output_attentions in saved:
                config._attn_implementation_internal = implementation
                config._output_attentions = output_attentions
            AttentionInterface._global_mapping.pop(key, None)  # no public unregister in transformers 5.x
            AttentionMaskInterface._global_mapping.pop(key, None)
            _RECORDING.release()


@dataclass(frozen=True)
class _Owner:
    """The recording thread, and each switched config's own attention implementation (by ``id``)."""

    thread: int
    implementations: dict[int, Any]

    def here(self) -> bool:
        """Whether the running thread opened the recording."""
        return threading.get_ident() == self.thread

    def implementation(self, config: Any) -> str | None:
        """The implementation ``config`` had before the call (``None``: transformers' default)."""
        if id(config) in self.implementations:
            return self.implementations[id(config)]
        return next(iter(self.implementations.values()), None)


def _mask(own: _Owner) -> Any:
    """The mask function of the recording name: eager masks for the recording thread, the model's own for others."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask

    def mask(*args: Any, **kwargs: Any) -> Any:
        if own.here():
            return eager_mask(*args, **kwargs)
        implementation = own.implementation(kwargs.get("config"))
        return ALL_MASK_ATTENTION_FUNCTIONS.get(implementation or "eager", sdpa_mask)(*args, **kwargs)

    return mask


def _foreign_attention(own: _Owner, module: nn.Module) -> Any:
    """The attention function ``module`` runs when another thread's recording has switched its config."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    implementation = own.implementation(getattr(module, "config", None))
    if implementation not in (None, "eager") and implementation in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[implementation]
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is not None:  # the model file's own eager kernel, as transformers picks it
        return eager
    return ALL_ATTENTION_FUNCTIONS["sdpa"]


def _under(name: str, prefix: str | None) -> bool:
    return prefix is None or prefix == "" or name == prefix or name.startswith(prefix + ".")


def _configs(candidates: list[Any]) -> list[Any]:
    """The unique configs among ``candidates`` and all their sub-configs (by identity)."""
    from transformers import PretrainedConfig

    found: dict[int, Any] = {}
    stack = [c for c in candidates if isinstance(c, PretrainedConfig)]
    while stack:
        config = stack.pop()
        if id(config) in found:
            continue
        found[id(config)] = config
        stack += [s for s in (getattr(config, k, None) for k in config.sub_configs) if isinstance(s, PretrainedConfig)]
    return list(found.values())


def _enter_graph(tensor: Tensor) -> Tensor:
    """Switch autograd on; a tensor that is not yet in the graph becomes a fresh leaf (nothing is lost)."""
    torch.set_grad_enabled(True)
    return tensor if tensor.requires_grad else tensor.detach().requires_grad_(True)


def _enter_graph_inputs(own: _Owner) -> Any:
    """Forward pre-hook of a hooked attention module: its hidden states enter the graph (recording thread only)."""

    def fn(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not own.here():
            return None
        if args and isinstance(args[0], Tensor) and args[0].is_floating_point():
            args = (_enter_graph(args[0]), *args[1:])
        elif isinstance(kwargs.get("hidden_states"), Tensor):
            kwargs = {**kwargs, "hidden_states": _enter_graph(kwargs["hidden_states"])}
        else:
            torch.set_grad_enabled(True)
        return args, kwargs

    return fn


def _hook(records: list[AttentionRecord], name: str, own: _Owner) -> Any:
    def fn(module: nn.Module, args: Any, output: Any) -> None:
        if not own.here():
            return
        probs = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if not isinstance(probs, Tensor) or probs.dim() != 4:
            raise InputError(f"attention module {name!r} ({type(module).__name__}) returned no attention "
                             "probabilities; do not pass output_attentions=False in the inputs")
        records.append(AttentionRecord(name, is_cross_attention(name, module), probs))

    return fn


def _kernel(records: list[AttentionRecord], names: dict[int, str], own: _Owner) -> Any:
    """The recording attention kernel, in the signature of transformers' ``eager_attention_forward``.

    Another thread's call goes to the module's own implementation, unrecorded.
    """

    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                  scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if not own.here():
            return _foreign_attention(own, module)(module, query, key, value, attention_mask, scaling=scaling,
                                                   dropout=dropout, **kwargs)
        for unsupported in ("softcap", "s_aux"):
            if kwargs.get(unsupported) is not None:
                raise InputError(f"{type(module).__name__} passes {unsupported}=; the Relevancy recording kernel "
                                 "computes plain softmax attention only")
        if key.shape[1] != query.shape[1]:  # grouped-query attention: one key/value head per group
            key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
            value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        scores = torch.matmul(query, key.transpose(-1, -2)) * scale  # (B, H, Lq, Lk)
        if attention_mask is not None:
            mask = attention_mask[..., : key.shape[-2]]
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + mask
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # (B, H, Lq, Lk)
        name = names.get(id(module))
        if name is not None:
            probs = _enter_graph(probs)
            records.append(AttentionRecord(name, is_cross_attention(name, module), probs))
        dropped = F.dropout(probs, p=dropout, training=module.training)
        output = torch.matmul(dropped, value).transpose(1, 2).contiguous()  # (B, Lq, H, d)
        return output, probs

    return attention
