"""What ``device=auto`` means, decided without importing torch.

Cheap commands (dry runs, refusals) and the run folder's name (the noise device is part of a run's
identity) need it before torch loads. ``auto`` is CUDA where an NVIDIA driver is loaded and the
installed torch is a CUDA build; the run checks that against torch itself before sampling
(``asyndm.models.resolve_device``) and refuses, with the fix, where the two disagree.
"""

from __future__ import annotations

import shutil
from functools import lru_cache
from importlib import metadata
from pathlib import Path


@lru_cache(maxsize=1)
def auto_device_type() -> str:
    """``cuda`` or ``cpu``: the device ``device=auto`` samples on."""
    driver = Path("/proc/driver/nvidia/version").is_file() or shutil.which("nvidia-smi") is not None
    return "cuda" if driver and _torch_is_a_cuda_build() else "cpu"


def _torch_is_a_cuda_build() -> bool:
    """From the installed distribution's metadata: a local version tag (+cu130) or CUDA requirements."""
    try:
        version = metadata.version("torch")
        requires = metadata.requires("torch") or []
    except metadata.PackageNotFoundError:
        return False
    if "+cpu" in version:
        return False
    return "+cu" in version or "+rocm" in version or any(r.lower().startswith(("nvidia-", "cuda-")) for r in requires)
