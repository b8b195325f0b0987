"""report.html as a reader sees it: rendered by headless Chromium, checked on the screenshot.

Needs a Chromium on PATH; skipped otherwise. On Debian/Ubuntu: `apt-get install chromium` (the
package is `chromium`; the snap-only `chromium-browser` of recent Ubuntu also works). The same
rendering by hand: `asyndm-report <run> --screenshot report.png`.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from asyndm.run_folder import write_table
from evaluation.offline.fake_run import make_fake_run
from evaluation.report import build_report, find_chromium, main, screenshot
from evaluation.summary import summarize

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no Chromium on PATH (Debian/Ubuntu: apt-get install chromium)")

HEADER = (0xDD, 0xE6, 0xF0)  # table.metric th background in report.py's STYLE
ASYNDM_RED = (0xD6, 0x27, 0x28)  # asyndm's colour in the figures


def _bands(mask_rows: np.ndarray) -> int:
    """How many separate runs of True rows."""
    return int(np.sum(mask_rows[1:] & ~mask_rows[:-1]) + mask_rows[0])


def _scored_run(tmp_path):
    run = make_fake_run(tmp_path / "run", prompts=["a red circle", "a blue square above a red circle"],
                        categories=["single", "relation"], seeds=tuple(range(4)), size=48,
                        config={"curve": {"name": "bin"}, "sample": {"steps": 10}})
    manifest = pd.read_csv(run / "manifest.csv", keep_default_na=False)
    base = manifest[["image_idx", "prompt_idx", "prompt", "category", "seed", "variant"]]
    rng = np.random.default_rng(0)
    results = pd.concat([
        base.assign(metric="shapes/exact", value=(rng.random(len(base)) < 0.8).astype(float)),
        base.assign(metric="clip/cosine_raw", value=0.33 + 0.01 * rng.standard_normal(len(base)))],
        ignore_index=True)
    write_table(run / "results.csv", results)
    write_table(run / "summary.csv", summarize(results))
    return run


def test_report_renders_tables_and_figures_in_chromium(tmp_path):
    run = _scored_run(tmp_path)
    page = build_report(run)
    shot = np.asarray(Image.open(screenshot(page, tmp_path / "report.png", width=1280, height=3200)).convert("RGB"))
    assert shot.shape == (3200, 1280, 3)
    # Two metric tables: two header bands of the header colour, each as wide as a table (CSS
    # applied, laid out as tables; header text leaves fewer coloured pixels in some rows)
    header_pixels = np.all(shot == HEADER, axis=2).sum(axis=1)
    assert _bands(header_pixels > 100) == 2
    assert header_pixels.max() > 400
    # The embedded figures were decoded and drawn: asyndm's red appears in them
    red = np.all(np.abs(shot.astype(int) - ASYNDM_RED) <= 8, axis=2)
    assert red.sum() > 500
    # Nothing is wider than the page's column (1100 px centred in 1280): the right margin is blank
    assert (shot[:, 1200:] >= 250).all()


def test_report_command_writes_a_screenshot(tmp_path):
    """The documented command: asyndm-report <run> --screenshot report.png."""
    run = _scored_run(tmp_path)
    assert main([str(run), "--screenshot", str(tmp_path / "shot.png")]) == 0
    with Image.open(tmp_path / "shot.png") as im:
        assert im.size == (1280, 3000)
        colours = np.asarray(im.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(colours[::97], axis=0)) > 50  # a page, not a blank or error screen
