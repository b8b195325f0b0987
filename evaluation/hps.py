"""HPSv2.1 (Wu et al., 2023): an open_clip ViT-H-14 fine-tuned on human preferences.

The score is the cosine of the image and prompt features (the `hpsv2` package's
`image_features @ text_features.T`), about 0.25–0.35 for SD-class images. The checkpoint
(`HPS_v2.1_compressed.pt` of hub repo xswu/HPSv2) is a `{"state_dict": ...}` of open_clip's own
ViT-H-14, so it loads into the installed open_clip unchanged. Preprocessing is the package's
validation transform, which differs from open_clip's: the image becomes a tensor first, its
longest side is resized to 224 (bicubic on the tensor) and the short side is padded with zeros
to a square; nothing is cropped. scripts/parity_hpsv2.py measures the agreement with `hpsv2`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image

from evaluation.clip_score import _pick_device
from evaluation.score_cache import ScoreCache
from evaluation.weights import hub_file, local_file, looks_like_path

METRIC = "hpsv2/score"
HUB_REPO = "xswu/HPSv2"
VERSIONS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
TINY = "tiny"


def resolve_checkpoint(checkpoint: str, arch: str) -> tuple[str, Path]:
    """(open_clip arch, checkpoint file): `v2.1`/`v2.0` from the hub, a local file, or `tiny`."""
    key = "eval.hpsv2.checkpoint"
    if checkpoint == TINY or arch == TINY:
        if not (checkpoint == TINY and arch == TINY):
            raise ValueError(f"the tiny HPS needs checkpoint=tiny and arch=tiny together, got checkpoint="
                             f"{checkpoint!r} arch={arch!r}; or use eval=[hpsv2_tiny]")
        from evaluation.offline.tiny_hps import tiny_hps_checkpoint

        return tiny_hps_checkpoint()
    if checkpoint in VERSIONS:
        fix = (f"set {key}=/path/to/{VERSIONS[checkpoint]}, or use eval=[hpsv2_tiny] for a test run")
        return arch, hub_file(HUB_REPO, VERSIONS[checkpoint], key, fix)
    if looks_like_path(checkpoint):
        return arch, local_file(checkpoint, key, "an HPS checkpoint such as HPS_v2.1_compressed.pt of xswu/HPSv2")
    raise ValueError(f"{key}={checkpoint!r}: use {' or '.join(VERSIONS)}, a local checkpoint file, or tiny")


class HpsTransform:
    """The `hpsv2` validation transform: tensor, longest side to `size` (bicubic), zero-pad to a square, normalise."""

    def __init__(self, size: int, mean, std):
        self.size = size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        pixels = F.to_tensor(image.convert("RGB"))  # (3, H, W) in [0, 1]
        height, width = pixels.shape[1:]
        scale = self.size / max(height, width)
        if scale != 1.0:  # the package resizes (and pads) only when the longest side differs
            new_h, new_w = round(height * scale), round(width * scale)
            pixels = F.resize(pixels, [new_h, new_w], InterpolationMode.BICUBIC, antialias=True)
            pad_h, pad_w = self.size - new_h, self.size - new_w
            pixels = F.pad(pixels, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
        return (pixels - self.mean) / self.std


class HpsV2Score:
    """HPSv2 (default v2.1) preference score per (image, prompt)."""

    @staticmethod
    def check_weights(checkpoint: str, arch: str, **_) -> None:
        resolve_checkpoint(str(checkpoint), str(arch))

    def __init__(self, checkpoint: str = "v2.1", arch: str = "ViT-H-14", batch_size: int = 16,
                 device: str = "auto", precision: str = "amp"):
        import open_clip

        if int(batch_size) < 1:
            raise ValueError(f"eval.hpsv2.batch_size must be >= 1, got {batch_size}")
        if precision not in ("amp", "fp32"):
            raise ValueError(f"eval.hpsv2.precision={precision!r}; use amp (fp16 autocast on CUDA, as the hpsv2 "
                             f"package) or fp32")
        self.batch_size = int(batch_size)
        self.device = _pick_device(device)
        self.autocast = precision == "amp" and self.device.type == "cuda"
        model_name, path = resolve_checkpoint(str(checkpoint), str(arch))
        if open_clip.get_model_config(model_name) is None:
            raise ValueError(f"unknown open_clip arch {arch!r}; HPSv2 is ViT-H-14")
        logging.disable(logging.WARNING)  # open_clip warns "initialized randomly"; the weights come next
        try:
            self.model = open_clip.create_model(model_name, pretrained=None, device="cpu")
        finally:
            logging.disable(logging.NOTSET)
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        self.model.load_state_dict(state, strict=True)  # the package loads strictly too
        self.model = self.model.to(self.device).eval()
        visual = self.model.visual
        self.preprocess = HpsTransform(visual.image_size[0] if isinstance(visual.image_size, (tuple, list))
                                       else visual.image_size,
                                       getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN,
                                       getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.cache = ScoreCache()

    @classmethod
    def metric_names(cls, **cfg) -> list[str]:
        return [METRIC]

    @torch.no_grad()
    def cosines(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        values: list[float] = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.preprocess(im) for im in images[start:start + self.batch_size]]).to(self.device)
            tokens = self.tokenizer(list(prompts[start:start + self.batch_size])).to(self.device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.autocast):
                image_features = self.model.encode_image(pixels, normalize=True)
                text_features = self.model.encode_text(tokens, normalize=True)
                values.extend((image_features * text_features).sum(dim=-1).float().cpu().tolist())  # (B,)
        return values

    def score(self, images: list[Image.Image], prompts: list[str]) -> dict[str, list[float]]:
        if len(images) != len(prompts):
            raise ValueError(f"hpsv2: got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        if not images:
            return {METRIC: []}
        return self.cache.score(images, prompts, lambda ims, ps: {METRIC: self.cosines(ims, ps)})
