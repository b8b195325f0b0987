"""Models the project builds itself with random weights (tests, benchmarks, the offline default).

``BUILDERS`` maps a built-in model name (``model=tiny``, ``AsyncPipeline.from_pretrained("tiny")``)
to a function that builds its diffusers folder once, in the cache, and returns the folder. One
module per model family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .flux import build_tiny_flux
from .sd import build_tiny_pipeline
from .sdxl import build_tiny_sdxl_pipeline
from .sd3 import build_tiny_sd3

BUILDERS: dict[str, Callable[[], Path]] = {
    "tiny": build_tiny_pipeline,
    "tiny_sdxl": build_tiny_sdxl_pipeline,
    "tiny_sd3": build_tiny_sd3,
    "tiny_flux": build_tiny_flux,
}
# Each built-in model's family (its pipeline class), known before it is built.
FAMILIES: dict[str, str] = {"tiny": "sd", "tiny_sdxl": "sdxl", "tiny_sd3": "sd3", "tiny_flux": "flux"}
