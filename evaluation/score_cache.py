"""Scores remembered by image content and prompt, for one evaluator in one process.

In a sweep the `dm` images of every job are the same pixels (same prompt and seed; only the
asynchronous variants change), and `asyndm-eval` may score a run again. An evaluator that keeps a
`ScoreCache` computes each (image, prompt) pair once per process.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from PIL import Image


def image_key(image: Image.Image) -> str:
    """SHA-256 of the image's mode, size and pixel bytes (not of its file, so PNG metadata is ignored)."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class ScoreCache:
    """(image hash, prompt) -> one value per metric."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str], dict[str, float]] = {}

    def __len__(self) -> int:
        return len(self._values)

    def score(self, images: list[Image.Image], prompts: list[str],
              compute: Callable[[list[Image.Image], list[str]], dict[str, list[float]]]) -> dict[str, list[float]]:
        """Metric -> values for every pair; `compute` sees only the pairs not seen before, each once."""
        keys = [(image_key(im), p) for im, p in zip(images, prompts)]
        todo = {}
        for index, key in enumerate(keys):
            if key not in self._values and key not in todo:
                todo[key] = index
        if todo:
            fresh = compute([images[i] for i in todo.values()], [prompts[i] for i in todo.values()])
            for position, key in enumerate(todo):
                self._values[key] = {metric: float(values[position]) for metric, values in fresh.items()}
        metrics = list(self._values[keys[0]]) if keys else []
        return {metric: [self._values[key][metric] for key in keys] for metric in metrics}
