"""The context world: rendering, captions, the held-out split, training batches, prompt files and
ground-truth masks."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from asyndm.context_world import (CATEGORIES, KINDS, RELATIONS, ContextScene, Structure, all_combinations,
                                  context_evaluation_prompts, is_context_prompt, is_heldout_context,
                                  mixed_training_batch, parse_context_prompt, pixel_cells, render_scene,
                                  sample_context_scene, scene_masks, structure_mask)
from asyndm.shapes_world import COLOURS, SHAPES, Obj, shape_mask, training_batch

CONF = Path(__file__).resolve().parents[1] / "conf" / "prompts"


def test_structures_have_their_areas():
    band = Structure("band", "blue", 0, 10, 32, 16)
    assert structure_mask(band).sum() == 32 * 6 and structure_mask(band)[10:16].all()
    frame = Structure("frame", "red", 4, 6, 24, 22)  # 20 × 16 outline, 2 px thick
    assert structure_mask(frame).sum() == 20 * 16 - 16 * 12
    assert not structure_mask(frame)[14, 14] and structure_mask(frame)[6, 4]
    half = Structure("half", "green", 16, 0, 32, 32)
    assert structure_mask(half).sum() == 512 and structure_mask(half)[:, 16:].all()
    assert structure_mask(band, size=64).sum() == 4 * 32 * 6  # larger images: the same geometry
    with pytest.raises(ValueError, match="stripe"):
        structure_mask(Structure("stripe", "red", 0, 0, 4, 4))


def test_render_paints_the_structure_then_the_object():
    scene = render_scene(Structure("half", "green", 0, 0, 16, 32), [Obj("circle", "red", 8, 16, 4)])
    assert tuple(scene[16, 8]) == COLOURS["red"] and tuple(scene[2, 2]) == COLOURS["green"]
    assert tuple(scene[2, 30]) == (255, 255, 255)
    assert {tuple(p) for p in scene.reshape(-1, 3)} == {(255, 255, 255), COLOURS["red"], COLOURS["green"]}


def _object_pixels(scene: ContextScene):
    obj = scene.objects[0]
    return np.nonzero(shape_mask(obj.shape, obj.cx, obj.cy, obj.r))


@pytest.mark.parametrize("category", [*CATEGORIES, "structure"])
def test_scenes_match_their_captions(category):
    rng = np.random.default_rng(0)
    for _ in range(60):
        scene = sample_context_scene(rng, category)
        wanted = parse_context_prompt(scene.caption)
        s = scene.structure
        assert scene.category == category and (wanted.kind, wanted.structure_colour) == (s.kind, s.colour)
        if category == "structure":
            assert scene.objects == () and wanted.obj is None
            continue
        obj = scene.objects[0]
        assert wanted.obj == (obj.colour, obj.shape) and wanted.relation == category and obj.colour != s.colour
        ys, xs = _object_pixels(scene)
        inside_box = (xs >= s.x0) & (xs < s.x1) & (ys >= s.y0) & (ys < s.y1)
        if category == "above":
            assert ys.max() + 2 < s.y0
        elif category == "below":
            assert ys.min() - 2 >= s.y1
        elif category == "inside":
            assert xs.min() >= s.x0 + 4 and xs.max() < s.x1 - 4 and ys.min() >= s.y0 + 4 and ys.max() < s.y1 - 4
        elif category == "outside":
            assert not inside_box.any()
        else:  # on the half, clear of its edges, so the object is enclosed by it
            assert inside_box.all() and xs.min() > s.x0 and ys.min() > s.y0 and xs.max() < s.x1 - 1 \
                and ys.max() < s.y1 - 1
        if category != "on":
            assert not (shape_mask(obj.shape, obj.cx, obj.cy, obj.r) & structure_mask(s)).any()


def test_training_never_names_a_heldout_combination_but_every_word():
    rng = np.random.default_rng(1)
    seen_objects, seen_structures = set(), set()
    for _ in range(1500):
        scene = sample_context_scene(rng)
        wanted = parse_context_prompt(scene.caption)
        seen_structures.add((wanted.kind, wanted.structure_colour))
        if wanted.obj is not None:
            assert not is_heldout_context(wanted.obj, wanted.kind, wanted.structure_colour), scene.caption
            seen_objects.add(wanted.obj)
    assert seen_objects == {(c, s) for c in COLOURS for s in SHAPES}
    assert seen_structures == {(k, c) for k in KINDS for c in COLOURS}
    held = [c for c in all_combinations() if is_heldout_context(*c)]
    assert len(all_combinations()) == 108 and len(held) == 34
    assert all(sum(c[1] == kind for c in held) >= 8 for kind in KINDS)  # 8 prompts per relation


def test_mixed_batches_keep_the_shapes_world_and_are_deterministic():
    plain = training_batch(np.random.default_rng([0, 5]), 8)
    same = mixed_training_batch(np.random.default_rng([0, 5]), 8, 0.0)
    assert plain[1] == same[1] and np.array_equal(plain[0], same[0])  # share 0: the shipped model's data
    x1, c1 = mixed_training_batch(np.random.default_rng([1, 7]), 8, 0.5)
    x2, c2 = mixed_training_batch(np.random.default_rng([1, 7]), 8, 0.5)
    assert c1 == c2 and np.array_equal(x1, x2)
    assert x1.shape == (8, 3, 32, 32) and x1.min() >= -1 and x1.max() == 1
    assert [is_context_prompt(c) for c in c1] == [False] * 4 + [True] * 4
    assert all(is_context_prompt(c) for c in mixed_training_batch(np.random.default_rng(2), 5, 1.0)[1])
    with pytest.raises(ValueError, match="context_share"):
        mixed_training_batch(np.random.default_rng(0), 4, 1.5)


def test_evaluation_prompts_are_heldout_balanced_and_items_are_the_objects():
    rows = context_evaluation_prompts()
    assert len(rows) == 40 and len({r["prompt"] for r in rows}) == 40
    assert Counter(r["category"] for r in rows) == {c: 8 for c in CATEGORIES}
    for row in rows:
        wanted = parse_context_prompt(row["prompt"])
        assert is_heldout_context(wanted.obj, wanted.kind, wanted.structure_colour)
        assert row["items"] == [wanted.obj[1]] and row["category"] == wanted.relation
        assert wanted.kind not in row["items"] and wanted.structure_colour not in row["items"]


def test_prompt_files_are_generated_from_the_world():
    from asyndm.prompts import load_prompts

    rows = context_evaluation_prompts()
    on_disk = [json.loads(line) for line in (CONF / "shapes_context.jsonl").read_text().splitlines() if line.strip()]
    assert on_disk == rows
    smoke = [json.loads(line) for line in (CONF / "shapes_context_smoke.jsonl").read_text().splitlines()]
    assert [r["category"] for r in smoke] == list(CATEGORIES) and all(r in rows for r in smoke)
    specs = load_prompts(CONF / "shapes_context.jsonl")  # the CLI's own validation: items are words
    assert [s.category for s in specs] == [r["category"] for r in rows]


def test_prompts_fit_the_toy_model_and_items_resolve_to_the_object_word():
    from asyndm.sources import load_tokenizer
    from asyndm.prompts import load_prompts
    from asyndm.tokens import item_token_positions, prompt_token_ids
    from asyndm.toy_model import TEXT_LENGTH

    tokenizer = load_tokenizer(str(Path(__file__).resolve().parents[1] / "models" / "toy"))  # the model's own
    rng = np.random.default_rng(4)
    captions = [sample_context_scene(rng).caption for _ in range(200)] + [r["prompt"] for r in context_evaluation_prompts()]
    assert max(len(tokenizer(c).input_ids) for c in captions) <= TEXT_LENGTH  # truncation would drop the structure
    for spec in load_prompts(CONF / "shapes_context.jsonl"):
        (positions,) = item_token_positions(tokenizer, spec.prompt, spec.items, spec.legacy_item_idx, "word")
        ids = prompt_token_ids(tokenizer, spec.prompt)
        assert tokenizer.decode([ids[p] for p in positions]).strip() == spec.items[0] and positions == [3]


def test_parse_context_prompt():
    c = parse_context_prompt("a red circle above the blue band")
    assert (c.obj, c.relation, c.kind, c.structure_colour) == (("red", "circle"), "above", "band", "blue")
    c = parse_context_prompt("the green half")
    assert (c.obj, c.relation, c.kind, c.structure_colour) == (None, None, "half", "green")
    assert set(RELATIONS.values()) == set(KINDS)
    with pytest.raises(ValueError, match="does not go with"):
        parse_context_prompt("a red circle inside the blue band")
    with pytest.raises(ValueError, match="purple"):
        parse_context_prompt("a red circle on the purple half")
    with pytest.raises(ValueError, match="cannot parse"):
        parse_context_prompt("a red circle above a blue square")
    assert not is_context_prompt("a red circle above a blue square") and is_context_prompt("the red frame")


def test_ground_truth_masks_of_a_hand_worked_scene():
    obj = Obj("square", "red", 8.0, 8.0, 4.0)  # pixel centres (x + 0.5) within 3.6 of 8: columns and rows 4..11
    scene = ContextScene(Structure("band", "blue", 0, 20, 32, 26), (obj,), "a red square above the blue band",
                         "above")
    full = scene_masks(scene)
    assert full.objects.shape == (1, 32, 32) and full.objects[0, 4:12, 4:12].all() and full.objects.sum() == 64
    assert full.structure.sum() == 32 * 6 and full.context.sum() == 1024 - 64
    assert (full.assignment() == 0).sum() == 64 and (full.assignment() == -1).sum() == 1024 - 64
    coarse = scene_masks(scene, (8, 8))  # 4-px cells: rows/columns 4..11 are cells 1 and 2
    assert coarse.objects[0].sum() == 4 and coarse.objects[0, 1:3, 1:3].all() and coarse.structure.sum() == 8 * 2
    # cells 20..26 → rows 5 and 6 (cell 6 holds rows 24..27, two of them band)
    assert coarse.structure[5:7].all()
    np.testing.assert_array_equal(pixel_cells(full.objects[0], (8, 8)), coarse.objects[0])
    with pytest.raises(ValueError, match="does not divide"):
        scene_masks(scene, (12, 12))


def test_on_the_half_the_object_cells_are_not_structure():
    rng = np.random.default_rng(3)
    scene = sample_context_scene(rng, "on")
    masks = scene_masks(scene, (16, 16))
    assert masks.objects[0].any() and not (masks.objects[0] & masks.structure).any()
    assert masks.structure.sum() + masks.objects[0].sum() == 128  # the half's 16×8 cells, all of them one or the other
