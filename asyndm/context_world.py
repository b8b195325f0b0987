"""The shapes world with context: one large structure (a band, a frame, a half) and a small object
placed relative to it.

AsynDM's premise is that prompt-related regions, denoised more slowly, profit from a clearer
context that the unrelated regions give when they finish early. The plain shapes world
(`asyndm/shapes_world.py`) has no such context: every pixel is an object or blank white. Here the
prompt also names a large coloured structure, which is *context*, never an item; the object (the
item) has to be placed relative to it.

Prompt grammar (`parse_context_prompt` inverts it):
    above / below     "a {colour} {shape} {above|below} the {colour} band"      full-width horizontal band
    inside / outside  "a {colour} {shape} {inside|outside} the {colour} frame"  rectangular outline, 2 px
    on                "a {colour} {shape} on the {colour} half"                 top, bottom, left or right half
    structure         "the {colour} {band|frame|half}"                         (training only)

The object's colour always differs from the structure's. Held out: about a third of the
(coloured object, structure kind, structure colour) combinations (`is_heldout_context`); training
never names them, with any relation. The evaluation prompts are built only from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .shapes_world import (COLOURS, HELDOUT_FRACTION, SHAPES, SIZE, Obj, _hash01, describe, render,
                           shape_mask, training_batch)

KINDS = ("band", "frame", "half")
RELATIONS = {"above": "band", "below": "band", "inside": "frame", "outside": "frame", "on": "half"}
CATEGORIES = tuple(RELATIONS)  # evaluation categories: one per relation
SIDES = ("top", "bottom", "left", "right")  # of a half
FRAME_THICKNESS = 2
GAP = 2.0  # pixels of clearance between an object's bounding box and the structure


@dataclass(frozen=True)
class Structure:
    """A context structure: its kind, colour and box [x0, x1) × [y0, y1) in pixels."""

    kind: str
    colour: str
    x0: int
    y0: int
    x1: int
    y1: int


@dataclass(frozen=True)
class ContextScene:
    structure: Structure
    objects: tuple[Obj, ...]
    caption: str
    category: str


# ----------------------------------------------------------------------------- rendering


def structure_mask(structure: Structure, size: int = SIZE) -> np.ndarray:
    """Boolean (size, size) mask of the structure's pixels (for a frame, its outline only)."""
    if structure.kind not in KINDS:
        raise ValueError(f"unknown structure kind {structure.kind!r}; choose one of {KINDS}")
    scale = size / SIZE
    y, x = np.mgrid[0:size, 0:size] / scale + 0.5 / scale  # pixel centres in 32-px units
    box = (x >= structure.x0) & (x < structure.x1) & (y >= structure.y0) & (y < structure.y1)
    if structure.kind != "frame":
        return box
    t = FRAME_THICKNESS
    hole = (x >= structure.x0 + t) & (x < structure.x1 - t) & (y >= structure.y0 + t) & (y < structure.y1 - t)
    return box & ~hole


def render_scene(structure: Structure, objects=(), size: int = SIZE) -> np.ndarray:
    """(size, size, 3) uint8: white, the structure, then the objects on top."""
    image = render([], size)
    image[structure_mask(structure, size)] = COLOURS[structure.colour]
    scale = size / SIZE
    for obj in objects:
        image[shape_mask(obj.shape, obj.cx * scale, obj.cy * scale, obj.r * scale, size)] = COLOURS[obj.colour]
    return image


# ----------------------------------------------------------------------------- captions and split


def caption_context(obj: tuple[str, str], relation: str, structure_colour: str) -> str:
    """'a red circle above the blue band' for obj = (colour, shape)."""
    return f"{describe(*obj)} {relation} the {structure_colour} {RELATIONS[relation]}"


def caption_structure(kind: str, colour: str) -> str:
    return f"the {colour} {kind}"


def is_heldout_context(obj: tuple[str, str], kind: str, structure_colour: str) -> bool:
    """About a third of the (object, structure) combinations, by a fixed hash, never appear in
    training captions, with any relation of that structure kind."""
    return _hash01(f"context:{obj[0]} {obj[1]}|{kind}|{structure_colour}") < HELDOUT_FRACTION


