import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
import torch

from evaluation import registry
from evaluation.offline.fake_run import make_fake_run
from evaluation.scoring import score_run

torch.set_num_threads(1)


@registry.register("count_calls")
class CountCalls:
    """Scores an image by its mean red value; counts how many images it saw."""

    seen = 0

    def __init__(self, offset: float = 0.0, batch_size: int = 4):
        self.offset = offset

    @classmethod
    def metric_names(cls, **cfg):
        return ["test/red", "test/len"]

    def score(self, images, prompts):
        type(self).seen += len(images)
        return {"test/red": [float(sum(p[0] for p in im.getdata())) / (im.width * im.height) + self.offset
                             for im in images],
                "test/len": [float(len(p)) for p in prompts]}


@pytest.fixture
def run(tmp_path):
    return make_fake_run(tmp_path / "run", prompts=["a cat", "a dog eating", "None"], seeds=(3, 4))


def test_results_table_values_and_columns(run):
    results = score_run(run, {"count_calls": {}})
    assert list(results.columns) == ["image_idx", "prompt_idx", "prompt", "category", "seed", "variant", "metric", "value"]
    assert len(results) == 3 * 2 * 3 * 2  # prompts x seeds x variants x metrics
    manifest = pd.read_csv(run / "manifest.csv", keep_default_na=False)
    from PIL import Image
    import numpy as np
    row = manifest.iloc[7]
    expected = float(np.asarray(Image.open(run / row["file"]))[..., 0].mean())
    got = results[(results.image_idx == row.image_idx) & (results.variant == row.variant) & (results.metric == "test/red")]
    assert got["value"].item() == pytest.approx(expected)
    on_disk = pd.read_csv(run / "results.csv", keep_default_na=False)
    assert len(on_disk) == len(results)
    assert "None" in set(on_disk["prompt"])  # a prompt that reads like a missing value stays a string
    length = results[(results.prompt == "a dog eating") & (results.metric == "test/len")]["value"]
    assert set(length) == {len("a dog eating")}


def test_resume_does_not_recompute(run):
    CountCalls.seen = 0
    score_run(run, {"count_calls": {}})
    assert CountCalls.seen == 18
    results = pd.read_csv(run / "results.csv", keep_default_na=False)  # the prompt "None" stays a string
    # Lose the rows of two images, as if the run had been interrupted.
    keep = ~((results.image_idx == 5) | ((results.image_idx == 0) & (results.variant == "dm")))
    results[keep].to_csv(run / "results.csv", index=False)
    CountCalls.seen = 0
    again = score_run(run, {"count_calls": {}})
    assert CountCalls.seen == 3 + 1
    assert len(again) == 36
    assert not again.duplicated(["image_idx", "variant", "metric"]).any()


def test_changed_config_recomputes(run):
    score_run(run, {"count_calls": {}})
    CountCalls.seen = 0
    with pytest.warns(UserWarning, match="config changed"):
        results = score_run(run, {"count_calls": {"offset": 1000.0}})
    assert CountCalls.seen == 18
    assert (results[results.metric == "test/red"]["value"] >= 1000).all()


def test_missing_image_is_an_error_naming_it(run):
    (run / "images" / "00002_asyndm.png").unlink()
    with pytest.raises(FileNotFoundError, match="00002_asyndm.png"):
        score_run(run, {"count_calls": {}})


def test_clip_tiny_scores_every_image(run, tmp_path, monkeypatch):
    monkeypatch.setenv("ASYNDM_CACHE", str(tmp_path / "cache"))
    results = score_run(run, {"clip": {"arch": "tiny", "pretrained": "tiny", "batch_size": 5, "device": "cpu"}})
    assert len(results) == 18 and set(results.metric) == {"clip/cosine_raw"}
    assert results["value"].between(-1, 1).all()


@registry.register("record_device")
class RecordDevice:
    """Scores 0.0 everywhere; remembers the device it was built with."""

    built_with: list = []

    def __init__(self, device: str = "auto", batch_size: int = 4):
        type(self).built_with.append(device)

    @classmethod
    def metric_names(cls, **cfg):
        return ["test/zero"]

    def score(self, images, prompts):
        return {"test/zero": [0.0] * len(images)}


def test_the_runs_device_applies_unless_the_evaluator_sets_its_own(run):
    from evaluation.scoring import with_run_device

    assert with_run_device({"device": "auto", "x": 1}, "cpu") == {"device": "cpu", "x": 1}
    assert with_run_device({"device": "cuda"}, "cpu") == {"device": "cuda"}
    assert with_run_device({"min_area": 6}, "cpu") == {"min_area": 6}  # no device setting: untouched
    assert with_run_device({"device": "auto"}, "auto") == {"device": "auto"}
    RecordDevice.built_with = []
    score_run(run, {"record_device": {"device": "auto"}}, device="cpu")
    assert RecordDevice.built_with == ["cpu"]


def test_device_and_batch_size_changes_keep_results(run):
    score_run(run, {"count_calls": {"batch_size": 4}})
    CountCalls.seen = 0
    score_run(run, {"count_calls": {"batch_size": 7, "device": "cpu"}})
    assert CountCalls.seen == 0


def test_progress_bar_only_on_a_terminal(run, capsys, monkeypatch):
    score_run(run, {"count_calls": {}})
    assert "eval.count_calls" not in capsys.readouterr().err  # pytest's stderr is not a terminal
    (run / "results.csv").unlink()
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    score_run(run, {"count_calls": {}})
    assert "eval.count_calls: 100%" in capsys.readouterr().err
    (run / "results.csv").unlink()
    score_run(run, {"count_calls": {}}, progress=False)
    assert "eval.count_calls" not in capsys.readouterr().err
