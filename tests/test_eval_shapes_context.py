"""The exact context evaluator on rendered ground truth: right prompts score 1, contradicting ones 0,
and its ground-truth masks equal the scene's."""

import math

import numpy as np
import pytest
from PIL import Image

from asyndm.context_world import (CATEGORIES, RELATIONS, ContextScene, Structure, parse_context_prompt,
                                  render_scene, sample_context_scene, scene_masks)
from asyndm.shapes_world import COLOURS, SHAPES, Obj, render
from evaluation import registry
from evaluation.shapes_context import (METRICS, ShapesContextScore, detect_scene, ground_truth_masks,
                                       score_scene)

OPPOSITE = {"above": "below", "below": "above", "inside": "outside", "outside": "inside"}
OTHER_KIND = {"band": "inside the {} frame", "frame": "on the {} half", "half": "above the {} band"}


def _scenes(n, seed=0):
    rng = np.random.default_rng(seed)
    kinds = [*CATEGORIES, "structure"]
    return [sample_context_scene(rng, kinds[i % len(kinds)], train=False) for i in range(n)]


def _image(scene: ContextScene) -> Image.Image:
    return Image.fromarray(render_scene(scene.structure, scene.objects))


def test_ground_truth_scores_exactly():
    scenes = _scenes(300)
    scores = ShapesContextScore().score([_image(s) for s in scenes], [s.caption for s in scenes])
    for name in METRICS:
        values = [v for v in scores[name] if not math.isnan(v)]
        assert values and np.mean(values) == 1.0, name
    asked = [not math.isnan(v) for v in scores["context/relation"]]
    assert asked == [s.category != "structure" for s in scenes]


def _wrong_prompts(caption):
    """Prompts that contradict the scene of `caption`: another object colour or shape, another
    structure colour or kind, the opposite relation."""
    wanted = parse_context_prompt(caption)
    colour, shape = wanted.obj
    other_colour = next(c for c in COLOURS if c not in (colour, wanted.structure_colour))
    other_shape = next(s for s in SHAPES if s != shape)
    tail = f" {wanted.relation} the {wanted.structure_colour} {wanted.kind}"
    wrong = [f"a {other_colour} {shape}{tail}", f"a {colour} {other_shape}{tail}",
             f"a {colour} {shape} {wanted.relation} the {other_colour} {wanted.kind}",
             f"a {colour} {shape} " + OTHER_KIND[wanted.kind].format(wanted.structure_colour)]
    if wanted.relation in OPPOSITE:
        wrong.append(caption.replace(f" {wanted.relation} ", f" {OPPOSITE[wanted.relation]} "))
    return wrong


def test_wrong_prompts_score_zero():
    evaluator = ShapesContextScore()
    for scene in _scenes(100, seed=1):
        if scene.category == "structure":
            continue
        wrong = _wrong_prompts(scene.caption)
        scores = evaluator.score([_image(scene)] * len(wrong), wrong)
        assert scores["context/exact"] == [0.0] * len(wrong), (scene.caption, wrong)


def test_hand_worked_aspects():
    band = Structure("band", "blue", 0, 20, 32, 26)
    above = render_scene(band, [Obj("circle", "red", 10, 8, 5)])
    scene = detect_scene(above)
    assert [(o.colour, o.kind) for o in scene.objects] == [("red", "circle")]
    assert [(s.colour, s.kind) for s in scene.structures] == [("blue", "band")]
    right = score_scene(scene, "a red circle above the blue band")
    assert set(right.values()) == {1.0} and list(right) == METRICS
    below = score_scene(scene, "a red circle below the blue band")
    assert below["context/relation"] == 0.0 and below["context/structure"] == 1.0 and below["context/exact"] == 0.0
    # no structure: the object alone is right, the structure and the relation are not
    alone = score_scene(detect_scene(render([Obj("circle", "red", 10, 8, 5)])), "a red circle above the blue band")
    assert alone["context/count"] == 1.0 and alone["context/structure"] == 0.0 and alone["context/relation"] == 0.0
    # an extra object breaks count, not presence or the relation
    extra = score_scene(detect_scene(render_scene(band, [Obj("circle", "red", 10, 8, 5), Obj("square", "green", 24, 8, 4)])),
                        "a red circle above the blue band")
    assert extra["context/presence"] == extra["context/relation"] == 1.0 and extra["context/count"] == 0.0
    # a band broken in two is no band: a 20-px piece (an unknown structure) and a 9-px one (an object)
    broken = render_scene(band, [Obj("circle", "red", 10, 8, 5)])
    broken[18:28, 20:23] = 255
    pieces = detect_scene(broken)
    assert [s.kind for s in pieces.structures] == ["unknown"] and len(pieces.objects) == 2
    scores = score_scene(pieces, "a red circle above the blue band")
    assert scores["context/structure"] == scores["context/relation"] == scores["context/exact"] == 0.0
    # the structure alone
    bare = score_scene(detect_scene(render_scene(band)), "the blue band")
    assert bare["context/exact"] == 1.0 and math.isnan(bare["context/presence"]) and bare["context/count"] == 1.0