def all_combinations() -> list[tuple[tuple[str, str], str, str]]:
    """(object, kind, structure colour) with the object's colour unlike the structure's (108)."""
    return [((c, s), kind, sc) for kind in KINDS for s in SHAPES for c in COLOURS for sc in COLOURS if sc != c]


# ----------------------------------------------------------------------------- scenes


def _band(rng, relation: str, r: float) -> tuple[Structure, float]:
    """A band with room for an object of radius r on the named side; returns it and the object's y."""
    height = int(rng.integers(5, 9))
    room = int(np.ceil(2 * r + GAP + 0.5))  # the object's box, its gap and a half-pixel margin
    if relation == "above":
        y0 = int(rng.integers(room, SIZE - height + 1))
        cy = rng.uniform(r + 0.5, y0 - GAP - r)
    else:
        y0 = int(rng.integers(0, SIZE - height - room + 1))
        cy = rng.uniform(y0 + height + GAP + r, SIZE - r - 0.5)
    return Structure("band", "", 0, y0, SIZE, y0 + height), cy


def _frame(rng, relation: str, r: float):
    """A frame and an object centre inside or outside it (None if this draw leaves no room)."""
    t = FRAME_THICKNESS
    low = int(np.ceil(2 * (r + GAP + t))) if relation == "inside" else 14
    high = 26 if relation == "inside" else 20
    w, h = (int(rng.integers(low, high + 1)) for _ in range(2))
    x0, y0 = int(rng.integers(0, SIZE - w + 1)), int(rng.integers(0, SIZE - h + 1))
    frame = Structure("frame", "", x0, y0, x0 + w, y0 + h)
    if relation == "inside":
        return frame, (rng.uniform(x0 + t + GAP + r, x0 + w - t - GAP - r),
                       rng.uniform(y0 + t + GAP + r, y0 + h - t - GAP - r))
    for _ in range(50):
        cx, cy = rng.uniform(r + 0.5, SIZE - r - 0.5), rng.uniform(r + 0.5, SIZE - r - 0.5)
        clear_x = cx + r + GAP <= x0 or cx - r - GAP >= x0 + w
        clear_y = cy + r + GAP <= y0 or cy - r - GAP >= y0 + h
        if clear_x or clear_y:
            return frame, (cx, cy)
    return None


def _half(rng, r: float):
    """A half of the image and an object centre on it, clear of its edges (so it is enclosed)."""
    side = SIDES[int(rng.integers(len(SIDES)))]
    half = SIZE // 2
    x0, y0, x1, y1 = {"top": (0, 0, SIZE, half), "bottom": (0, half, SIZE, SIZE),
                      "left": (0, 0, half, SIZE), "right": (half, 0, SIZE, SIZE)}[side]
    margin = r + 1.5
    return Structure("half", "", x0, y0, x1, y1), (rng.uniform(x0 + margin, x1 - margin),
                                                   rng.uniform(y0 + margin, y1 - margin))


