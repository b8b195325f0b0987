import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import html

import numpy as np
import pytest
from omegaconf import OmegaConf
import pandas as pd
from PIL import Image

from evaluation.offline.fake_run import make_fake_run
from asyndm.run_folder import write_table
from evaluation.report import build_report, find_runs, main
from evaluation.summary import summarize


def _score(run, shift):
    manifest = pd.read_csv(run / "manifest.csv", keep_default_na=False)
    gain = manifest["variant"].map({"dm": 0.0, "dm_concave": 0.01, "asyndm": 0.03}).fillna(0.02) + shift
    results = manifest[["image_idx", "prompt_idx", "prompt", "category", "seed", "variant"]].assign(
        metric="clip/cosine_raw", value=0.33 + gain + 0.005 * np.sin(manifest["image_idx"]))
    write_table(run / "results.csv", results)
    write_table(run / "summary.csv", summarize(results))


def test_single_run_report(tmp_path):
    run = make_fake_run(tmp_path / "run", seeds=(0, 1, 2), size=64)
    _score(run, 0.0)
    assert main([str(run)]) == 0
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64") == 4
    for name in ("metrics.png", "paired_vs_dm.png", "timesteps.png", "grid.png"):
        with Image.open(run / "report" / name) as im:
            assert im.width > 200 and im.height > 100
    assert "<pre>" not in page  # tables, not a fixed-width text dump
    tables = _tables(page)
    assert list(tables) == ["clip/cosine_raw"]
    head, rows = tables["clip/cosine_raw"]
    assert head == ["variant", "n", "mean [95% CI, Student t]", "n pairs", "vs dm [95% CI, Student t]"]
    assert [r[0] for r in rows] == ["dm", "dm_concave", "asyndm"]
    summary = pd.read_csv(run / "summary.csv")
    asyndm = summary[summary.variant == "asyndm"].iloc[0]
    assert rows[2][2] == f"{asyndm['mean']:.4f} [{asyndm['ci95_low']:.4f}, {asyndm['ci95_high']:.4f}]"


def _tables(page):
    """{caption: (header cells, rows of cells)} of the page's metric tables."""
    import re

    def cells(text, tag):
        return [html.unescape(c) for c in re.findall(rf"<{tag}[^>]*>(.*?)</{tag}>", text)]

    tables = {}
    for caption, head, body in re.findall(r"<table class='metric'><caption>(.*?)</caption><thead><tr>(.*?)</tr>"
                                          r"</thead><tbody>(.*?)</tbody></table>", page):
        rows = [cells(row, "td") for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body)]
        tables[html.unescape(caption)] = (cells(head, "th"), rows)
    return tables


def test_proportions_get_wilson_and_empty_categories_no_rows(tmp_path):
    """shapes/exact (0/1) gets Wilson intervals inside [0, 1] and a paired bootstrap; shapes/relation
    only applies to the 'relation' prompts, so with --categories its 'single' rows are left out."""
    run = make_fake_run(tmp_path / "run", prompts=["a red circle", "a circle above a square"],
                        categories=["single", "relation"], seeds=tuple(range(8)))
    manifest = pd.read_csv(run / "manifest.csv", keep_default_na=False)
    base = manifest[["image_idx", "prompt_idx", "prompt", "category", "seed", "variant"]]
    exact = np.where(manifest["seed"] == 0, 0.0, 1.0)  # 15 of 16 right per variant: t would pass 1
    relation = np.where(manifest["category"] == "relation", 1.0, np.nan)
    results = pd.concat([base.assign(metric="shapes/exact", value=exact),
                         base.assign(metric="shapes/relation", value=relation)], ignore_index=True)
    write_table(run / "results.csv", results)
    write_table(run / "summary.csv", summarize(results))
    assert main([str(run), "--categories"]) == 0
    tables = _tables((run / "report.html").read_text())
    head, rows = tables["shapes/exact"]
    assert head[3] == "mean [95% CI, Wilson]" and head[5] == "vs dm [95% CI, paired bootstrap]"
    for row in rows:
        low, high = (float(v) for v in row[3].split("[")[1].rstrip("]").split(","))
        assert 0.0 <= low and high <= 1.0
    assert {r[0] for r in rows} == {"all", "single", "relation"}
    _, relation_rows = tables["shapes/relation"]
    assert {r[0] for r in relation_rows} == {"all", "relation"}  # no empty 'single' rows


