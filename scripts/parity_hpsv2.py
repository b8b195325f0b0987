"""Parity of the project's HPSv2.1 evaluator with the official `hpsv2` package.

    # once, outside the project (never in CI); see scripts/parity_image_reward.py for the venv
    /tmp/parity-venv/bin/pip install hpsv2==1.2.0
    # hpsv2 1.2.0's wheel lacks its tokenizer vocabulary; it is the same file open_clip ships:
    cp <open_clip>/bpe_simple_vocab_16e6.txt.gz /tmp/parity-venv/lib/python3.11/site-packages/hpsv2/src/open_clip/
    python scripts/parity_hpsv2.py --official-python /tmp/parity-venv/bin/python

The official stage builds the package's ViT-H-14 with the exact arguments of
`hpsv2.img_score.initialize_model` except `pretrained` (the LAION weights it would download are
replaced by the checkpoint anyway), draws random weights from a fixed seed, saves them as the
package saves HPS_v2.1_compressed.pt (`{"state_dict": ...}`), and scores fixed (image, prompt)
pairs with the official `hpsv2.img_score.score(images, prompt, cp=..., hps_version="v2.1")`. The
port stage scores the same pairs with `eval.hpsv2` and fails unless all agree within 1e-4.
Images are given as RGB, as the project's scoring loads them (the package rejects RGBA).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import parity_common as common

CHECKPOINT = "HPS_v2.1_compressed.pt"


def randomise(state: dict, seed: int) -> dict:
    """Every float tensor redrawn from a fixed seed, LayerNorm weights near 1, the rest around their scale."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value
        elif key == "logit_scale":
            out[key] = value.clone()
        elif ("ln" in key or "norm" in key) and key.endswith(".weight"):
            out[key] = 1.0 + 0.1 * torch.randn(value.shape, generator=generator)
        else:
            scale = float(value.float().std()) if value.numel() > 1 and float(value.float().std()) > 0 else 0.02
            out[key] = scale * torch.randn(value.shape, generator=generator)
    return out


def rgb_images(workdir: Path):
    from PIL import Image

    return [(Image.open(image).convert("RGB"), prompt) for image, prompt in common.pairs(common.make_images(workdir / "images"))]


def official(workdir: Path) -> None:
    """Runs in the throwaway environment."""
    os.environ.update(HPS_ROOT=str(workdir / "hps"), HF_HUB_OFFLINE="1")
    import torch
    from hpsv2 import img_score
    from hpsv2.src.open_clip import create_model_and_transforms

    torch.set_num_threads(2)
    torch.manual_seed(common.SEED)
    model, _, preprocess_val = create_model_and_transforms(
        "ViT-H-14", None, precision="amp", device="cpu", jit=False, force_quick_gelu=False, force_custom_text=False,
        force_patch_dropout=False, force_image_size=None, pretrained_image=False, image_mean=None, image_std=None,
        light_augmentation=True, aug_cfg={}, output_dict=True, with_score_predictor=False,
        with_region_predictor=False)
    state = randomise(model.state_dict(), common.SEED)
    torch.save({"epoch": 1, "state_dict": state}, workdir / CHECKPOINT)
    img_score.model_dict.update(model=model, preprocess_val=preprocess_val)  # initialize_model() minus the download
    pairs = rgb_images(workdir)
    scores = []
    for image, prompt in pairs:
        scores.append(float(img_score.score([image], prompt, cp=str(workdir / CHECKPOINT), hps_version="v2.1")[0]))
    out = {"prompts": [p for _, p in pairs], "scores": scores,
           "versions": common.versions("hpsv2", "torch", "torchvision", "pillow")}
    (workdir / "official.json").write_text(json.dumps(out, indent=2))


def port(workdir: Path, official_python: str) -> int:
    """Runs in the project's venv."""
    result = common.run_official(Path(__file__), official_python, workdir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from evaluation.hps import METRIC, HpsV2Score

    torch.set_num_threads(2)
    pairs = rgb_images(workdir)
    assert [p for _, p in pairs] == result["prompts"]
    scorer = HpsV2Score(checkpoint=str(workdir / CHECKPOINT), arch="ViT-H-14", batch_size=4, device="cpu")
    ours = scorer.score([im for im, _ in pairs], [p for _, p in pairs])[METRIC]
    report = common.compare(METRIC, result["scores"], ours,
                            {"official": result["versions"],
                             "port": common.versions("open_clip_torch", "torch", "torchvision", "pillow")}, workdir)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(common.main(__doc__.split("\n")[0], "/tmp/parity-hpsv2", official, port))
