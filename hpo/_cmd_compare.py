"""`hpo compare` (being written)."""

from __future__ import annotations

from ._cli_common import Commands


def add_parsers(commands: Commands) -> None:
    """Registers nothing yet."""
