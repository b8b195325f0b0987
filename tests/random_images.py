"""Random RGB test images of assorted sizes (landscape, square, portrait, tall), shared by the scorer tests."""

import numpy as np
from PIL import Image

SIZES = ((48, 40), (40, 40), (30, 70), (64, 64), (100, 20))  # (width, height)


def random_images(n: int, seed: int = 0, sizes=SIZES) -> list:
    """The first ``n`` of ``sizes``, uniform random pixels from one generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]
