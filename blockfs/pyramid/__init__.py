"""Multi-resolution pyramids in the folder layout that precomputed-tif serves."""

from .folder import Pyramid, is_pyramid, level_key, open_pyramid

__all__ = ["Pyramid", "is_pyramid", "level_key", "open_pyramid"]
