"""CLIPScore as the paper reports it: the raw cosine of CLIP image and text embeddings.

The paper's numbers (about 0.37 for ViT-H-14) are the plain cosine, not CLIPScore's
`100 * max(cos, 0)`, so that is what `clip/cosine_raw` holds. open_clip is used directly because
torchmetrics' CLIPScore fails with transformers 5 (docs/PITFALLS.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image


METRIC = "clip/cosine_raw"
TINY = "tiny"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _cached_tag_file(arch: str, tag: str) -> str | None:
    """Local file of open_clip's pretrained tag if it is already downloaded, else None."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch, tag)
    if cfg.get("file"):
        return cfg["file"] if Path(cfg["file"]).is_file() else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        if filename == "open_clip_pytorch_model.bin":
            candidates.insert(0, "open_clip_model.safetensors")
        for name in candidates:
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str) and Path(found).is_file():
                return found
        return None
    url = cfg.get("url", "")
    if url:
        target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        return str(target) if target.is_file() else None
    return None


def resolve_weights(arch: str, pretrained: str) -> tuple[str, str]:
    """(open_clip model name, `pretrained` argument) for a config, failing fast when offline.

    `arch: tiny` (with `pretrained: tiny`) selects the tiny offline model of `tiny_clip`.
    `pretrained` is either an open_clip tag or a local checkpoint file.
    """
    import open_clip

    if arch == TINY or pretrained == TINY:
        if not (arch == TINY and pretrained in (TINY, None, "")):
            raise ValueError(f"the tiny CLIP needs arch=tiny and pretrained=tiny together, got "
                             f"arch={arch!r} pretrained={pretrained!r}; set both, or use eval=[clip_tiny]")
        from evaluation.offline.tiny_clip import TINY_ARCH, tiny_clip_checkpoint

        return TINY_ARCH, str(tiny_clip_checkpoint())
    if open_clip.get_model_config(arch) is None:
        raise ValueError(f"unknown open_clip arch {arch!r}; use 'tiny' or one of open_clip.list_models(), "
                         f"e.g. ViT-H-14")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained in tags:
        if _offline() and _cached_tag_file(arch, pretrained) is None:
            raise FileNotFoundError(
                f"CLIP weights {arch}/{pretrained} are not in the local cache and HF_HUB_OFFLINE is set. "
                f"Download them on a machine with internet (python -c \"import open_clip; "
                f"open_clip.create_model('{arch}', pretrained='{pretrained}')\") and copy the HF cache, or "
                f"set eval.clip.pretrained=/path/to/open_clip_pytorch_model.bin, or use "
                f"eval.clip.arch=tiny eval.clip.pretrained=tiny for a test run")
        return arch, pretrained
    path = Path(pretrained).expanduser()
    if path.is_file():
        return arch, str(path)
    raise FileNotFoundError(
        f"CLIP weights {pretrained!r} for arch {arch!r} are neither a local file nor an open_clip tag "
        f"(tags for {arch}: {', '.join(tags) or 'none'}). Set eval.clip.pretrained to an existing "
        f"checkpoint file or a tag")


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"eval.clip.device={device!r} but CUDA is not available; use device=auto or cpu")
    return torch.device(device)


class ClipScore:
    """Raw image-text cosine from an open_clip model (default: the paper's ViT-H-14, LAION-2B)."""

    @staticmethod
    def check_weights(arch: str, pretrained: str, **_) -> None:
        resolve_weights(arch, pretrained)

    def __init__(self, arch: str = "ViT-H-14", pretrained: str = "laion2b_s32b_b79k",
                 batch_size: int = 32, device: str = "auto", precision: str = "fp32"):
        """Loads the model; ``check_weights`` with the same settings says first whether it can be had."""
        import open_clip

        model_name, weights = resolve_weights(arch, pretrained)
        self.device = _pick_device(device)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"eval.clip.batch_size must be >= 1, got {batch_size}")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=weights, device=self.device, precision=precision)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)

    @classmethod
    def metric_names(cls, **cfg) -> list[str]:
        return [METRIC]

    @torch.no_grad()
    def embed(self, images: list[Image.Image], prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm image and text features, (N, D) each, on the CPU in float32."""
        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        tokens = self.tokenizer(list(prompts)).to(self.device)
        dtype = next(self.model.parameters()).dtype
        image_features = self.model.encode_image(pixels.to(dtype)).float()
        text_features = self.model.encode_text(tokens).float()
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return image_features.cpu(), text_features.cpu()

    def score(self, images: list[Image.Image], prompts: list[str]) -> dict[str, list[float]]:
        if len(images) != len(prompts):
            raise ValueError(f"clip: got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        values: list[float] = []
        for start in range(0, len(images), self.batch_size):
            image_features, text_features = self.embed(images[start:start + self.batch_size],
                                                       prompts[start:start + self.batch_size])
            values.extend((image_features * text_features).sum(dim=-1).tolist())  # (B,)
        return {METRIC: values}
