"""PassThrough gadget: transport only (everything it receives goes on unchanged)."""

from __future__ import annotations

from typing import Any

__all__ = ["pass_through"]


def pass_through(connection: Any) -> None:
    """Send every item on as it is; used to measure and test the transport."""
    for item in connection:
        connection.send(item)
