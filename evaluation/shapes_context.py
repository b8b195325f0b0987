"""Exact score for the context world (asyndm/context_world.py): the object, the structure, and the
relation between them. A sibling of `eval=[shapes]`, which it leaves unchanged.

Detection: pixels take the nearest palette colour or white and split into 4-connected components
per colour, as in `evaluation/shapes.py`; components under `min_area` are specks. A component
is a *structure* when it has the geometry of one (sizes in px of a 32-px image):
- band:  spans ≥ 28 px of the width, 3–12 px high, its box ≥ 85 % painted;
- half:  spans ≥ 28 px along one axis and 12–20 px along the other, touches the image edges on
         three sides, its box ≥ 85 % non-white (objects on it count as painted);
- frame: both sides ≥ 12 px, hollow (≤ 60 % of its box painted) with its holes filled ≥ 85 % of
         its box (a rectangular outline);
or, with none of these, when its box is ≥ 20 px long (the world's objects span at most 11 px):
an `unknown` structure. The other components are objects, with their shape as in `shapes`.

Aspects, per image (1.0 holds, 0.0 fails, NaN where the prompt does not ask):
- presence:  the named shape appears among the objects (any colour);
- colour:    the named object appears with its named colour;
- count:     the objects are exactly the named one (nothing else small is drawn);
- structure: exactly one structure is drawn, of the named kind and colour;
- relation:  the named object is in the named relation to a structure of the named kind and colour:
             above / below the band (every object pixel in rows above its top / below its bottom),
             inside the frame (every object pixel in its enclosed hole), outside it (none inside
             its filled outline), on the half (every object pixel inside the half's box);
- exact:     every aspect the prompt asks holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from asyndm.context_world import SceneMasks, parse_context_prompt, pixel_cells
from asyndm.shapes_world import COLOURS, SIZE
from evaluation.shapes import classify_shape, colour_labels

PREFIX = "context/"
ASPECTS = ("presence", "colour", "count", "structure", "relation")
METRICS = [PREFIX + "exact"] + [PREFIX + a for a in ASPECTS]
_NAMES = ["white", *COLOURS]
UNKNOWN_LENGTH = 20  # px of 32: a component this long that is no known structure is an unknown one


@dataclass(frozen=True)
class Component:
    """One detected component: its colour, what it is (a shape or a structure kind) and its pixels."""

    colour: str
    kind: str  # circle / square / triangle for objects; band / frame / half / unknown for structures
    is_structure: bool
    pixels: np.ndarray  # (H, W) bool, at the image's resolution


@dataclass(frozen=True)
class Scene:
    objects: list[Component]
    structures: list[Component]


def structure_kind(pixels: np.ndarray, labels: np.ndarray) -> str | None:
    """band / half / frame for a component with that geometry (module docstring), else None.

    `pixels` is the component's (H, W) mask, `labels` the image's `colour_labels`.
    """
    size = pixels.shape[1]
    scale = size / SIZE
    ys, xs = np.nonzero(pixels)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    width, height = (x1 - x0) / scale, (y1 - y0) / scale
    box_area = (x1 - x0) * (y1 - y0)
    painted = pixels.sum() / box_area
    non_white = (labels[y0:y1, x0:x1] != 0).mean()
    if width >= 28 and 3 <= height <= 12 and painted >= 0.85:
        return "band"
    for long, short, at_edges in ((width, height, x0 == 0 and x1 == size and (y0 == 0 or y1 == size)),
                                  (height, width, y0 == 0 and y1 == size and (x0 == 0 or x1 == size))):
        if long >= 28 and 12 <= short <= 20 and at_edges and non_white >= 0.85:
            return "half"
    filled = ndimage.binary_fill_holes(pixels)
    if width >= 12 and height >= 12 and painted <= 0.6 and filled.sum() / box_area >= 0.85:
        return "frame"
    return None


def detect_scene(image: Image.Image | np.ndarray, min_area: int = 6) -> Scene:
    """The objects and structures of an image of the context world."""
    labels = colour_labels(image)  # (H, W): 0 = white
    scale = SIZE / labels.shape[1]
    objects, structures = [], []
    for index, colour in enumerate(_NAMES[1:], start=1):
        components, count = ndimage.label(labels == index)
        for label in range(1, count + 1):
            pixels = components == label
            if pixels.sum() * scale * scale < min_area:
                continue
            ys, xs = np.nonzero(pixels)
            kind = structure_kind(pixels, labels)
            if kind is None and max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) * scale >= UNKNOWN_LENGTH:
                kind = "unknown"
            if kind is None:
                objects.append(Component(colour, classify_shape(ys, xs), False, pixels))
            else:
                structures.append(Component(colour, kind, True, pixels))
    return Scene(objects, structures)


def in_relation(obj: Component, relation: str, structure: Component) -> bool:
    """Whether an object stands in a relation to a structure (see the module docstring)."""
    oy, ox = np.nonzero(obj.pixels)
    sy, sx = np.nonzero(structure.pixels)
    if relation == "above":
        return oy.max() < sy.min()
    if relation == "below":
        return oy.min() > sy.max()
    filled = ndimage.binary_fill_holes(structure.pixels)
    if relation == "inside":
        return bool((filled & ~structure.pixels)[obj.pixels].all())
    if relation == "outside":
        return not filled[obj.pixels].any()
    if relation == "on":
        return bool(oy.min() >= sy.min() and oy.max() <= sy.max() and ox.min() >= sx.min() and ox.max() <= sx.max())
    raise ValueError(f"unknown relation {relation!r}; choose above, below, inside, outside or on")


def score_scene(scene: Scene, prompt: str) -> dict[str, float]:
    """The aspects and `exact` of one image's detected scene against its context prompt."""
    wanted = parse_context_prompt(prompt)
    named = [s for s in scene.structures if (s.kind, s.colour) == (wanted.kind, wanted.structure_colour)]
    values = {"presence": math.nan, "colour": math.nan, "relation": math.nan,
              "structure": float(len(scene.structures) == 1 and len(named) == 1)}
    if wanted.obj is None:
        values["count"] = float(not scene.objects)
    else:
        colour, shape = wanted.obj
        matching = [o for o in scene.objects if (o.colour, o.kind) == (colour, shape)]
        values["presence"] = float(any(o.kind == shape for o in scene.objects))
        values["colour"] = float(bool(matching))
        values["count"] = float(len(matching) == 1 and len(scene.objects) == 1)
        values["relation"] = float(any(in_relation(o, wanted.relation, s) for o in matching for s in named))
    asked = [v for v in values.values() if not math.isnan(v)]
    values["exact"] = float(all(v == 1.0 for v in asked))
    return {PREFIX + name: values[name] for name in ("exact", *ASPECTS)}


