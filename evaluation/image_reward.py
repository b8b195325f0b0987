"""ImageReward-v1.0 (METHOD.md §8), through the `image-reward` package — which cannot run beside
this project's pinned libraries.

`image-reward` 1.5 (the newest on PyPI) needs `timm==0.6.13` (open_clip_torch 3.3 needs
timm>=1.0.17), imports `apply_chunking_to_forward`, `find_pruneable_heads_and_indices` and
`prune_linear_layer` from `transformers.modeling_utils` (gone in transformers 5), and imports
OpenAI's `clip`, which is not on PyPI. So in this environment building the evaluator raises an
error that says so and how to score ImageReward in a separate environment. Where the package
does import (transformers 4.x, timm 0.6.13, fairscale 0.4.13, OpenAI clip), the evaluator calls
`ImageReward.load(checkpoint).score(prompt, image)` per image; the architecture is not copied here.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from evaluation.registry import register

METRIC = "imagereward/score"
DEFAULT_CHECKPOINT = "ImageReward-v1.0"

INCOMPATIBLE = (
    "eval.imagereward cannot run in this environment: the `image-reward` package (1.5, the newest) {reason}. "
    "It pins timm==0.6.13 (open_clip_torch 3.3 needs timm>=1.0.17), imports helpers removed from "
    "transformers 5 (apply_chunking_to_forward, find_pruneable_heads_and_indices, prune_linear_layer from "
    "transformers.modeling_utils) and needs OpenAI's `clip` from GitHub. Score ImageReward in a separate "
    "environment: python -m venv .venv-imagereward && .venv-imagereward/bin/pip install -e . "
    "'transformers>=4.44,<5' 'open_clip_torch<3' timm==0.6.13 fairscale==0.4.13 image-reward==1.5 "
    "git+https://github.com/openai/CLIP.git, then run `asyndm-eval <run_dir> eval=[imagereward]` with that "
    "environment (results.csv gains the imagereward/score rows; other metrics are kept). Or drop imagereward "
    "from eval=[...]")


def _import_image_reward(reason_if_missing: str):
    try:
        import ImageReward  # noqa: N813  (the package's module name)
    except ImportError as error:
        reason = reason_if_missing if isinstance(error, ModuleNotFoundError) and error.name == "ImageReward" \
            else f"fails to import ({type(error).__name__}: {error})"
        raise RuntimeError(INCOMPATIBLE.format(reason=reason)) from error
    return ImageReward


@register("imagereward")
class ImageRewardScore:
    """ImageReward-v1.0 reward per (image, prompt), from the `image-reward` package when it imports."""

    def __init__(self, checkpoint: str = DEFAULT_CHECKPOINT, med_config: str | None = None,
                 download_root: str | None = None, device: str = "auto", batch_size: int = 16):
        from evaluation.vlm import pick_device_dtype

        image_reward = _import_image_reward("is not installed")
        self.device, _ = pick_device_dtype(device, "float32")
        if checkpoint != DEFAULT_CHECKPOINT and not Path(checkpoint).expanduser().is_file():
            raise FileNotFoundError(f"eval.imagereward.checkpoint={checkpoint!r} is neither {DEFAULT_CHECKPOINT!r} "
                                    f"nor an existing file; set it to ImageReward.pt (hub: THUDM/ImageReward)")
        if med_config is not None and not Path(med_config).expanduser().is_file():
            raise FileNotFoundError(f"eval.imagereward.med_config={med_config!r} does not exist; set it to the "
                                    f"med_config.json of THUDM/ImageReward, or null to download it")
        path = checkpoint if checkpoint == DEFAULT_CHECKPOINT else str(Path(checkpoint).expanduser())
        self.model = image_reward.load(path, device=str(self.device), download_root=download_root,
                                       med_config=med_config)

    @classmethod
    def metric_names(cls, **cfg) -> list[str]:
        return [METRIC]

    def score(self, images: list[Image.Image], prompts: list[str]) -> dict[str, list[float]]:
        if len(images) != len(prompts):
            raise ValueError(f"imagereward: got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        return {METRIC: [float(self.model.score(p, im.convert("RGB"))) for im, p in zip(images, prompts)]}
