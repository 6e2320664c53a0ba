"""Serve volumes and pyramids over HTTP to Neuroglancer, zarr and tensorstore: ``start``, ``view``.

Needs the ``serve`` extra (aiohttp; neuroglancer for ``view``): ``pip install 'blockfs[serve]'``.
The names below are imported on first use, so ``blockfs serve --help`` works without aiohttp.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Seconds a connection may stay without a complete request head, from its opening or its last answer.
IDLE_TIMEOUT = 5.0

_WHERE = {"Server": "server", "start": "server", "view": "viewer", "viewer_url": "viewer"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
