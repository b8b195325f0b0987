import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
from PIL import Image

from evaluation.offline.fake_run import make_fake_run
from evaluation.io import atomic_write_csv
from evaluation.report import build_report, find_runs, main
from evaluation.summary import summarize


def _score(run, shift):
    manifest = pd.read_csv(run / "manifest.csv", keep_default_na=False)
    gain = manifest["variant"].map({"dm": 0.0, "dm_concave": 0.01, "asyndm": 0.03}) + shift
    results = manifest[["image_idx", "prompt_idx", "prompt", "category", "seed", "variant"]].assign(
        metric="clip/cosine_raw", value=0.33 + gain + 0.005 * np.sin(manifest["image_idx"]))
    atomic_write_csv(results, run / "results.csv")
    atomic_write_csv(summarize(results), run / "summary.csv")


def test_single_run_report(tmp_path):
    run = make_fake_run(tmp_path / "run", seeds=(0, 1, 2), size=64)
    _score(run, 0.0)
    assert main([str(run)]) == 0
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64") == 3
    for name in ("metrics.png", "paired_vs_dm.png", "grid.png"):
        with Image.open(run / "report" / name) as im:
            assert im.width > 200 and im.height > 100


def test_sweep_report_compares_curves(tmp_path):
    for curve, shift in (("concave", 0.0), ("linear", 0.01)):
        run = make_fake_run(tmp_path / "sweep" / curve, config={"curve": {"name": curve}})
        _score(run, shift)
    make_fake_run(tmp_path / "sweep" / "unscored", config={"curve": {"name": "exp"}})
    assert len(find_runs(tmp_path / "sweep")) == 3
    page = (build_report(tmp_path / "sweep")).read_text()
    assert "Run concave" in page and "Run linear" in page and "No metrics were computed for this run" in page
    assert sorted(p.name for p in (tmp_path / "sweep" / "report").glob("grid_*.png")) == [
        "grid_00.png", "grid_01.png", "grid_02.png"]


def test_unscored_run_gets_grid_only(tmp_path):
    run = make_fake_run(tmp_path / "run", masks=False)
    page = build_report(run).read_text()
    assert "No metrics were computed" in page
    assert page.count("data:image/png;base64") == 1
    assert not (run / "report" / "metrics.png").exists()


def test_report_with_nan_metric_values(tmp_path):
    """Metrics that do not apply to a prompt are NaN in results.csv (shapes/relation); the grid
    still renders and shows the exact score."""
    run = make_fake_run(tmp_path / "run", seeds=(0, 1))
    manifest = pd.read_csv(run / "manifest.csv", keep_default_na=False)
    base = manifest[["image_idx", "prompt_idx", "prompt", "category", "seed", "variant"]]
    results = pd.concat([base.assign(metric="shapes/exact", value=1.0),
                         base.assign(metric="shapes/relation", value=np.nan)], ignore_index=True)
    atomic_write_csv(results, run / "results.csv")
    atomic_write_csv(summarize(results), run / "summary.csv")
    assert main([str(run)]) == 0
    assert (run / "report" / "grid.png").is_file()