def ground_truth_masks(image: Image.Image | np.ndarray, prompt: str, grid: tuple[int, int],
                       min_area: int = 6) -> SceneMasks:
    """Object and context cells of a generated (or rendered) image of a context prompt.

    The item's cells are those of the detected objects in the item's colour, whatever shape they
    were drawn with (the object the model drew for the item); structures' cells are context, as is
    everything else. On rendered scenes this equals `scene_masks` of the scene (tested).
    """
    wanted = parse_context_prompt(prompt)
    scene = detect_scene(image, min_area)
    shape = np.asarray(image).shape[:2]  # (H, W)
    item = np.zeros(shape, bool)
    for obj in scene.objects:
        if wanted.obj is not None and obj.colour == wanted.obj[0]:
            item |= obj.pixels
    structure = np.zeros(shape, bool)
    for found in scene.structures:
        structure |= found.pixels
    items = pixel_cells(item, grid)[None] if wanted.obj is not None else np.zeros((0, *grid), bool)
    return SceneMasks(items, pixel_cells(structure, grid) & ~items.any(axis=0))


def oracle_assignment(image: Image.Image | np.ndarray, spec, grid: tuple[int, int]) -> np.ndarray:
    """``prompts.oracle_masks`` of the context prompts (asyndm/oracle.py): the item's cells in an
    image (`ground_truth_masks`), the rest context (-1)."""
    return ground_truth_masks(image, spec.prompt, grid).assignment()


class ShapesContextScore:
    """Exact per-image alignment for prompts of the context world's grammar."""

    def __init__(self, min_area: int = 6):
        self.min_area = int(min_area)
        if self.min_area < 1:
            raise ValueError(f"eval.shapes_context.min_area must be >= 1 pixel, got {min_area}")

    @classmethod
    def metric_names(cls, **cfg) -> list[str]:
        return list(METRICS)

    def score(self, images: list[Image.Image], prompts: list[str]) -> dict[str, list[float]]:
        if len(images) != len(prompts):
            raise ValueError(f"shapes_context: got {len(images)} images but {len(prompts)} prompts; "
                             f"pass one prompt per image")
        values: dict[str, list[float]] = {name: [] for name in METRICS}
        for image, prompt in zip(images, prompts):
            scores = score_scene(detect_scene(image, self.min_area), prompt)
            for name in METRICS:
                values[name].append(scores[name])
        return values
