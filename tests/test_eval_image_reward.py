import os
import sys
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from PIL import Image

from evaluation import registry
from evaluation.offline.fake_run import make_fake_run
from evaluation.image_reward import METRIC, ImageRewardScore
from evaluation.scoring import score_run


@pytest.fixture(autouse=True)
def fresh_registry():
    registry.clear_cache()
    yield
    registry.clear_cache()


def test_metric_names_need_no_package():
    assert registry.metric_names("imagereward", {"evaluator": "imagereward"}) == [METRIC]


def test_missing_package_says_why_and_how(monkeypatch):
    monkeypatch.setitem(sys.modules, "ImageReward", None)  # as if not installed
    with pytest.raises(RuntimeError, match=r"is not installed.*timm==0\.6\.13.*transformers 5.*separate environment"):
        ImageRewardScore()


def test_package_that_fails_on_transformers_5_is_reported(monkeypatch, tmp_path):
    # What image-reward 1.5's BLIP text encoder (ImageReward/models/BLIP/med.py) does at import time.
    package = tmp_path / "ImageReward"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from transformers.modeling_utils import apply_chunking_to_forward, prune_linear_layer\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ImageReward", raising=False)
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("the helpers still exist before transformers 5")
    with pytest.raises(RuntimeError, match=r"fails to import \(ImportError: .*apply_chunking_to_forward"):
        ImageRewardScore()


@pytest.fixture
def fake_package(monkeypatch):
    """A stand-in for the `ImageReward` module with its `load(...).score(prompt, image)` API."""
    calls = {}

    class Model:
        def score(self, prompt, image):
            assert isinstance(prompt, str) and isinstance(image, Image.Image)
            return len(prompt) + float(np.asarray(image).mean()) / 255

    def load(name, device, download_root=None, med_config=None):
        calls.update(name=name, device=device, download_root=download_root, med_config=med_config)
        return Model()

    monkeypatch.setitem(sys.modules, "ImageReward", types.SimpleNamespace(load=load))
    return calls


def test_adapter_through_score_run(fake_package, tmp_path):
    run = make_fake_run(tmp_path / "run", seeds=(0,), variants=("dm", "asyndm"))
    checkpoint = tmp_path / "ImageReward.pt"
    checkpoint.write_bytes(b"x")
    results = score_run(run, {"imagereward": {"checkpoint": str(checkpoint), "device": "cpu", "batch_size": 3}})
    assert fake_package == {"name": str(checkpoint), "device": "cpu", "download_root": None, "med_config": None}
    values = results[results["metric"] == METRIC].merge(results[["image_idx", "prompt"]].drop_duplicates())
    assert len(values) == 4
    assert all(len(p) <= v < len(p) + 1 for p, v in zip(values["prompt"], values["value"]))


def test_missing_checkpoint_file_is_named(fake_package, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ImageRewardScore(checkpoint=str(tmp_path / "nope.pt"), device="cpu")


def _real_checkpoint():
    path = os.environ.get("ASYNDM_IMAGEREWARD_CKPT", "~/.cache/ImageReward/ImageReward.pt")
    try:
        import ImageReward  # noqa: F401
    except ImportError:
        return None
    return os.path.expanduser(path) if os.path.isfile(os.path.expanduser(path)) else None


@pytest.mark.weights
@pytest.mark.skipif(_real_checkpoint() is None,
                    reason="needs the image-reward package (not importable beside transformers 5) and ImageReward.pt")
def test_real_image_reward_prefers_the_matching_prompt():
    red = Image.new("RGB", (512, 512), (220, 20, 20))
    scores = ImageRewardScore(checkpoint=_real_checkpoint()).score([red, red], ["a red square", "a dog on a beach"])
    assert scores[METRIC][0] > scores[METRIC][1]
