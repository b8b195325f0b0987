"""Where the project keeps what it builds (the model cache, ``ASYNDM_CACHE``) and what it ships.

The configs (``conf/``) and the shipped models (``models/``) are package data of an installed
asyndm (``asyndm.conf``, ``asyndm.shipped_models``), found through the package; a source checkout
that is not installed finds them beside ``asyndm/``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _package_folder(package: str, checkout_folder: Path) -> Path:
    try:
        return Path(str(resources.files(package)))
    except ModuleNotFoundError:  # a source checkout run without installing it
        return checkout_folder


CONF_DIR = _package_folder("asyndm.conf", PROJECT_ROOT / "conf")
SHIPPED_MODELS_DIR = _package_folder("asyndm.shipped_models", PROJECT_ROOT / "models")


def cache_dir() -> Path:
    return Path(os.environ.get("ASYNDM_CACHE", Path.home() / ".cache" / "asyndm")).expanduser()


def shipped_model(name: str) -> Path:
    """A model folder that ships with asyndm (``models/<name>``, e.g. the toy world's)."""
    return SHIPPED_MODELS_DIR / name


def shipped_model_names() -> list[str]:
    return sorted(p.name for p in SHIPPED_MODELS_DIR.iterdir() if (p / "model_index.json").is_file())
