"""The toy-world analysis: toy_mask_quality on exact ground truth and end to end; the shapes oracle masks."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from asyndm.shapes_world import Obj, render
from evaluation.shapes import colour_cells, colour_labels

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _script(name: str = "toy_mask_quality"):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_map_on_the_object_scores_one_and_a_map_beside_it_zero():
    script = _script()
    labels = colour_labels(render([Obj("square", "red", 8.0, 8.0, 4.0)]))
    cells = colour_cells(labels, "red", (16, 16))
    assert 0 < cells.sum() < 40 and cells[4, 4] and not cells[12, 12]
    on = script.map_scores(cells.astype(float) + 0.01, cells, threshold=1.0)
    assert on["peak_inside"] == 1 and on["precision"] == 1 and on["coverage"] == 1
    assert on["chance"] == cells.mean() and on["area"] == cells.mean()
    beside = script.map_scores(np.roll(cells, 8, axis=0).astype(float) + 0.01, cells, threshold=1.0)
    assert beside["peak_inside"] == 0 and beside["precision"] == 0 and beside["coverage"] == 0
    assert not colour_cells(labels, "blue", (16, 16)).any()
    with pytest.raises(ValueError, match="does not divide"):
        colour_cells(labels, "red", (12, 12))
    flat = script.map_scores(np.ones((16, 16)), cells, threshold=2.0)  # nothing above twice the mean
    assert flat["empty"] == 1 and np.isnan(flat["precision"]) and flat["coverage"] == 0


def test_runs_on_the_shipped_toy_model(tmp_path, capsys):
    out = tmp_path / "quality.csv"
    summary = _script().main(["--seeds", "1", "--steps", "2", "--categories", "single", "--out", str(out)])
    assert out.is_file() and set(summary.variant) == {"dm", "asyndm"} and set(summary.step) == {0, 1}
    assert summary[["peak_inside", "precision", "empty", "coverage", "area", "chance"]].stack().between(0, 1).all()
    assert "precision" in capsys.readouterr().out


def test_shapes_oracle_masks_follow_the_painted_colours():
    from asyndm.prompts import PromptSpec
    from evaluation.shapes import oracle_assignment

    image = render([Obj("square", "red", 8.0, 8.0, 4.0), Obj("circle", "blue", 24.0, 24.0, 4.0)])
    prompt = "a red square and a blue circle"
    assignment = oracle_assignment(image, PromptSpec(0, prompt, ["square", "circle"], [0.5, 0.7]), (32, 32))
    labels = colour_labels(image)
    assert (assignment == 0).tolist() == (labels == 1).tolist()  # red is palette index 1
    assert (assignment == 1).sum() > 0 and (assignment == -1).sum() > 0.8 * 32 * 32
    same = render([Obj("square", "red", 8.0, 8.0, 4.0), Obj("circle", "red", 24.0, 24.0, 4.0)])
    shared = PromptSpec(0, "a red square and a red circle", ["square", "circle"], [0.5, 0.7])
    assert set(np.unique(oracle_assignment(same, shared, (32, 32))).tolist()) == {-1, 1}  # the larger k wins


def test_toy_grid_places_each_variant_and_the_mask_of_the_first_prompts_per_category(tmp_path):
    from PIL import Image

    from evaluation.offline.fake_run import make_fake_run

    prompts = ["a red circle", "a blue square", "a green circle", "two red circles"]
    run = make_fake_run(tmp_path / "run", prompts=prompts, categories=["single", "single", "single", "count"],
                        seeds=(7, 8))
    grid = _script("toy_grid").toy_grid(run, per_category=2, scale=2, label=10)
    assert grid.size == (4 * 64, 10 + 3 * (10 + 64))  # 2 single + 1 count rows, 4 columns
    first = Image.open(run / "images" / "00000_dm_concave.png").convert("RGB").resize((64, 64), Image.NEAREST)
    assert grid.crop((64, 20, 128, 84)).tobytes() == first.tobytes()  # row 0 (seed 7), column dm_concave
    mask = Image.open(run / "masks" / "00002_asyndm.png").convert("RGB").resize((64, 64), Image.NEAREST)
    assert grid.crop((192, 94, 256, 158)).tobytes() == mask.tobytes()  # row 1: prompt 1 at seed 7 (image 2)
