"""The exact shapes evaluator on rendered ground truth: right prompts score 1, wrong ones 0."""

import math

import numpy as np
import pytest
from PIL import Image

from asyndm.shapes_world import COLOURS, NUMBERS, SHAPES, Obj, parse_prompt, render, sample_scene
from evaluation import registry
from evaluation.shapes import METRICS, ShapesScore, detect, score_image

OPPOSITE = {"above": "below", "below": "above", "to the left of": "to the right of",
            "to the right of": "to the left of"}


def _scenes(n, seed=0):
    rng = np.random.default_rng(seed)
    cats = ["single", "two", "count", "relation"]
    return [sample_scene(rng, cats[i % 4], train=False) for i in range(n)]


def test_ground_truth_scores_exactly():
    scenes = _scenes(400)
    images = [Image.fromarray(render(objects)) for objects, _, _ in scenes]
    scores = ShapesScore().score(images, [caption for _, caption, _ in scenes])
    assert np.mean(scores["shapes/exact"]) >= 0.99
    for name in ("shapes/presence", "shapes/colour", "shapes/count"):
        assert np.mean(scores[name]) >= 0.99
    relation = [v for v in scores["shapes/relation"] if not math.isnan(v)]
    assert len(relation) == 100 and np.mean(relation) >= 0.99


def _wrong_prompts(caption):
    """Prompts that contradict the scene of `caption`: another colour, shape, count or relation."""
    wanted = parse_prompt(caption)
    c, s, n = wanted.objects[0]
    other_colour = next(x for x in COLOURS if x != c)
    other_shape = next(x for x in SHAPES if x != s and all(x != o[1] for o in wanted.objects))
    words = caption.split(" ")
    wrong = [caption.replace(f"{c} {s}", f"{other_colour} {s}", 1),
             caption.replace(f"{c} {s}", f"{c} {other_shape}", 1)]
    if n > 1:
        other_n = next(w for w, v in NUMBERS.items() if v != n)
        wrong.append(" ".join([other_n] + words[1:]))
    if wanted.relation:
        wrong.append(caption.replace(wanted.relation, OPPOSITE[wanted.relation]))
    return wrong


def test_wrong_prompts_score_zero():
    evaluator = ShapesScore()
    for objects, caption, _ in _scenes(120, seed=1):
        image = Image.fromarray(render(objects))
        wrong = _wrong_prompts(caption)
        scores = evaluator.score([image] * len(wrong), wrong)
        assert scores["shapes/exact"] == [0.0] * len(wrong), (caption, wrong)


def test_hand_worked_relation_and_aspects():
    image = render([Obj("circle", "red", 16, 7, 5), Obj("square", "blue", 17, 24, 5)])
    objects = detect(image)
    assert sorted((o.colour, o.shape) for o in objects) == [("blue", "square"), ("red", "circle")]
    above = score_image(objects, "a red circle above a blue square")
    assert above == {"shapes/presence": 1.0, "shapes/colour": 1.0, "shapes/count": 1.0,
                     "shapes/relation": 1.0, "shapes/exact": 1.0}
    below = score_image(objects, "a red circle below a blue square")
    assert below["shapes/relation"] == 0.0 and below["shapes/exact"] == 0.0 and below["shapes/count"] == 1.0
    swapped = score_image(objects, "a blue circle and a red square")  # binding swap: shapes right, colours wrong
    assert swapped["shapes/presence"] == 1.0 and swapped["shapes/colour"] == 0.0
    assert math.isnan(swapped["shapes/relation"])
    extra = score_image(objects, "a red circle")  # an extra object breaks count, not presence
    assert extra["shapes/presence"] == 1.0 and extra["shapes/count"] == 0.0 and extra["shapes/exact"] == 0.0


def test_blank_and_speck_images_fail():
    blank = np.full((32, 32, 3), 255, np.uint8)
    assert score_image(detect(blank), "a red circle")["shapes/exact"] == 0.0
    speck = blank.copy()
    speck[3:5, 3:5] = COLOURS["red"]  # 4 pixels < min_area
    assert detect(speck) == []


def test_larger_images_scale_to_the_same_scores():
    image = Image.fromarray(render([Obj("triangle", "green", 10, 10, 6), Obj("circle", "yellow", 24, 24, 5)]))
    big = image.resize((128, 128), Image.NEAREST)
    prompt = "a green triangle to the left of a yellow circle"
    assert ShapesScore().score([big], [prompt])["shapes/exact"] == [1.0]


def test_registry_builds_it_and_names_the_metrics():
    cls, kwargs = registry.resolve("shapes", {"evaluator": "shapes", "min_area": 6, "relation_margin": 2.0})
    assert cls is ShapesScore and kwargs == {"min_area": 6, "relation_margin": 2.0}
    assert registry.metric_names("shapes", {}) == METRICS
    assert METRICS[0] == "shapes/exact"
    with pytest.raises(ValueError, match="prompts"):
        ShapesScore().score([Image.new("RGB", (32, 32))], [])


def test_eval_config_composes():
    from hydra import compose, initialize_config_dir

    from asyndm.config import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["eval=[shapes]"])
    assert dict(cfg.eval.shapes) == {"evaluator": "shapes", "min_area": 6, "relation_margin": 2.0}
