"""Loading a shipped transformers model without transformers' progress bars and warnings.

The shipped checkpoints are known to load cleanly, so "Loading weights" bars and
advisory warnings would only be noise in a user's terminal or log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["quiet_transformers"]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers progress bars and only its errors inside the block; the settings come back after.

    Example:
        >>> with quiet_transformers():                                   # doctest: +SKIP
        ...     model = AutoModel.from_pretrained(path, local_files_only=True)
    """
    from transformers.utils import logging

    bars, level = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()
