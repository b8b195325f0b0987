"""Saving a built pipeline once, atomically, so that a half-built folder never looks finished."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable


def save_once(folder: Path, make_pipeline: Callable) -> Path:
    """Save ``make_pipeline()`` to ``folder`` (``save_pretrained``) unless it is there; returns the folder."""
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        make_pipeline().save_pretrained(staging)
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "model_index.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
