"""Serve volumes and pyramids over HTTP to Neuroglancer, zarr and tensorstore: ``start``, ``view``.

Needs the ``serve`` extra (aiohttp; neuroglancer for ``view``): ``pip install 'blockfs[serve]'``.
"""

from .server import Server, start
from .view import view, viewer_url

__all__ = ["Server", "start", "view", "viewer_url"]
