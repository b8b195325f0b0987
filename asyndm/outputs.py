"""The sampler's picture and array files in a run folder: images, latents and mask overlays, each
written atomically (asyndm/run_folder.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from .run_folder import atomic_write_bytes

# Item colours of the mask overlay (RGB), cycled for more items.
MASK_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def save_image(path: Path, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def save_array(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


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
