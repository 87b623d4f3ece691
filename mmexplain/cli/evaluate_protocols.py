"""``mmexplain evaluate`` subcommands for the paper's protocols beyond grounding."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_protocol_commands"]


def add_protocol_commands(sub: Any) -> None:
    """Add the protocol subcommands to ``mmexplain evaluate``'s subparsers."""