def test_each_kind_is_recognised_and_filled_shapes_are_not_frames():
    frame = detect_scene(render_scene(Structure("frame", "yellow", 2, 2, 18, 18))).structures
    half = detect_scene(render_scene(Structure("half", "green", 0, 16, 32, 32))).structures
    assert [s.kind for s in frame] == ["frame"] and [s.kind for s in half] == ["half"]
    block = detect_scene(render_scene(Structure("band", "red", 2, 2, 18, 18)))  # a filled 16×16 square
    assert [o.kind for o in block.objects] == ["square"] and block.structures == []
    big = detect_scene(render_scene(Structure("band", "red", 2, 2, 24, 24)))  # 22×22: no kind, too long for an object
    assert [s.kind for s in big.structures] == ["unknown"] and big.objects == []


def test_larger_images_scale_to_the_same_scores():
    scene = sample_context_scene(np.random.default_rng(5), "inside", train=False)
    big = _image(scene).resize((128, 128), Image.NEAREST)
    assert ShapesContextScore().score([big], [scene.caption])["context/exact"] == [1.0]
    np.testing.assert_array_equal(ground_truth_masks(big, scene.caption, (32, 32)).objects,
                                  scene_masks(scene).objects)


@pytest.mark.parametrize("grid", [32, 16, 8])
def test_ground_truth_masks_equal_the_scenes(grid):
    for scene in _scenes(60, seed=2):
        from_image = ground_truth_masks(_image(scene), scene.caption, (grid, grid))
        from_scene = scene_masks(scene, (grid, grid))
        np.testing.assert_array_equal(from_image.objects, from_scene.objects)
        np.testing.assert_array_equal(from_image.structure, from_scene.structure)


def test_ground_truth_masks_follow_the_drawn_object_whatever_its_shape():
    image = render_scene(Structure("band", "blue", 0, 20, 32, 26), [Obj("square", "red", 10, 8, 4)])
    masks = ground_truth_masks(image, "a red circle above the blue band", (32, 32))  # drawn as a square
    assert masks.objects[0].sum() == 64 and masks.structure.sum() == 32 * 6


def test_registry_builds_it_and_the_config_composes():
    from hydra import compose, initialize_config_dir

    from asyndm.config import CONF_DIR, register_resolvers

    cls, kwargs = registry.resolve("shapes_context", {"evaluator": "shapes_context", "min_area": 6})
    assert cls is ShapesContextScore and kwargs == {"min_area": 6}
    assert registry.metric_names("shapes_context", {}) == METRICS and METRICS[0] == "context/exact"
    with pytest.raises(ValueError, match="prompts"):
        ShapesContextScore().score([Image.new("RGB", (32, 32))], [])
    with pytest.raises(ValueError, match="cannot parse"):
        ShapesContextScore().score([Image.new("RGB", (32, 32))], ["a red circle"])
    register_resolvers()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["eval=[shapes_context]"])
    assert dict(cfg.eval.shapes_context) == {"evaluator": "shapes_context", "min_area": 6}
    assert set(RELATIONS) == set(CATEGORIES)
