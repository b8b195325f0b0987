"""Exact alignment score for the shapes world (asyndm/shapes_world.py): no learned judge.

Detection: each pixel takes the nearest colour of the world's palette or white; pixels of one
colour are split into 4-connected components, and components smaller than `min_area` (in a
32×32 image) are dropped as specks. A component's shape comes from its top/bottom balance (a
triangle, apex up, is bottom-heavy) and how much of its bounding box it fills (square ≈ 1,
circle ≈ π/4); its position is its centroid.

Aspects, per image (1.0 holds, 0.0 fails, NaN where the prompt does not ask):
- presence: every named shape appears at least as often as named (any colour);
- colour:   every named object appears with its named colour, as often as named;
- count:    every named coloured object appears exactly as often as named, and nothing else
            is drawn (the image's objects are exactly the prompt's);
- relation: the named objects are in the named relation: "A above B" when B's centroid is at
            least `relation_margin` pixels lower than A's (likewise below / left / right);
- exact:    every aspect the prompt asks holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from asyndm.shapes_world import BACKGROUND, COLOURS, SIZE, parse_prompt

PREFIX = "shapes/"
ASPECTS = ("presence", "colour", "count", "relation")
METRICS = [PREFIX + "exact"] + [PREFIX + a for a in ASPECTS]
_NAMES = ["white", *COLOURS]
_PALETTE = np.array([BACKGROUND, *COLOURS.values()], dtype=np.float32)  # (5, 3)


@dataclass(frozen=True)
class Detected:
    colour: str
    shape: str
    cx: float  # centroid in 32-px units, x to the right
    cy: float  # y down
    area: int


def classify_shape(ys: np.ndarray, xs: np.ndarray) -> str:
    """Shape of a component from its pixel coordinates.

    A triangle (apex up) has far fewer pixels in the top half of its bounding box than in the
    bottom half (1:3); a square fills its bounding box, a circle about π/4 of it.
    """
    middle = (ys.min() + ys.max()) / 2
    top, bottom = (ys < middle).sum(), (ys > middle).sum()
    if top < 0.6 * bottom:
        return "triangle"
    fill = len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return "square" if fill >= 0.95 else "circle"


def colour_labels(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W) index of each pixel's nearest palette colour: 0 = white, then COLOURS in order."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    distance = ((pixels[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)  # (H, W, 5)
    return distance.argmin(-1)


def colour_cells(labels: np.ndarray, colour: str, grid: tuple[int, int]) -> np.ndarray:
    """(g_h, g_w) bool: the cells of a grid over ``colour_labels`` output that hold a pixel of ``colour``."""
    height, width = labels.shape
    g_h, g_w = grid
    if height % g_h or width % g_w:
        raise ValueError(f"grid {g_h}x{g_w} does not divide the {height}x{width} image into whole cells")
    hit = labels == _NAMES.index(colour)
    return hit.reshape(g_h, height // g_h, g_w, width // g_w).any(axis=(1, 3))


def oracle_assignment(image: Image.Image | np.ndarray, spec, grid: tuple[int, int]) -> np.ndarray:
    """``prompts.oracle_masks`` of the shapes prompts (asyndm/oracle.py): each item's cells are those
    the image paints in that item's colour; -1 elsewhere. Where two items share a colour the cell
    goes to the larger k (ties: the first item), as the sampler resolves overlapping masks."""
    colours = [colour for colour, _shape, _count in parse_prompt(spec.prompt).objects][: len(spec.items)]
    labels = colour_labels(image)
    assignment = np.full(grid, -1, dtype=np.int64)
    best = np.full(grid, -1.0)
    for item, colour in enumerate(colours):
        take = colour_cells(labels, colour, grid) & (spec.k[item] > best)
        assignment[take] = item
        best[take] = spec.k[item]
    return assignment


def detect(image: Image.Image | np.ndarray, min_area: int = 6) -> list[Detected]:
    """The coloured objects of an image of the shapes world."""
    nearest = colour_labels(image)  # (H, W): 0 = white
    scale = SIZE / nearest.shape[1]  # report positions and areas in 32-px units
    found = []
    for index, colour in enumerate(_NAMES[1:], start=1):
        labels, count = ndimage.label(nearest == index)
        for label in range(1, count + 1):
            ys, xs = np.nonzero(labels == label)
            area = len(ys) * scale * scale
            if area < min_area:
                continue
            found.append(Detected(colour, classify_shape(ys, xs), (xs.mean() + 0.5) * scale,
                                  (ys.mean() + 0.5) * scale, round(area)))
    return found


def _in_relation(a: Detected, relation: str, b: Detected, margin: float) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy  # b relative to a
    return {"above": dy >= margin, "below": -dy >= margin,
            "to the left of": dx >= margin, "to the right of": -dx >= margin}[relation]


def score_image(objects: list[Detected], prompt: str, relation_margin: float = 2.0) -> dict[str, float]:
    """The aspects and `exact` of one image's detected objects against its prompt."""
    wanted = parse_prompt(prompt)
    presence = all(sum(o.shape == s for o in objects) >= n for _, s, n in wanted.objects)
    colour = all(sum(o.shape == s and o.colour == c for o in objects) >= n for c, s, n in wanted.objects)
    count = all(sum(o.shape == s and o.colour == c for o in objects) == n for c, s, n in wanted.objects) \
        and len(objects) == sum(n for _, _, n in wanted.objects)
    values = {"presence": float(presence), "colour": float(colour), "count": float(count), "relation": math.nan}
    if wanted.relation is not None:
        (ca, sa, _), (cb, sb, _) = wanted.objects
        subjects = [o for o in objects if (o.colour, o.shape) == (ca, sa)]
        references = [o for o in objects if (o.colour, o.shape) == (cb, sb)]
        values["relation"] = float(any(_in_relation(a, wanted.relation, b, relation_margin)
                                       for a in subjects for b in references))
    asked = [v for v in values.values() if not math.isnan(v)]
    values["exact"] = float(all(v == 1.0 for v in asked))
    return {PREFIX + name: value for name, value in values.items()}


class ShapesScore:
    """Exact per-image alignment for prompts of the shapes world's grammar."""

    def __init__(self, min_area: int = 6, relation_margin: float = 2.0):
        self.min_area = int(min_area)
        self.relation_margin = float(relation_margin)
        if self.min_area < 1:
            raise ValueError(f"eval.shapes.min_area must be >= 1 pixel, got {min_area}")

    @classmethod
    def metric_names(cls, **cfg) -> list[str]:
        return list(METRICS)

    def score(self, images: list[Image.Image], prompts: list[str]) -> dict[str, list[float]]:
        if len(images) != len(prompts):
            raise ValueError(f"shapes: got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        values: dict[str, list[float]] = {name: [] for name in METRICS}
        for image, prompt in zip(images, prompts):
            scores = score_image(detect(image, self.min_area), prompt, self.relation_margin)
            for name in METRICS:
                values[name].append(scores[name])
        return values
