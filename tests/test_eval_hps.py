import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluation.hps import METRIC, HpsTransform, HpsV2Score
from evaluation.offline.tiny_hps import tiny_hps_checkpoint
from tests.random_images import random_images

torch.set_num_threads(1)
TINY_CFG = {"checkpoint": "tiny", "arch": "tiny", "device": "cpu"}
PROMPTS = ["a cat eating a sandwich", "a dog playing basketball", "a red car", "a horse", "a monkey"]
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def tiny(tiny_cache):
    return HpsV2Score(**TINY_CFG, batch_size=2)


def test_transform_resizes_the_longest_side_and_pads_with_zeros():
    image = random_images(3)[2]  # 30 x 70: longest side 70 -> 64, short side round(30 * 64 / 70) = 27
    got = HpsTransform(64, MEAN, STD)(image)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    resized = F.interpolate(pixels[None], size=(64, 27), mode="bicubic", antialias=True, align_corners=False)[0]
    padded = torch.zeros(3, 64, 64)
    padded[:, :, 18:45] = resized  # (64 - 27) = 37 columns of padding: 18 left, 19 right
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(got, (padded - mean) / std, atol=1e-5, rtol=0)
    same_size = random_images(4)[3]  # already 64 px: neither resized nor padded
    torch.testing.assert_close(HpsTransform(64, MEAN, STD)(same_size),
                               (torch.from_numpy(np.asarray(same_size, dtype=np.float32) / 255).permute(2, 0, 1)
                                - mean) / std)


def test_score_is_the_cosine_of_the_checkpoint_model(tiny):
    import open_clip

    arch, path = tiny_hps_checkpoint()
    model = open_clip.create_model(arch, pretrained=None)
    model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    model.eval()
    images = random_images(2)
    with torch.no_grad():
        a = model.encode_image(torch.stack([tiny.preprocess(im) for im in images])).double()
        b = model.encode_text(open_clip.tokenize(PROMPTS[:2])).double()
    expected = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)
    np.testing.assert_allclose(tiny.score(images, PROMPTS[:2])[METRIC], expected.numpy(), atol=1e-5)


def test_batch_size_does_not_change_scores(tiny):
    images = random_images(5)
    one_batch = HpsV2Score(**TINY_CFG, batch_size=5).score(images, PROMPTS)[METRIC]
    np.testing.assert_allclose(tiny.score(images, PROMPTS)[METRIC], one_batch, atol=1e-5)
    assert all(-1 <= v <= 1 for v in one_batch) and len(set(np.round(one_batch, 6))) == 5


def test_checkpoint_is_saved_like_the_official_one(tiny_cache):
    checkpoint = torch.load(tiny_hps_checkpoint()[1], weights_only=True)
    assert set(checkpoint) == {"epoch", "state_dict"}
    assert "visual.proj" in checkpoint["state_dict"] and "text_projection" in checkpoint["state_dict"]


def test_missing_checkpoint_fails_at_once_naming_it(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="HPS_v2.1_compressed.pt of xswu/HPSv2.*HF_HUB_OFFLINE.*hpsv2_tiny"):
        HpsV2Score(device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        HpsV2Score(checkpoint=str(tmp_path / "missing.pt"), device="cpu")
    with pytest.raises(ValueError, match="checkpoint=tiny and arch=tiny"):
        HpsV2Score(checkpoint="tiny", device="cpu")
