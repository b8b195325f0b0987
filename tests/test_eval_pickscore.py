import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from evaluation.offline.tiny_pickscore import tiny_pickscore_dir
from evaluation.pickscore import METRIC, PickScore
from tests.random_images import random_images

torch.set_num_threads(1)
TINY_CFG = {"model": "tiny", "processor": "tiny", "device": "cpu"}
PROMPTS = ["a cat eating a sandwich", "a dog", "a red car parked next to a blue house at night", "a horse",
           "a monkey"]


@pytest.fixture(scope="module")
def tiny(tiny_cache):
    return PickScore(**TINY_CFG, batch_size=2)


def test_score_is_clip_models_own_logits_per_image(tiny):
    from transformers import CLIPModel, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder = tiny_pickscore_dir()
    model = CLIPModel.from_pretrained(folder).eval()
    images, prompts = random_images(3), PROMPTS[:3]
    # PickScore's processor is transformers 4's PIL one; the torchvision backend moves scores by ~5e-3.
    pixels = CLIPImageProcessorPil.from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]
    text = CLIPTokenizer.from_pretrained(folder)(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():  # the full forward: logit_scale.exp() * cosine, all pairs
        logits = model(pixel_values=pixels, **text).logits_per_image  # (images, prompts)
    got = tiny.score(images, prompts)[METRIC]
    np.testing.assert_allclose(got, torch.diagonal(logits).numpy(), atol=1e-4)
    assert float(model.logit_scale.detach().exp()) == pytest.approx(100, rel=1e-4)


def test_batching_and_padding_do_not_change_scores(tiny):
    images = random_images(5)
    one_by_one = [PickScore(**TINY_CFG, batch_size=1).score([im], [p])[METRIC][0] for im, p in zip(images, PROMPTS)]
    np.testing.assert_allclose(tiny.score(images, PROMPTS)[METRIC], one_by_one, atol=1e-4)
    assert len(set(np.round(one_by_one, 4))) == 5


def test_missing_model_fails_at_once_naming_it(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="yuvalkirstain/PickScore_v1.*HF_HUB_OFFLINE"):
        PickScore(processor="tiny", device="cpu")
    with pytest.raises(FileNotFoundError, match="laion/CLIP-ViT-H-14-laion2B-s32B-b79K.*HF_HUB_OFFLINE"):
        PickScore(model="tiny", device="cpu")
