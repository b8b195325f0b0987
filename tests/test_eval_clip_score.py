import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import registry
from evaluation.clip_score import METRIC, ClipScore, resolve_weights

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASYNDM_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield ClipScore(arch="tiny", pretrained="tiny", batch_size=2, device="cpu")


def _images(n, size=48):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]


PROMPTS = ["a cat eating a sandwich", "a dog playing basketball", "a red car", "a horse", "a monkey"]


def test_score_is_hand_computed_cosine(tiny):
    import open_clip

    image = _images(1)[0]
    prompt = PROMPTS[0]
    with torch.no_grad():
        pixels = tiny.preprocess(image).unsqueeze(0)
        tokens = open_clip.tokenize([prompt])  # open_clip's own tokenizer, not the evaluator's
        a = tiny.model.encode_image(pixels)[0].double()
        b = tiny.model.encode_text(tokens)[0].double()
    expected = float(a @ b / (a.norm() * b.norm()))
    got = tiny.score([image], [prompt])[METRIC]
    assert got == pytest.approx([expected], abs=1e-5)
    assert -1.0 <= got[0] <= 1.0


def test_batch_size_does_not_change_scores(tiny):
    images = _images(5)
    one_batch = ClipScore(arch="tiny", pretrained="tiny", batch_size=5, device="cpu").score(images, PROMPTS)
    small_batches = tiny.score(images, PROMPTS)  # batch_size=2: batches of 2, 2, 1
    np.testing.assert_allclose(small_batches[METRIC], one_batch[METRIC], atol=1e-5)
    assert all(-1.0 <= v <= 1.0 for v in one_batch[METRIC])
    assert len(set(np.round(one_batch[METRIC], 6))) == 5  # not a constant


def test_tiny_checkpoint_is_deterministic(tmp_path, monkeypatch):
    from evaluation.offline.tiny_clip import tiny_clip_checkpoint

    states = []
    for sub in ("a", "b"):
        monkeypatch.setenv("ASYNDM_CACHE", str(tmp_path / sub))
        states.append(torch.load(tiny_clip_checkpoint(), weights_only=True))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_missing_weights_offline_fail_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(FileNotFoundError, match="laion2b_s32b_b79k.*HF_HUB_OFFLINE.*pretrained=/path"):
        resolve_weights("ViT-H-14", "laion2b_s32b_b79k")
    with pytest.raises(FileNotFoundError, match="no_such.ckpt"):
        resolve_weights("ViT-H-14", str(tmp_path / "no_such.ckpt"))


def test_local_checkpoint_file_is_accepted(tiny):
    from evaluation.offline.tiny_clip import TINY_ARCH, tiny_clip_checkpoint

    path = str(tiny_clip_checkpoint())
    assert resolve_weights(TINY_ARCH, path) == (TINY_ARCH, path)


def test_registry_builds_once_and_names_known_evaluators(tiny):
    cfg = {"arch": "tiny", "pretrained": "tiny", "batch_size": 3, "device": "cpu"}
    assert registry.build("clip", cfg) is registry.build("clip", dict(cfg))
    assert registry.metric_names("clip", cfg) == [METRIC]
    assert registry.metric_names("clip_tiny", {"evaluator": "clip", **cfg}) == [METRIC]
    with pytest.raises(KeyError, match="unknown evaluator 'clipp'.*known evaluators: .*clip"):
        registry.build("clipp", {})
