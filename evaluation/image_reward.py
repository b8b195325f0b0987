"""ImageReward-v1.0 (METHOD.md §8) in the project's own environment.

The official `ImageReward.pt` and `med_config.json` (hub repo THUDM/ImageReward) load into
transformers' BLIP classes (`image_reward_model`); prompts go through the official tokenizer
(`bert-base-uncased` plus BLIP's [DEC] and [ENC] tokens, padded and cut to 35 tokens) and images
through the official preprocessing (bicubic resize of the short side, centre crop, CLIP's
normalisation). Scores are on the official scale: the reward standardised by the training set's
mean and std (paper's animal set: DM 0.754, AsynDM 0.922). scripts/parity_image_reward.py
measures the agreement with the `image-reward` package (docs/evaluation.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from evaluation.score_cache import ScoreCache
from evaluation.weights import hub_file, local_file, looks_like_path

METRIC = "imagereward/score"
DEFAULT_CHECKPOINT = "ImageReward-v1.0"
HUB_REPO = "THUDM/ImageReward"
TOKENIZER = "bert-base-uncased"
TINY = "tiny"
VIT_L_HEADS = 16  # ViT-L/16: the head count is the one shape a checkpoint does not record


def resolve_files(checkpoint: str, med_config: str | None) -> tuple[Path, Path]:
    """(ImageReward.pt, med_config.json) for the config values, failing at once when one is missing.

    `checkpoint` is `ImageReward-v1.0` (the hub repo THUDM/ImageReward), a hub repo id holding
    both files, a local ImageReward.pt, or `tiny`. `med_config` null takes the file of the same
    repo, or the med_config.json beside a local checkpoint.
    """
    key = "eval.imagereward.checkpoint"
    if checkpoint == TINY:
        from evaluation.offline.tiny_image_reward import tiny_image_reward_dir

        folder = tiny_image_reward_dir()
        return folder / "ImageReward.pt", Path(med_config) if med_config else folder / "med_config.json"
    fix = f"set {key}=/path/to/ImageReward.pt (with med_config.json beside it), or use eval=[imagereward_tiny] for a test run"
    if looks_like_path(checkpoint):
        weights = local_file(checkpoint, key, "ImageReward.pt of hub repo THUDM/ImageReward")
        config = med_config or str(weights.with_name("med_config.json"))
    else:
        repo = HUB_REPO if checkpoint == DEFAULT_CHECKPOINT else checkpoint
        weights = hub_file(repo, "ImageReward.pt", key, fix)
        config = med_config or str(hub_file(repo, "med_config.json", key, fix))
    return weights, local_file(config, "eval.imagereward.med_config", "the med_config.json of THUDM/ImageReward")


def load_tokenizer(source: str, vocab_size: int):
    """BLIP's tokenizer: BERT's WordPiece plus [DEC] (bos) and [ENC], as the official `init_tokenizer`."""
    from transformers import BertTokenizer

    from evaluation.offline.tiny_image_reward import tiny_image_reward_dir
    from evaluation.vlm import check_vocab, resolve_model

    source = resolve_model(source, "eval.imagereward.tokenizer", tiny_dir=tiny_image_reward_dir, marker="vocab.txt")
    tokenizer = BertTokenizer.from_pretrained(source)
    check_vocab(tokenizer, source)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    if len(tokenizer) > vocab_size:
        raise ValueError(f"tokenizer {source!r} has {len(tokenizer)} tokens but the checkpoint's text encoder "
                         f"embeds {vocab_size}; use bert-base-uncased (the official tokenizer)")
    return tokenizer


def image_transform(image_size: int):
    """The official preprocessing: bicubic resize of the short side, centre crop, RGB, CLIP normalisation."""
    from torchvision import transforms

    from evaluation.image_reward_model import IMAGE_MEAN, IMAGE_STD

    return transforms.Compose([
        transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(image_size),
        lambda image: image.convert("RGB"),
        transforms.ToTensor(),
        transforms.Normalize(IMAGE_MEAN, IMAGE_STD),
    ])


class ImageRewardScore:
    """ImageReward-v1.0 reward per (image, prompt), on the BLIP port of the official checkpoint."""

    @staticmethod
    def check_weights(checkpoint: str, med_config: str | None, **_) -> None:
        resolve_files(str(checkpoint), med_config)

    def __init__(self, checkpoint: str = DEFAULT_CHECKPOINT, med_config: str | None = None,
                 tokenizer: str = TOKENIZER, vision_heads: int = VIT_L_HEADS, batch_size: int = 16,
                 device: str = "auto"):
        from evaluation.image_reward_model import MAX_TEXT_TOKENS, load_image_reward
        from evaluation.vlm import pick_device_dtype

        if int(batch_size) < 1:
            raise ValueError(f"eval.imagereward.batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.device, _ = pick_device_dtype(device, "float32")
        weights, config = resolve_files(str(checkpoint), med_config)
        self.model = load_image_reward(weights, config, int(vision_heads)).to(self.device)
        self.tokenizer = load_tokenizer(str(tokenizer), self.model.text.config.vocab_size)
        self.max_tokens = MAX_TEXT_TOKENS
        self.preprocess = image_transform(self.model.vision.config.image_size)
        self.cache = ScoreCache()

    @classmethod
    def metric_names(cls, **cfg) -> list[str]:
        return [METRIC]

    @torch.no_grad()
    def rewards(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        """The reward of each (image, prompt) pair, computed in batches of `batch_size`."""
        values: list[float] = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.preprocess(im) for im in images[start:start + self.batch_size]])
            tokens = self.tokenizer(list(prompts[start:start + self.batch_size]), padding="max_length",
                                    truncation=True, max_length=self.max_tokens, return_tensors="pt")
            reward = self.model(pixels.to(self.device), tokens["input_ids"].to(self.device),
                                tokens["attention_mask"].to(self.device))  # (B,)
            values.extend(reward.cpu().tolist())
        return values

    def score(self, images: list[Image.Image], prompts: list[str]) -> dict[str, list[float]]:
        if len(images) != len(prompts):
            raise ValueError(f"imagereward: got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        if not images:
            return {METRIC: []}
        return self.cache.score(images, prompts, lambda ims, ps: {METRIC: self.rewards(ims, ps)})
