"""scripts/toy_mask_quality.py: its scores on exact ground truth, and an end-to-end run on the toy model."""

import importlib.util
from pathlib import Path

import numpy as np

from asyndm.shapes_world import Obj, render
from evaluation.shapes import colour_labels

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "toy_mask_quality.py"


def _script():
    spec = importlib.util.spec_from_file_location("toy_mask_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_map_on_the_object_scores_one_and_a_map_beside_it_zero():
    script = _script()
    labels = colour_labels(render([Obj("square", "red", 8.0, 8.0, 4.0)]))
    cells = script.object_cells(labels, "red", (16, 16))
    assert 0 < cells.sum() < 40 and cells[4, 4] and not cells[12, 12]
    on = script.map_scores(cells.astype(float) + 0.01, cells, threshold=1.0)
    assert on["peak_inside"] == 1 and on["precision"] == 1 and on["coverage"] == 1
    assert on["chance"] == cells.mean() and on["area"] == cells.mean()
    beside = script.map_scores(np.roll(cells, 8, axis=0).astype(float) + 0.01, cells, threshold=1.0)
    assert beside["peak_inside"] == 0 and beside["precision"] == 0 and beside["coverage"] == 0
    assert not script.object_cells(labels, "blue", (16, 16)).any()
    flat = script.map_scores(np.ones((16, 16)), cells, threshold=2.0)  # nothing above twice the mean
    assert flat["empty"] == 1 and np.isnan(flat["precision"]) and flat["coverage"] == 0


def test_runs_on_the_shipped_toy_model(tmp_path, capsys):
    out = tmp_path / "quality.csv"
    summary = _script().main(["--seeds", "1", "--steps", "2", "--categories", "single", "--out", str(out)])
    assert out.is_file() and set(summary.variant) == {"dm", "asyndm"} and set(summary.step) == {0, 1}
    assert summary[["peak_inside", "precision", "empty", "coverage", "area", "chance"]].stack().between(0, 1).all()
    assert "precision" in capsys.readouterr().out
