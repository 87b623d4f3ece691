"""Which shipped models do which task: the names a command's ``--model`` accepts.

The CNN models do one task each; the transformers ones add a captioner (``tiny-ved``),
a VQA model (``tiny-vilt``), and the LLM-based VLMs (:data:`~mmexplain.zoo.VLM_NAMES`),
which both caption and answer.

Example:
    >>> from mmexplain.zoo.tasks import names_for
    >>> names_for("captioner")[:2]
    ('captioner', 'tiny-ved')
"""

from __future__ import annotations

from ..errors import InputError

__all__ = ["TASKS", "names_for", "shipped_names"]

#: task -> what the task's own CNN model is called
TASKS = ("captioner", "vqa", "classifier")


def _vlm_names() -> tuple[str, ...]:
    """The LLM-based VLMs' names, older names that still load included."""
    from .. import zoo

    return (*zoo.VLM_NAMES, *(a for a in getattr(zoo, "VLM_ALIASES", {}) if a not in zoo.VLM_NAMES))


def shipped_names() -> tuple[str, ...]:
    """Every name ``mx.zoo.load`` accepts: the CNN, transformers and VLM models."""
    from .. import zoo

    return (*zoo.ALL_NAMES, *_vlm_names())


def names_for(task: str) -> tuple[str, ...]:
    """The shipped model names that can do ``task`` (``"captioner"``, ``"vqa"`` or ``"classifier"``).

    Raises:
        ValueError: an unknown task.
    """
    if task == "captioner":
        return ("captioner", "tiny-ved", *_vlm_names())
    if task == "vqa":
        return ("vqa", "tiny-vilt", *_vlm_names())
    if task == "classifier":
        return ("classifier",)
    raise InputError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
