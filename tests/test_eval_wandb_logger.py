import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
from omegaconf import OmegaConf

from evaluation.offline.fake_run import make_fake_run
from evaluation.summary import summarize
from evaluation.wandb_logger import WANDB_DIR_VARS, image_table_rows, log_run, resolve_mode, summary_metrics


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in WANDB_DIR_VARS:
        monkeypatch.delenv(var, raising=False)
    return home


def _results(run):
    manifest = pd.read_csv(run / "manifest.csv", keep_default_na=False)
    results = manifest[["image_idx", "prompt_idx", "prompt", "category", "seed", "variant"]].assign(
        metric="clip/cosine_raw", value=[0.3 + 0.01 * i for i in range(len(manifest))])
    return results


def test_resolve_mode():
    assert resolve_mode("offline", {}) == "offline"
    assert resolve_mode("offline", {"WANDB_API_KEY": "x"}) == "online"
    assert resolve_mode("offline", {"WANDB_MODE": "disabled", "WANDB_API_KEY": "x"}) == "disabled"
    assert resolve_mode("online", {"WANDB_MODE": "offline"}) == "online"


def test_table_rows_pair_variants_and_masks(tmp_path):
    run = make_fake_run(tmp_path / "run", seeds=(5, 6))
    results = _results(run)
    columns, image_columns, rows = image_table_rows(run, results, limit=10)
    assert image_columns == ["dm", "dm_concave", "asyndm", "mask"]
    assert len(rows) == 4
    row = dict(zip(columns, rows[1]))  # prompt 0, seed 6: image_idx 1
    assert row["seed"] == 6 and row["dm"].endswith("images/00001_dm.png")
    assert row["mask"].endswith("masks/00001_asyndm.png")
    assert row["asyndm/clip/cosine_raw"] == pytest.approx(0.3 + 0.01 * 5)  # manifest row 5


def test_offline_run_stays_in_run_folder(tmp_path, fake_home):
    run = make_fake_run(tmp_path / "run", config={"logger": {"name": "wandb", "project": "t", "mode": "offline"}})
    results = _results(run)
    summary = summarize(results)
    assert summary_metrics(summary)["asyndm/clip/cosine_raw/mean"] == pytest.approx(
        results[results.variant == "asyndm"]["value"].mean())
    with _no_warning():  # a wandb failure would only warn; make it fail the test
        assert log_run(run, OmegaConf.load(run / "config.yaml"), summary, results, name="job-1") is True
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
    assert not (fake_home / ".cache" / "wandb").exists()
    assert not (fake_home / ".local" / "share" / "wandb").exists()
    assert not (fake_home / ".config" / "wandb").exists()
    assert all(var not in os.environ for var in WANDB_DIR_VARS)  # environment restored


def test_wandb_failure_is_a_warning(tmp_path, fake_home, monkeypatch):
    import wandb

    run = make_fake_run(tmp_path / "run")

    def broken(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken)
    with pytest.warns(UserWarning, match="no network"):
        assert log_run(run, OmegaConf.load(run / "config.yaml")) is False


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", UserWarning)

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
