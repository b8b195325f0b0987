"""The shapes world: rendering, captions, the held-out split and the evaluation prompt files."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from asyndm.shapes_world import (COLOURS, SHAPES, Obj, evaluation_prompts, is_heldout_count, is_heldout_pair,
                                 parse_prompt, render, sample_scene, shape_mask, training_batch)

CONF = Path(__file__).resolve().parents[1] / "conf" / "prompts"


def test_render_paints_exact_colours_on_white():
    image = render([Obj("square", "red", 16, 16, 5)])
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert tuple(image[16, 16]) == COLOURS["red"]
    assert tuple(image[0, 0]) == (255, 255, 255)
    colours = {tuple(p) for p in image.reshape(-1, 3)}
    assert colours == {(255, 255, 255), COLOURS["red"]}


def test_shape_masks_have_their_areas():
    # hand-worked: a square of half-side 0.9·r (r = 10: 18×18 pixel centres), a circle ≈ π·r²,
    # a triangle of base 2r and height 2r ≈ 2·r²
    assert shape_mask("square", 16, 16, 10).sum() == 18 * 18
    assert abs(shape_mask("circle", 16, 16, 10).sum() - np.pi * 100) < 10
    assert abs(shape_mask("triangle", 16, 16, 10).sum() - 2 * 10 * 10) < 12  # base 2r, height 2r
    top, bottom = shape_mask("triangle", 16, 16, 10)[:16].sum(), shape_mask("triangle", 16, 16, 10)[16:].sum()
    assert top < bottom / 2  # apex up


def test_scenes_match_their_captions():
    rng = np.random.default_rng(0)
    for category in ("single", "two", "count", "relation"):
        for _ in range(30):
            objects, caption, cat = sample_scene(rng, category)
            assert cat == category
            wanted = parse_prompt(caption)
            named = Counter({(c, s): n for c, s, n in wanted.objects})
            assert Counter((o.colour, o.shape) for o in objects) == named
            if wanted.relation:
                a, b = objects
                dx, dy = b.cx - a.cx, b.cy - a.cy
                expected = {"above": dy, "below": -dy, "to the left of": dx, "to the right of": -dx}[wanted.relation]
                assert expected >= 6


def test_training_batch_is_deterministic_and_in_range():
    x1, c1 = training_batch(np.random.default_rng([0, 5]), 8)
    x2, c2 = training_batch(np.random.default_rng([0, 5]), 8)
    assert c1 == c2 and np.array_equal(x1, x2)
    assert x1.shape == (8, 3, 32, 32) and x1.min() >= -1 and x1.max() == 1


def test_training_never_names_a_heldout_combination():
    rng = np.random.default_rng(1)
    for _ in range(400):
        objects, caption, category = sample_scene(rng)
        wanted = parse_prompt(caption)
        if len(wanted.objects) == 2:
            (ca, sa, _), (cb, sb, _) = wanted.objects
            assert not is_heldout_pair((ca, sa), (cb, sb)), caption
        elif wanted.objects[0][2] > 1:
            c, s, n = wanted.objects[0]
            assert not is_heldout_count(n, c, s), caption


def test_evaluation_prompts_are_heldout_and_balanced():
    rows = evaluation_prompts()
    assert len(rows) == 40 and len({r["prompt"] for r in rows}) == 40
    assert Counter(r["category"] for r in rows) == {c: 8 for c in ("single", "two", "count", "relation", "binding")}
    for row in rows:
        wanted = parse_prompt(row["prompt"])
        for item in row["items"]:
            assert item in row["prompt"].split()
        if row["category"] in ("two", "relation", "binding"):
            (ca, sa, _), (cb, sb, _) = wanted.objects
            assert is_heldout_pair((ca, sa), (cb, sb))
        if row["category"] == "binding":  # its colour swap was seen in training
            (ca, sa, _), (cb, sb, _) = wanted.objects
            assert ca != cb and not is_heldout_pair((cb, sa), (ca, sb))
        if row["category"] == "count":
            c, s, n = wanted.objects[0]
            assert n > 1 and is_heldout_count(n, c, s)


def test_prompt_files_are_generated_from_the_world():
    rows = evaluation_prompts()
    on_disk = [json.loads(line) for line in (CONF / "shapes.jsonl").read_text().splitlines() if line.strip()]
    assert on_disk == rows
    smoke = [json.loads(line) for line in (CONF / "shapes_smoke.jsonl").read_text().splitlines() if line.strip()]
    assert [r["category"] for r in smoke] == ["single", "two", "binding", "count", "relation"]
    assert all(r in rows for r in smoke)


def test_parse_prompt():
    assert parse_prompt("a red circle").objects == (("red", "circle", 1),)
    assert parse_prompt("three blue squares").objects == (("blue", "square", 3),)
    c = parse_prompt("a red circle to the left of a blue triangle")
    assert c.relation == "to the left of" and c.objects == (("red", "circle", 1), ("blue", "triangle", 1))
    assert parse_prompt("a green square and a yellow circle").relation is None
    with pytest.raises(ValueError, match="purple"):
        parse_prompt("a purple circle")
    with pytest.raises(ValueError):
        parse_prompt("a photo of a cat")
    assert set(SHAPES) == {"circle", "square", "triangle"}
