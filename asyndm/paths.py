"""Where the project keeps what it builds (the model cache, ``ASYNDM_CACHE``) and what it ships."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("ASYNDM_CACHE", Path.home() / ".cache" / "asyndm")).expanduser()


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shipped_model(name: str) -> Path:
    """A model folder that ships with the project (``models/<name>``, e.g. the toy world's)."""
    return PROJECT_ROOT / "models" / name
