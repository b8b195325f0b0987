"""Model families behind one surface (base.py); each module is one family.

Each backend is declared as an ``asyndm.backends`` entry point named by the diffusers pipeline class it
drives (pyproject.toml), and found through it from ``model_index.json`` (asyndm/sources.py), as a
plugin's backend would be.
"""

from __future__ import annotations

from .base import Backend, ItemTokens
from .flux import FluxBackend
from .sd import StableDiffusionBackend
from .sd3 import StableDiffusion3Backend
from .sdxl import StableDiffusionXLBackend

__all__ = ["Backend", "ItemTokens", "StableDiffusionBackend", "StableDiffusionXLBackend", "StableDiffusion3Backend",
           "FluxBackend"]
