"""Parity of the project's ImageReward port with the official `image-reward` package.

    # once, outside the project (never in CI): the official package with the versions it needs
    python -m venv /tmp/parity-venv
    /tmp/parity-venv/bin/pip install torch torchvision image-reward==1.5 openai-clip \
        transformers==4.44.2 diffusers==0.31.0 "setuptools<81"
    # then, from the project's venv (runs the official stage with the other python first)
    python scripts/parity_image_reward.py --official-python /tmp/parity-venv/bin/python

The official stage builds `ImageReward.ImageReward(med_config)` (BLIP ViT-L/16 + MED BERT + head)
with random weights from a fixed seed, saves its state dict as ImageReward.pt, loads it back with
the official `ImageReward.load` and scores fixed (image, prompt) pairs with `model.score`. No
tokenizer can be downloaded here, so both stages use a WordPiece vocab.txt written by this
script, served to the official code as the cached `bert-base-uncased`. The port stage loads the
same files with `eval.imagereward` and fails unless every score agrees within 1e-4.
"""

from __future__ import annotations

import json
import os
import string
import sys
from pathlib import Path

import parity_common as common

# THUDM/ImageReward's med_config.json.
MED_CONFIG = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
              "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
              "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
              "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2,
              "vocab_size": 30524, "encoder_width": 768, "add_cross_attention": True}
SNAPSHOT = "0" * 40  # a fake revision of the locally served bert-base-uncased


def write_vocab(folder: Path) -> None:
    """A bert-base-uncased-shaped vocab.txt ([PAD] 0, [UNK] 100, [CLS] 101, ...) covering the prompts."""
    words = sorted({w.strip(string.punctuation).lower() for p in common.PROMPTS for w in p.split()} - {""})
    chars = string.ascii_lowercase + string.digits
    tokens = (["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
              + list(chars + string.punctuation) + ["##" + c for c in chars] + words)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))


def randomise(state: dict, seed: int) -> dict:
    """Every float tensor redrawn: LayerNorm weights near 1, head weights at 1/sqrt(fan_in), the rest N(0, 0.02)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value
        elif key.startswith("mlp.") and key.endswith(".weight"):
            out[key] = torch.randn(value.shape, generator=generator) / value.shape[1] ** 0.5
        elif "norm" in key.lower() and key.endswith(".weight"):
            out[key] = 1.0 + 0.1 * torch.randn(value.shape, generator=generator)
        else:
            out[key] = 0.02 * torch.randn(value.shape, generator=generator)
    return out


def official(workdir: Path) -> None:
    """Runs in the throwaway environment."""
    hub = workdir / "hf" / "hub" / "models--bert-base-uncased"
    write_vocab(hub / "snapshots" / SNAPSHOT)
    (hub / "refs").mkdir(parents=True, exist_ok=True)
    (hub / "refs" / "main").write_text(SNAPSHOT)
    os.environ.update(HF_HOME=str(workdir / "hf"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    import torch
    from PIL import Image

    import ImageReward as RM
    from ImageReward.ImageReward import ImageReward as OfficialImageReward

    torch.set_num_threads(2)
    (workdir / "med_config.json").write_text(json.dumps(MED_CONFIG, indent=2))
    torch.manual_seed(common.SEED)
    built = OfficialImageReward(med_config=str(workdir / "med_config.json"), device="cpu")
    state = randomise(built.state_dict(), common.SEED)
    torch.save(state, workdir / "ImageReward.pt")
    layout = {k: list(v.shape) for k, v in state.items()}
    del built
    model = RM.load(str(workdir / "ImageReward.pt"), device="cpu", med_config=str(workdir / "med_config.json"))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state), "the official load changed weights"
    pairs = common.pairs(common.make_images(workdir / "images"))
    with torch.no_grad():
        scores = [float(model.score(prompt, Image.open(image))) for image, prompt in pairs]
    out = {"pairs": pairs, "scores": scores, "layout": layout,
           "versions": common.versions("image-reward", "torch", "torchvision", "transformers", "timm", "fairscale",
                                       "pillow")}
    (workdir / "official.json").write_text(json.dumps(out, indent=2))


def port(workdir: Path, official_python: str) -> int:
    """Runs in the project's venv."""
    result = common.run_official(Path(__file__), official_python, workdir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from PIL import Image

    from evaluation.image_reward import METRIC, ImageRewardScore
    from evaluation.offline.tiny_image_reward import official_layout

    torch.set_num_threads(2)
    vit_l = dict(width=1024, layers=24, patch_size=16, image_size=224, mlp_width=4096)
    expected = {k: list(v) for k, v in official_layout(vit_l, MED_CONFIG).items()}
    if expected != result["layout"]:
        missing = sorted(set(result["layout"]) - set(expected))[:5]
        extra = sorted(set(expected) - set(result["layout"]))[:5]
        print(f"official_layout differs from the official state dict: missing {missing}, extra {extra}")
        return 1
    print(f"official_layout matches the official state dict ({len(expected)} tensors)")
    write_vocab(workdir / "tokenizer")
    scorer = ImageRewardScore(checkpoint=str(workdir / "ImageReward.pt"), med_config=str(workdir / "med_config.json"),
                              tokenizer=str(workdir / "tokenizer"), vision_heads=16, batch_size=4, device="cpu")
    images = [Image.open(image) for image, _ in result["pairs"]]
    ours = scorer.score(images, [prompt for _, prompt in result["pairs"]])[METRIC]
    ours_versions = common.versions("torch", "torchvision", "transformers", "pillow")
    report = common.compare(METRIC, result["scores"], ours,
                            {"official": result["versions"], "port": ours_versions}, workdir)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(common.main(__doc__.split("\n")[0], "/tmp/parity-image-reward", official, port))