def sample_context_scene(rng: np.random.Generator, category: str | None = None, train: bool = True) -> ContextScene:
    """A random scene of the context world (held-out combinations excluded when `train`).

    `category` is a relation of `RELATIONS` or "structure" (the structure alone); None draws
    above/below 0.2 each, inside 0.15, outside 0.15, on 0.2, structure 0.1.
    """
    if category is None:
        category = str(rng.choice([*RELATIONS, "structure"], p=[0.2, 0.2, 0.15, 0.15, 0.2, 0.1]))
    if category not in RELATIONS and category != "structure":
        raise ValueError(f"unknown context category {category!r}; choose one of {[*RELATIONS, 'structure']}")
    colours = list(COLOURS)
    if category == "structure":
        kind, colour = KINDS[int(rng.integers(len(KINDS)))], colours[int(rng.integers(len(colours)))]
        relations = [rel for rel, k in RELATIONS.items() if k == kind]  # any layout of that kind
        layout = None
        while layout is None:
            layout = _layout(rng, relations[int(rng.integers(len(relations)))], 5.0)
        return ContextScene(replace(layout[0], colour=colour), (), caption_structure(kind, colour), "structure")
    kind = RELATIONS[category]
    while True:
        obj = (colours[int(rng.integers(len(colours)))], SHAPES[int(rng.integers(len(SHAPES)))])
        structure_colour = colours[int(rng.integers(len(colours)))]
        if structure_colour == obj[0] or (train and is_heldout_context(obj, kind, structure_colour)):
            continue
        r = float(rng.uniform(4.0, 5.5))
        layout = _layout(rng, category, r)
        if layout is None:
            continue
        structure, (cx, cy) = layout
        return ContextScene(replace(structure, colour=structure_colour),
                            (Obj(obj[1], obj[0], float(cx), float(cy), r),),
                            caption_context(obj, category, structure_colour), category)


def _layout(rng, relation: str, r: float):
    """(uncoloured structure, object centre) for a relation, or None if this draw left no room."""
    kind = RELATIONS[relation]
    if kind == "band":
        band, cy = _band(rng, relation, r)
        return band, (rng.uniform(r + 0.5, SIZE - r - 0.5), cy)
    if kind == "frame":
        return _frame(rng, relation, r)
    return _half(rng, r)


def context_training_batch(rng: np.random.Generator, batch: int):
    """(images (B, 3, 32, 32) float32 in [-1, 1], captions) of fresh context-world training scenes."""
    scenes = [sample_context_scene(rng) for _ in range(batch)]
    x = np.stack([render_scene(s.structure, s.objects) for s in scenes]).astype(np.float32)
    return x.transpose(0, 3, 1, 2) / 127.5 - 1.0, [s.caption for s in scenes]


def mixed_training_batch(rng: np.random.Generator, batch: int, context_share: float = 0.0):
    """A training batch of which round(batch × context_share) scenes come from the context world
    and the rest from the plain shapes world (context_share 0: exactly `training_batch`)."""
    if not 0.0 <= context_share <= 1.0:
        raise ValueError(f"context_share must be in [0, 1], got {context_share}")
    n_context = int(round(batch * context_share))
    if n_context == 0:
        return training_batch(rng, batch)
    parts = [context_training_batch(rng, n_context)]
    if n_context < batch:
        parts.insert(0, training_batch(rng, batch - n_context))
    return np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]]


# ----------------------------------------------------------------------------- ground-truth masks


@dataclass(frozen=True)
class SceneMasks:
    """Which cells of a grid (the model's latent grid) are object cells and which are context.

    A cell is an item's when any of its pixels belongs to that item's object; every other cell is
    context (the structure or the white background). `structure` marks cells with structure
    pixels that are not object cells.
    """

    objects: np.ndarray  # (n_items, g_h, g_w) bool
    structure: np.ndarray  # (g_h, g_w) bool

    @property
    def context(self) -> np.ndarray:
        """(g_h, g_w) bool: cells of no item."""
        return ~self.objects.any(axis=0)

    def assignment(self, background: int = -1) -> np.ndarray:
        """(g_h, g_w) int: the item index of each cell (the first item where objects overlap), else `background`."""
        index = np.full(self.structure.shape, background, dtype=np.int64)
        for item in reversed(range(len(self.objects))):
            index[self.objects[item]] = item
        return index