def test_sweep_report_compares_curves(tmp_path):
    for curve, shift in (("bin", 0.0), ("lin", 0.01)):
        run = make_fake_run(tmp_path / "sweep" / curve, config={"curve": {"name": curve}})
        _score(run, shift)
    make_fake_run(tmp_path / "sweep" / "unscored", config={"curve": {"name": "exp"}}, timesteps=False)
    assert len(find_runs(tmp_path / "sweep")) == 3
    page = (build_report(tmp_path / "sweep")).read_text()
    assert "Run bin" in page and "Run lin" in page and "No metrics were computed for this run" in page
    assert sorted(p.name for p in (tmp_path / "sweep" / "report").glob("grid_*.png")) == [
        "grid_00.png", "grid_01.png", "grid_02.png"]
    head, rows = _tables(page)["clip/cosine_raw"]
    assert head[0] == "run" and [r[0] for r in rows] == ["bin"] * 3 + ["lin"] * 3
    assert (tmp_path / "sweep" / "report" / "timesteps.png").is_file()
    assert "No timesteps.csv in exp" in page  # the older folder: a note instead of a panel


def test_unscored_run_gets_grid_and_timesteps_only(tmp_path):
    run = make_fake_run(tmp_path / "run", masks=False)
    page = build_report(run).read_text()
    assert "No metrics were computed" in page
    assert page.count("data:image/png;base64") == 2  # the timestep panel and the grid
    assert not (run / "report" / "metrics.png").exists()


def test_any_registered_variant_is_reported(tmp_path):
    """A run with a variant beyond the paper's three (and one no registry knows) gets its columns,
    rows and grid column; known variants come first."""
    from evaluation.report import grid_columns
    from evaluation.io import read_manifest

    run = make_fake_run(tmp_path / "run", variants=("zz_baseline", "asyndm", "dm"))
    _score(run, 0.0)
    assert [c for c, _ in grid_columns(run, read_manifest(run))] == ["dm", "asyndm", "zz_baseline", "mask"]
    page = build_report(run).read_text()
    _, rows = _tables(page)["clip/cosine_raw"]
    assert [r[0] for r in rows] == ["dm", "asyndm", "zz_baseline"]


def test_report_with_nan_metric_values(tmp_path):
    """Metrics that do not apply to a prompt are NaN in results.csv (shapes/relation); the grid
    still renders and shows the exact score."""
    run = make_fake_run(tmp_path / "run", seeds=(0, 1))
    manifest = pd.read_csv(run / "manifest.csv", keep_default_na=False)
    base = manifest[["image_idx", "prompt_idx", "prompt", "category", "seed", "variant"]]
    results = pd.concat([base.assign(metric="shapes/exact", value=1.0),
                         base.assign(metric="shapes/relation", value=np.nan)], ignore_index=True)
    write_table(run / "results.csv", results)
    write_table(run / "summary.csv", summarize(results))
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
    write_table(run / "results.csv", results)
    write_table(run / "summary.csv", summary)

    columns = grid_columns(run, read_manifest(run))
    assert [title for title, _ in columns] == [*order, "mask", "asyndm+cfgpp mask"]
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
def test_sweep_jobs_are_labelled_by_the_overrides_that_differ(tmp_path):
    from evaluation.report import run_labels

    sweep = tmp_path / "table2"
    runs = [make_fake_run(sweep / f"curve={c},experiment=table2,mask={m},smoke=tiny", config={"curve": {"name": c}},
                          timesteps=False) for c in ("bin", "lin") for m in ("dynamic", "static")]
    assert list(run_labels(runs).values()) == ["curve=bin, mask=dynamic", "curve=bin, mask=static",
                                               "curve=lin, mask=dynamic", "curve=lin, mask=static"]
    assert list(run_labels(runs[::2]).values()) == ["bin", "lin"]  # one run per curve: the curve


def test_a_missing_or_empty_folder_is_refused_in_one_line(tmp_path, capsys):
    from evaluation.report import main

    for folder, says in ((tmp_path / "nowhere", "is not a folder"), (tmp_path, "no run folder")):
        assert main([str(folder)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("asyndm-report: error:") and says in err and len(err.strip().splitlines()) == 1
