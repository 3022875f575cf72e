"""CoilCombine gadget: coil images → one image per slice."""

from __future__ import annotations

from typing import Any

from gadgets.buffers import ImageBuffer
from recon.coils import rss

__all__ = ["coil_combine"]

_METHODS = ("rss",)


def coil_combine(connection: Any, *, method: str = "rss") -> None:
    """Combine the channel axis of every :class:`ImageBuffer`.

    Params:
        method: ``rss`` (root-sum-of-squares, magnitude).

    Emits ImageBuffers with data (1, z, y, x).
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}, got '{method}'")
    for item in connection:
        if not isinstance(item, ImageBuffer):
            connection.send(item)
            continue
        combined = rss(item.data, dim=0)[None]
        connection.send(ImageBuffer(combined, item.reference, item.encoding_index, dict(item.meta)))
