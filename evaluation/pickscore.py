"""PickScore (Kirstain et al., NeurIPS 2023): a CLIP-H fine-tuned on Pick-a-Pic preferences.

The score is the one of the PickScore README: `logit_scale.exp() * cosine(image, prompt)`, about
18–23 for SD-class images (logit_scale.exp() is 100). The model (`yuvalkirstain/PickScore_v1`) is
a transformers `CLIPModel`; images and prompts go through the processor of
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`. transformers 5 defaults to a torchvision image
processor; the PIL one (`CLIPImageProcessorPil`) is used because it is the processor PickScore
was trained and published with (transformers 4's default).
"""

from __future__ import annotations

import torch
from PIL import Image

from evaluation.score_cache import ScoreCache

METRIC = "pickscore/score"
MODEL = "yuvalkirstain/PickScore_v1"
PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
MAX_TOKENS = 77


class PickScore:
    """PickScore per (image, prompt)."""

    @staticmethod
    def check_weights(model: str, processor: str, **_) -> None:
        from evaluation.offline.tiny_pickscore import tiny_pickscore_dir
        from evaluation.vlm import resolve_model

        resolve_model(str(model), "eval.pickscore.model", tiny_dir=tiny_pickscore_dir)
        resolve_model(str(processor), "eval.pickscore.processor", tiny_dir=tiny_pickscore_dir,
                      marker="preprocessor_config.json")

    def __init__(self, model: str = MODEL, processor: str = PROCESSOR, batch_size: int = 16,
                 device: str = "auto", dtype: str = "float32"):
        from transformers import AutoTokenizer, CLIPModel
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        from evaluation.offline.tiny_pickscore import tiny_pickscore_dir
        from evaluation.vlm import check_vocab, pick_device_dtype, resolve_model

        if int(batch_size) < 1:
            raise ValueError(f"eval.pickscore.batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.device, torch_dtype = pick_device_dtype(device, dtype)
        model_source = resolve_model(str(model), "eval.pickscore.model", tiny_dir=tiny_pickscore_dir)
        processor_source = resolve_model(str(processor), "eval.pickscore.processor", tiny_dir=tiny_pickscore_dir,
                                         marker="preprocessor_config.json")
        self.image_processor = CLIPImageProcessorPil.from_pretrained(processor_source)
        self.tokenizer = AutoTokenizer.from_pretrained(processor_source)
        check_vocab(self.tokenizer, processor_source)
        self.model = CLIPModel.from_pretrained(model_source, dtype=torch_dtype).to(self.device).eval()
        self.cache = ScoreCache()

    @classmethod
    def metric_names(cls, **cfg) -> list[str]:
        return [METRIC]

    @torch.no_grad()
    def scores(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        values: list[float] = []
        dtype = next(self.model.parameters()).dtype
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            text = self.tokenizer(list(prompts[start:start + self.batch_size]), padding=True, truncation=True,
                                  max_length=MAX_TOKENS, return_tensors="pt").to(self.device)
            image_features = self.model.get_image_features(pixel_values=pixels.to(self.device, dtype)).pooler_output
            text_features = self.model.get_text_features(**text).pooler_output
            image_features = image_features.float() / image_features.float().norm(dim=-1, keepdim=True)
            text_features = text_features.float() / text_features.float().norm(dim=-1, keepdim=True)
            scale = self.model.logit_scale.exp().float()
            values.extend((scale * (image_features * text_features).sum(dim=-1)).cpu().tolist())  # (B,)
        return values

    def score(self, images: list[Image.Image], prompts: list[str]) -> dict[str, list[float]]:
        if len(images) != len(prompts):
            raise ValueError(f"pickscore: got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        if not images:
            return {METRIC: []}
        return self.cache.score(images, prompts, lambda ims, ps: {METRIC: self.scores(ims, ps)})
