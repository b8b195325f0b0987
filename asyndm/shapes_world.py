"""The shapes world: 32×32 images of coloured shapes on white, their captions and prompt sets.

Everything is procedural and deterministic given a seed, so the same world gives training data
(`sample_scene` + `render`), evaluation prompts (`evaluation_prompts`) and the ground truth that
`evaluation/shapes.py` checks generated images against.

Prompt grammar (the only sentences the world speaks; `parse_prompt` inverts it):
    single    "a {colour} {shape}"
    two       "a {colour} {shape} and a {colour} {shape}"           (binding: the same form)
    count     "{two|three} {colour} {shape}s"
    relation  "a {colour} {shape} {above|below|to the left of|to the right of} a {colour} {shape}"

Held-out combinations: an unordered pair of coloured objects is either a training pair or an
evaluation pair (`is_heldout_pair`); training captions never name an evaluation pair, in any
order or relation. Counting holds out some (count, colour, shape) triples the same way. Single
objects cannot be held out (there are only twelve), so single prompts measure recall.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np

SIZE = 32
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 200, 30),
}
SHAPES = ("circle", "square", "triangle")
NUMBERS = {"two": 2, "three": 3}
RELATIONS = ("above", "below", "to the left of", "to the right of")
CATEGORIES = ("single", "two", "count", "relation", "binding")
BACKGROUND = (255, 255, 255)
HELDOUT_FRACTION = 0.35  # of pairs and of count triples, by hash: 14 of 48 pairs, 8 of 24 triples


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    cx: float  # centre, pixels (x to the right, y down)
    cy: float
    r: float  # half the side of the bounding box


# ----------------------------------------------------------------------------- rendering


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = SIZE) -> np.ndarray:
    """Boolean (size, size) mask of one shape, sampled at pixel centres (no anti-aliasing)."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r * 0.9) & (np.abs(dy) <= r * 0.9)
    if shape == "triangle":  # apex up, base down: width grows linearly from the apex
        inside_y = (dy >= -r) & (dy <= r)
        return inside_y & (np.abs(dx) <= (dy + r) / 2)
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")


def render(objects: list[Obj], size: int = SIZE) -> np.ndarray:
    """(size, size, 3) uint8 image: white background, objects painted in order."""
    image = np.full((size, size, 3), BACKGROUND, dtype=np.uint8)
    for obj in objects:
        image[shape_mask(obj.shape, obj.cx, obj.cy, obj.r, size)] = COLOURS[obj.colour]
    return image


# ----------------------------------------------------------------------------- captions


def plural(shape: str) -> str:
    return shape + "s"


def describe(obj_colour: str, shape: str) -> str:
    return f"a {obj_colour} {shape}"


def caption_single(c: str, s: str) -> str:
    return describe(c, s)


def caption_two(a: tuple[str, str], b: tuple[str, str]) -> str:
    return f"{describe(*a)} and {describe(*b)}"


def caption_count(n: int, c: str, s: str) -> str:
    word = {v: k for k, v in NUMBERS.items()}[n]
    return f"{word} {c} {plural(s)}"


def caption_relation(a: tuple[str, str], relation: str, b: tuple[str, str]) -> str:
    return f"{describe(*a)} {relation} {describe(*b)}"


# ----------------------------------------------------------------------------- held-out split


