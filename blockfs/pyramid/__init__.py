"""Multi-resolution pyramids in the folder layout that precomputed-tif serves."""

from .build import build_pyramid
from .folder import Pyramid, is_pyramid, level_key, open_pyramid

__all__ = ["Pyramid", "build_pyramid", "is_pyramid", "level_key", "open_pyramid"]
