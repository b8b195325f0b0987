import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation import registry
from evaluation.image_reward import METRIC, ImageRewardScore, image_transform
from evaluation.image_reward_model import REWARD_MEAN, REWARD_STD, port_key, read_checkpoint
from evaluation.offline.tiny_image_reward import (TINY_VISION, TINY_VISION_HEADS, official_layout,
                                                  tiny_image_reward_dir)
from evaluation.offline.fake_run import make_fake_run
from evaluation.scoring import score_run
from tests.random_images import SIZES, random_images

torch.set_num_threads(1)
TINY_CFG = {"checkpoint": "tiny", "tokenizer": "tiny", "vision_heads": TINY_VISION_HEADS, "device": "cpu"}
PROMPTS = ["a cat eating a sandwich", "a dog playing basketball", "A red horse, riding a bicycle!", "a monkey",
           "the bird"]


@pytest.fixture(scope="module")
def tiny(tiny_cache):
    return ImageRewardScore(**TINY_CFG, batch_size=2)


def _images(n, seed=0):
    return random_images(n, seed, sizes=(*SIZES[:4], (33, 47)))


def _reference_reward(state, med, heads, pixels, ids, mask):
    """BLIP's ViT + MED + head written out with torch.nn.functional, on the official key names."""
    def lin(x, name):
        return F.linear(x, state[name + ".weight"], state[name + ".bias"])

    def norm(x, name, eps):
        return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"], eps=eps)

    def attention(q, k, v, n_heads, attn_mask=None):
        split = [t.reshape(t.shape[0], t.shape[1], n_heads, -1).transpose(1, 2) for t in (q, k, v)]
        out = F.scaled_dot_product_attention(*split, attn_mask=attn_mask)
        return out.transpose(1, 2).reshape(q.shape)

    v = "blip.visual_encoder."
    patch = state[v + "patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(pixels, state[v + "patch_embed.proj.weight"], state[v + "patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state[v + "cls_token"].expand(len(x), -1, -1), x], dim=1) + state[v + "pos_embed"]
    for i in range(TINY_VISION["layers"]):
        block = f"{v}blocks.{i}."
        q, k, val = lin(norm(x, block + "norm1", 1e-6), block + "attn.qkv").chunk(3, dim=-1)
        x = x + lin(attention(q, k, val, heads), block + "attn.proj")
        x = x + lin(F.gelu(lin(norm(x, block + "norm2", 1e-6), block + "mlp.fc1")), block + "mlp.fc2")
    image_tokens = norm(x, v + "norm", 1e-6)

    t = "blip.text_encoder."
    y = state[t + "embeddings.word_embeddings.weight"][ids] + state[t + "embeddings.position_embeddings.weight"][:ids.shape[1]]
    y = norm(y, t + "embeddings.LayerNorm", 1e-12)
    keep = mask[:, None, None, :].bool()  # padding tokens are not attended to
    for j in range(med["num_hidden_layers"]):
        layer = f"{t}encoder.layer.{j}."
        for kind, source, attn_mask in (("attention", y, keep), ("crossattention", image_tokens, None)):
            p = layer + kind
            a = attention(lin(y, p + ".self.query"), lin(source, p + ".self.key"), lin(source, p + ".self.value"),
                          med["num_attention_heads"], attn_mask)
            y = norm(lin(a, p + ".output.dense") + y, p + ".output.LayerNorm", 1e-12)
        y = norm(lin(F.gelu(lin(y, layer + "intermediate.dense")), layer + "output.dense") + y,
                 layer + "output.LayerNorm", 1e-12)
    reward = y[:, 0]
    for index in (0, 2, 4, 6, 7):
        reward = lin(reward, f"mlp.layers.{index}")
    return (reward[:, 0] - REWARD_MEAN) / REWARD_STD


def test_scores_equal_a_hand_written_blip_on_the_official_keys(tiny):
    folder = tiny_image_reward_dir()
    state = read_checkpoint(folder / "ImageReward.pt")
    med = json.loads((folder / "med_config.json").read_text())
    images, prompts = _images(3), PROMPTS[:3]
    pixels = torch.stack([tiny.preprocess(im) for im in images])
    tokens = tiny.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tokens["attention_mask"].sum(1).tolist() != [35, 35, 35]  # padding is exercised
    with torch.no_grad():
        expected = _reference_reward(state, med, TINY_VISION_HEADS, pixels, tokens["input_ids"],
                                     tokens["attention_mask"])
    got = tiny.score(images, prompts)[METRIC]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    assert np.ptp(got) > 1e-3  # the tiny model's scores do depend on the input


