import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from omegaconf import OmegaConf
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


ALL_VARIANTS = ("asyndm+cfgpp", "zsampling", "dm", "attend_excite", "seg", "asyndm", "scfg", "cfgpp")


def test_every_variant_side_by_side_with_its_paired_difference(tmp_path):
    """The baselines and a composed variant: summary.csv, sweep_summary.csv, the wandb table and the
    report's grid list every variant (dm first, then the paper's, the baselines, composed ones), each
    with its paired difference from dm, and the masks of both variants on asyndm's schedule."""
    from asyndm.sweep import sweep_summary, write_status
    from evaluation.io import grid_columns, read_manifest
    from evaluation.wandb_logger import image_table_rows, summary_metrics

    run = make_fake_run(tmp_path / "sweep" / "job", seeds=(0, 1, 2), variants=ALL_VARIANTS)
    manifest = pd.read_csv(run / "manifest.csv", keep_default_na=False)
    gain = {v: 0.01 * i for i, v in enumerate(sorted(ALL_VARIANTS))}
    gain["dm"] = 0.0
    results = manifest[["image_idx", "prompt_idx", "prompt", "category", "seed", "variant"]].assign(
        metric="clip/cosine_raw", value=0.3 + manifest["variant"].map(gain) + 0.001 * manifest["image_idx"])
    summary = summarize(results)
    order = ["dm", "asyndm", "attend_excite", "cfgpp", "scfg", "seg", "zsampling", "asyndm+cfgpp"]
    assert list(summary["variant"]) == order
    for row in summary[summary.variant != "dm"].itertuples():
        assert row.n_pairs == 6 and row.diff_vs_dm_mean == pytest.approx(gain[row.variant]), row.variant
    atomic_write_csv(results, run / "results.csv")
    atomic_write_csv(summary, run / "summary.csv")

    columns = grid_columns(run, read_manifest(run))
    assert [title for title, _, _ in columns] == [*order, "mask", "asyndm+cfgpp mask"]
    names, image_columns, rows = image_table_rows(run, results, limit=10)
    assert image_columns == [*order, "mask", "asyndm+cfgpp mask"]
    assert dict(zip(names, rows[0]))["asyndm+cfgpp mask"].endswith("masks/00000_asyndm+cfgpp.png")
    assert summary_metrics(summary)["cfgpp/clip/cosine_raw/diff_vs_dm_mean"] == pytest.approx(gain["cfgpp"])

    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(["experiment=table1_animal", "baselines=true"]), run / ".hydra" / "overrides.yaml")
    write_status(run / "status.json", "completed")
    table = sweep_summary(tmp_path / "sweep")
    assert list(table["variant"]) == order and table["diff_vs_dm_mean"].notna().sum() == len(order) - 1

    assert main([str(run)]) == 0
    with Image.open(run / "report" / "grid.png") as grid:
        assert grid.width > 2.3 * 100 * len(columns) * 0.9  # one column per variant and mask
    page = (run / "report.html").read_text()
    assert all(v in page for v in order)
