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

__all__ = ["TASKS", "names_for"]

#: task -> what the task's own CNN model is called
TASKS = ("captioner", "vqa", "classifier")


def names_for(task: str) -> tuple[str, ...]:
    """The shipped model names that can do ``task`` (``"captioner"``, ``"vqa"`` or ``"classifier"``).

    Raises:
        ValueError: an unknown task.
    """
    from . import VLM_NAMES

    if task == "captioner":
        return ("captioner", "tiny-ved", *VLM_NAMES)
    if task == "vqa":
        return ("vqa", "tiny-vilt", *VLM_NAMES)
    if task == "classifier":
        return ("classifier",)
    raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