def _hash01(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def pair_key(a: tuple[str, str], b: tuple[str, str]) -> str:
    return "|".join(sorted([f"{a[0]} {a[1]}", f"{b[0]} {b[1]}"]))


def all_pairs() -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """Unordered pairs of coloured objects with different shapes (48)."""
    objects = [(c, s) for s in SHAPES for c in COLOURS]
    return [(a, b) for a, b in itertools.combinations(objects, 2) if a[1] != b[1]]


def is_heldout_pair(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """About a third of the pairs, chosen by a fixed hash, never appear in training captions.

    A pair with two colours is held out only if its colour swap is a training pair, so that
    `binding` prompts test binding known colours and shapes in an unseen arrangement.
    """
    if _hash01("pair:" + pair_key(a, b)) >= HELDOUT_FRACTION:
        return False
    if a[0] == b[0]:
        return True
    swapped = ((b[0], a[1]), (a[0], b[1]))
    return _hash01("pair:" + pair_key(*swapped)) >= HELDOUT_FRACTION


def is_heldout_count(n: int, c: str, s: str) -> bool:
    return _hash01(f"count:{n}:{c}:{s}") < HELDOUT_FRACTION


# ----------------------------------------------------------------------------- scenes


def _place(rng: np.random.Generator, radii: list[float], relation: str | None = None, tries: int = 200):
    """Centres for objects of the given radii, inside the image, not touching; None if it fails."""
    for _ in range(tries):
        centres = [(rng.uniform(r + 0.5, SIZE - r - 0.5), rng.uniform(r + 0.5, SIZE - r - 0.5)) for r in radii]
        ok = all(
            max(abs(p[0] - q[0]), abs(p[1] - q[1])) >= radii[i] + radii[j] + 2
            for (i, p), (j, q) in itertools.combinations(enumerate(centres), 2)
        )
        if ok and relation is not None:
            (ax, ay), (bx, by) = centres
            dx, dy = bx - ax, by - ay  # b relative to a
            ok = {
                "above": dy > abs(dx) and dy >= 6,  # a above b: b is lower
                "below": -dy > abs(dx) and -dy >= 6,
                "to the left of": dx > abs(dy) and dx >= 6,
                "to the right of": -dx > abs(dy) and -dx >= 6,
            }[relation]
        if ok:
            return centres
    return None


def sample_scene(rng: np.random.Generator, category: str | None = None, train: bool = True):
    """(objects, caption, category) of a random training scene (held-out combinations excluded).

    `category` None draws one with probabilities single 0.3, two 0.25, count 0.15, relation 0.3.
    """
    colours, shapes = list(COLOURS), list(SHAPES)
    if category is None:
        category = rng.choice(["single", "two", "count", "relation"], p=[0.3, 0.25, 0.15, 0.3])
    while True:
        if category == "single":
            c, s = rng.choice(colours), rng.choice(shapes)
            radii = [float(rng.uniform(5, 8))]
            centres = _place(rng, radii)
            spec = [(c, s)]
            caption = caption_single(c, s)
        elif category == "count":
            n, c, s = int(rng.choice([2, 3])), rng.choice(colours), rng.choice(shapes)
            if train and is_heldout_count(n, c, s):
                continue
            radii = [float(rng.uniform(4, 6)) for _ in range(n)]
            centres = _place(rng, radii)
            spec = [(c, s)] * n
            caption = caption_count(n, c, s)
        else:  # two / relation / binding
            a = (rng.choice(colours), rng.choice(shapes))
            b = (rng.choice(colours), rng.choice(shapes))
            if a[1] == b[1] or (train and is_heldout_pair(a, b)):
                continue
            radii = [float(rng.uniform(4.5, 7)) for _ in range(2)]
            relation = rng.choice(RELATIONS) if category == "relation" else None
            centres = _place(rng, radii, relation)
            spec = [a, b]
            caption = caption_relation(a, relation, b) if relation else caption_two(a, b)
        if centres is None:
            continue
        objects = [Obj(s, c, x, y, r) for (c, s), (x, y), r in zip(spec, centres, radii)]
        return objects, caption, str(category)


def training_batch(rng: np.random.Generator, batch: int):
    """(images (B, 3, 32, 32) float32 in [-1, 1], captions) of fresh training scenes."""
    images, captions = [], []
    for _ in range(batch):
        objects, caption, _ = sample_scene(rng)
        images.append(render(objects))
        captions.append(caption)
    x = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
    return x, captions


# ----------------------------------------------------------------------------- prompt parsing


@dataclass(frozen=True)
class Constraints:
    """What a prompt asks for: `objects` = [(colour, shape, count)], and an optional relation
    (index of subject, relation, index of reference) between the first two objects."""

    objects: tuple[tuple[str, str, int], ...]
    relation: str | None = None


def parse_prompt(prompt: str) -> Constraints:
    """Constraints of a prompt of the world's grammar; ValueError names anything else."""
    words = prompt.lower().strip().rstrip(".").split()
    text = " ".join(words)

    def obj(tokens: list[str]) -> tuple[str, str, int]:
        if len(tokens) == 3 and tokens[0] == "a" and tokens[1] in COLOURS and tokens[2] in SHAPES:
            return tokens[1], tokens[2], 1
        if len(tokens) == 3 and tokens[0] in NUMBERS and tokens[1] in COLOURS and tokens[2][:-1] in SHAPES \
                and tokens[2].endswith("s"):
            return tokens[1], tokens[2][:-1], NUMBERS[tokens[0]]
        raise ValueError(f"shapes: cannot parse {' '.join(tokens)!r} in prompt {prompt!r}; expected "
                         f"'a <colour> <shape>' or '<two|three> <colour> <shape>s' with colours "
                         f"{list(COLOURS)} and shapes {list(SHAPES)}")

    for relation in RELATIONS:
        marker = f" {relation} "
        padded = f" {text} "
        if marker in padded:
            left, right = padded.split(marker, 1)
            a, b = obj(left.split()), obj(right.split())
            if a[2] != 1 or b[2] != 1:
                raise ValueError(f"shapes: relations take single objects, got {prompt!r}")
            return Constraints((a, b), relation)
    if " and " in text:
        left, right = text.split(" and ", 1)
        return Constraints((obj(left.split()), obj(right.split())))
    return Constraints((obj(words),))


# ----------------------------------------------------------------------------- evaluation prompts


def evaluation_prompts(per_category: int = 8, seed: int = 0) -> list[dict]:
    """The evaluation set: `per_category` prompts of each category, from held-out combinations
    (single objects excepted, see the module docstring). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    k = 0.5

    def add(prompt, items, category):
        rows.append({"prompt": prompt, "items": items, "k": [k] * len(items), "category": category})

    singles = [(c, s) for s in SHAPES for c in COLOURS]
    for i in rng.permutation(len(singles))[:per_category]:
        c, s = singles[i]
        add(caption_single(c, s), [s], "single")

    held = [p for p in all_pairs() if is_heldout_pair(*p)]
    two_colour = [held[i] for i in rng.permutation(len(held)) if held[i][0][0] != held[i][1][0]]
    binding = two_colour[:per_category]  # colour swaps of training pairs: binding is what is new
    two = [p for p in held if p not in binding]
    two = [two[i] for i in rng.permutation(len(two))]
    two += [(b, a) for a, b in binding[: max(0, per_category - len(two))]]  # the other order
    for a, b in two[:per_category]:
        add(caption_two(a, b), [a[1], b[1]], "two")
    for a, b in binding:
        add(caption_two(a, b), [a[1], b[1]], "binding")
    counts = [(n, c, s) for n in NUMBERS.values() for s in SHAPES for c in COLOURS if is_heldout_count(n, c, s)]
    for i in rng.permutation(len(counts))[:per_category]:
        n, c, s = counts[i]
        add(caption_count(n, c, s), [plural(s)], "count")
    for j, i in enumerate(rng.permutation(len(held))[:per_category]):
        a, b = held[i]
        add(caption_relation(a, RELATIONS[j % len(RELATIONS)], b), [a[1], b[1]], "relation")
    return rows


def write_prompt_files(folder=None) -> None:
    """(Re)write conf/prompts/shapes.jsonl and shapes_smoke.jsonl (one prompt per category)."""
    import json
    from pathlib import Path

    folder = Path(folder) if folder else Path(__file__).resolve().parents[1] / "conf" / "prompts"
    rows = evaluation_prompts()
    smoke = [next(r for r in rows if r["category"] == c) for c in dict.fromkeys(r["category"] for r in rows)]
    (folder / "shapes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "shapes_smoke.jsonl").write_text("".join(json.dumps(r) + "\n" for r in smoke), encoding="utf-8")
