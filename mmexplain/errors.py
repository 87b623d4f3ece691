"""The error types of bad input: what a user can fix, as opposed to a bug.

``InputError`` is a ``ValueError`` and ``InputTypeError`` a ``TypeError`` (and an
``InputError``), so code that catches the built-in types keeps working. The command line
prints an ``InputError`` as one line with exit status 2; any other exception is a bug and
keeps its traceback.

Example:
    >>> from mmexplain.errors import InputError
    >>> raise InputError("layer 'features.99' not found; nearest: features.29")  # doctest: +SKIP
"""

from __future__ import annotations

__all__ = ["InputError", "InputTypeError"]


class InputError(ValueError):
    """A bad argument, file or option value: the message names it, what was expected and what came."""


class InputTypeError(InputError, TypeError):
    """A bad argument of the wrong type (an ``InputError`` that is also a ``TypeError``)."""
