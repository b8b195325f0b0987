"""Run-folder files: atomic writes (a killed run leaves nothing half-written that counts as done),
image and latent files, the manifest, and mask overlays."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

MANIFEST_COLUMNS = [
    "image_idx", "prompt_idx", "prompt", "category", "items", "k", "seed", "variant", "file", "config_hash",
]
# Item colours of the mask overlay (RGB), cycled for more items.
MASK_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file, flush it to disk, rename it over ``path``, then flush the folder:
    after a crash or power loss ``path`` holds either the old bytes or all of the new ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_image(path: Path, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def save_array(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


def write_table(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False).encode("utf-8"))


def mask_overlay(image: Image.Image, assignment: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The image with each item's region tinted in its colour; background untouched.

    ``assignment`` is the (h, w) item index per latent pixel (-1 background), upsampled by nearest.
    """
    labels = Image.fromarray((assignment + 1).astype(np.uint8)).resize(image.size, Image.NEAREST)
    labels = np.asarray(labels).astype(int) - 1
    pixels = np.asarray(image.convert("RGB")).astype(np.float32)
    for item in range(labels.max() + 1):
        colour = np.array(MASK_COLOURS[item % len(MASK_COLOURS)], dtype=np.float32)
        region = labels == item
        pixels[region] = (1 - alpha) * pixels[region] + alpha * colour
    return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))