def pixel_cells(pixels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(g_h, g_w) bool: the cells of a grid over an (H, W) mask that hold a True pixel."""
    height, width = pixels.shape
    g_h, g_w = grid
    if height % g_h or width % g_w:
        raise ValueError(f"grid {g_h}x{g_w} does not divide the {height}x{width} image into whole cells; "
                         f"use the model's latent size or a divisor of it")
    return pixels.reshape(g_h, height // g_h, g_w, width // g_w).any(axis=(1, 3))


def scene_masks(scene: ContextScene, grid: tuple[int, int] = (SIZE, SIZE)) -> SceneMasks:
    """The ground truth of a rendered scene: its object's cells (the prompt's one item) and the
    structure's, from the scene's geometry."""
    objects = [shape_mask(o.shape, o.cx, o.cy, o.r) for o in scene.objects]
    on_object = np.any(objects, axis=0) if objects else np.zeros((SIZE, SIZE), bool)
    items = np.stack([pixel_cells(m, grid) for m in objects]) if objects else np.zeros((0, *grid), bool)
    structure = pixel_cells(structure_mask(scene.structure) & ~on_object, grid) & ~items.any(axis=0)
    return SceneMasks(items, structure)


# ----------------------------------------------------------------------------- prompt parsing


@dataclass(frozen=True)
class ContextConstraints:
    """What a context prompt asks for: a structure (kind, colour) and, unless the prompt names the
    structure alone, one object (colour, shape) in `relation` to it."""

    kind: str
    structure_colour: str
    obj: tuple[str, str] | None = None
    relation: str | None = None


def is_context_prompt(prompt: str) -> bool:
    """True for sentences of this module's grammar (they name a structure: '... the <colour> <kind>')."""
    words = prompt.lower().strip().rstrip(".").split()
    return len(words) >= 3 and words[-3] == "the" and words[-1] in KINDS


def parse_context_prompt(prompt: str) -> ContextConstraints:
    """Constraints of a prompt of the context grammar; ValueError names anything else."""
    words = prompt.lower().strip().rstrip(".").split()
    expected = (f"expected 'a <colour> <shape> <relation> the <colour> <kind>' or 'the <colour> <kind>' with "
                f"colours {list(COLOURS)}, shapes {list(SHAPES)} and relation/kind pairs {RELATIONS}")
    if not is_context_prompt(prompt) or words[-2] not in COLOURS:
        raise ValueError(f"shapes_context: cannot parse prompt {prompt!r}; {expected}")
    kind, structure_colour = words[-1], words[-2]
    if len(words) == 3:
        return ContextConstraints(kind, structure_colour)
    if len(words) != 7 or words[0] != "a" or words[1] not in COLOURS or words[2] not in SHAPES:
        raise ValueError(f"shapes_context: cannot parse prompt {prompt!r}; {expected}")
    relation = words[3]
    if RELATIONS.get(relation) != kind:
        raise ValueError(f"shapes_context: relation {relation!r} does not go with the {kind} in prompt {prompt!r}; "
                         f"relation/kind pairs are {RELATIONS}")
    return ContextConstraints(kind, structure_colour, (words[1], words[2]), relation)


# ----------------------------------------------------------------------------- evaluation prompts


def context_evaluation_prompts(per_category: int = 8, seed: int = 0) -> list[dict]:
    """The evaluation set: `per_category` prompts per relation, all from held-out combinations.
    The item is the object's shape word; the structure's words are context, never items."""
    rng = np.random.default_rng(seed)
    rows = []
    held = [c for c in all_combinations() if is_heldout_context(*c)]
    for relation, kind in RELATIONS.items():
        of_kind = [c for c in held if c[1] == kind]
        for i in rng.permutation(len(of_kind))[:per_category]:
            obj, _, structure_colour = of_kind[i]
            rows.append({"prompt": caption_context(obj, relation, structure_colour), "items": [obj[1]],
                         "k": [0.5], "category": relation})
    return rows


def write_context_prompt_files(folder=None) -> None:
    """(Re)write conf/prompts/shapes_context.jsonl and shapes_context_smoke.jsonl (one per category)."""
    folder = Path(folder) if folder else Path(__file__).resolve().parents[1] / "conf" / "prompts"
    rows = context_evaluation_prompts()
    smoke = [next(r for r in rows if r["category"] == c) for c in CATEGORIES]
    (folder / "shapes_context.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "shapes_context_smoke.jsonl").write_text("".join(json.dumps(r) + "\n" for r in smoke),
                                                       encoding="utf-8")