def test_every_official_key_has_a_place_in_the_port(tiny):
    config = json.loads((tiny_image_reward_dir() / "med_config.json").read_text())
    layout = official_layout(TINY_VISION, config)
    mapped = {port_key(k) for k in layout} - {None}
    assert mapped == set(tiny.model.state_dict())
    assert port_key("blip.vision_proj.weight") is None and port_key("blip.text_encoder.embeddings.position_ids") is None
    with pytest.raises(KeyError, match="blocks.0.attn.qkv_extra.weight"):
        port_key("blip.visual_encoder.blocks.0.attn.qkv_extra.weight")


def test_batch_size_and_cache_do_not_change_scores(tiny):
    images = _images(5)
    one_batch = ImageRewardScore(**TINY_CFG, batch_size=5).score(images, PROMPTS)[METRIC]
    small_batches = tiny.score(images, PROMPTS)[METRIC]  # batches of 2, 2, 1
    np.testing.assert_allclose(small_batches, one_batch, atol=1e-5)
    assert len(set(np.round(one_batch, 6))) == 5


def test_repeated_images_are_scored_once(tiny, monkeypatch):
    calls = []
    real = tiny.rewards
    monkeypatch.setattr(tiny, "rewards", lambda ims, ps: calls.append(len(ims)) or real(ims, ps))
    image = _images(1, seed=5)[0]
    first = tiny.score([image, image.copy(), image], ["a cat", "a cat", "a dog"])[METRIC]
    again = tiny.score([image.copy()], ["a dog"])[METRIC]
    assert calls == [2]  # (image, "a cat") once, (image, "a dog") once, the repeat from the cache
    assert first[0] == first[1] and again == [first[2]]


def test_prompts_are_cut_at_35_tokens(tiny):
    image = _images(1, seed=3)[0]
    long = " ".join(["cat"] * 40)
    longer = long + " dog horse monkey"
    scores = tiny.score([image, image], [long, longer])[METRIC]
    assert scores[0] == scores[1]
    assert len(tiny.tokenizer(longer, truncation=True, max_length=35)["input_ids"]) == 35


def test_preprocessing_is_short_side_resize_then_centre_crop():
    image = _images(1)[0]  # 48 x 40
    got = image_transform(32)(image)
    resized = image.resize((38, 32), Image.BICUBIC)  # short side 40 -> 32, long side int(48 * 32 / 40)
    crop = np.asarray(resized, dtype=np.float32)[:, 3:35] / 255  # centre: round((38 - 32) / 2) = 3
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), (crop - mean) / std, atol=1e-5)


def test_tiny_checkpoint_is_deterministic(tmp_path, monkeypatch):
    states = []
    for sub in ("a", "b"):
        monkeypatch.setenv("ASYNDM_CACHE", str(tmp_path / sub))
        states.append(torch.load(tiny_image_reward_dir() / "ImageReward.pt", weights_only=True))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_a_checkpoint_of_another_architecture_is_refused(tiny_cache, tmp_path):
    folder = tiny_image_reward_dir()
    state = read_checkpoint(folder / "ImageReward.pt")
    del state["blip.text_encoder.encoder.layer.1.output.dense.weight"]
    (tmp_path / "med_config.json").write_text((folder / "med_config.json").read_text())
    torch.save(state, tmp_path / "ImageReward.pt")
    with pytest.raises(KeyError, match="missing.*layer.1.output.dense.weight"):
        ImageRewardScore(checkpoint=str(tmp_path / "ImageReward.pt"), tokenizer="tiny", vision_heads=2, device="cpu")


def test_missing_files_fail_at_once_naming_them(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="ImageReward.pt of THUDM/ImageReward.*HF_HUB_OFFLINE.*imagereward_tiny"):
        ImageRewardScore(device="cpu")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ImageRewardScore(checkpoint=str(tmp_path / "nope.pt"), device="cpu")
    (tmp_path / "ImageReward.pt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="med_config.json"):
        ImageRewardScore(checkpoint=str(tmp_path / "ImageReward.pt"), device="cpu")


def test_scores_a_run_through_the_registry(tiny_cache, tmp_path):
    run = make_fake_run(tmp_path / "run", seeds=(0,), variants=("dm", "asyndm"))
    results = score_run(run, {"imagereward": {"evaluator": "imagereward", **TINY_CFG, "batch_size": 3}})
    values = results[results["metric"] == METRIC]["value"]
    assert len(values) == 4 and values.notna().all()
    assert registry.metric_names("imagereward", {}) == [METRIC]
