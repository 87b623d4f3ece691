"""What a report may embed: images as ``data:`` URIs only, so a page never makes a network request.

Example:
    >>> check_data_image("data:image/png;base64,iVBORw0KGgo=", "sections[0].image")
    'data:image/png;base64,iVBORw0KGgo='
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import InputError

__all__ = ["check_data_image", "DATA_IMAGE"]

#: an embedded raster image: ``data:image/<png|jpeg|gif|webp>;base64,<base64 text>``
DATA_IMAGE = re.compile(r"data:image/(?:png|jpeg|gif|webp);base64,[A-Za-z0-9+/]*={0,2}")


def check_data_image(value: Any, name: str) -> str:
    """``value`` if it is an embedded (``data:``) PNG, JPEG, GIF or WebP image, base64-encoded.

    Raises:
        ValueError: anything else (a URL, a file path, another media type), named by ``name``.
    """
    if not isinstance(value, str) or DATA_IMAGE.fullmatch(value) is None:
        shown = repr(value)[:60] + ("..." if len(repr(value)) > 60 else "")
        raise InputError(f"{name}: expected an embedded image (data:image/png;base64,...), got {shown}; "
                         "a report loads nothing from outside itself")
    return value
