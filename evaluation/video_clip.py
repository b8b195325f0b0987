"""CLIP on videos: alignment of every frame with the prompt, and how much consecutive frames agree.

- ``clip_video/frame_mean``, ``clip_video/frame_min``: the raw CLIP cosine of each frame with the
  prompt (the paper's CLIPScore, evaluation/clip_score.py), averaged over the frames and at its worst
  frame: an object that is right in most frames but lost in some shows in the minimum.
- ``clip_video/consecutive``: the mean cosine of consecutive frames' CLIP image features (temporal
  consistency), so that a gain in alignment bought with flicker is seen. A single frame has no pair:
  NaN, left out of the means.

It reads the frames of each video (asyndm/run_folder.py ``frame_files``); a run without videos gives
each image as its one frame.
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from evaluation.clip_score import ClipScore

FRAME_MEAN, FRAME_MIN, CONSECUTIVE = "clip_video/frame_mean", "clip_video/frame_min", "clip_video/consecutive"


class VideoClipScore(ClipScore):
    """Per-frame CLIPScore (mean, minimum) and consecutive-frame similarity with one open_clip model."""

    reads_frames = True  # score() gets each video's frames (evaluation/scoring.py)

    @classmethod
    def metric_names(cls, **cfg) -> list[str]:
        return [FRAME_MEAN, FRAME_MIN, CONSECUTIVE]

    def frame_features(self, frames: list[Image.Image], prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm features of every frame (F, D) and of the prompt (D,)."""
        parts = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start:start + self.batch_size]
            image_features, text_features = self.embed(chunk, [prompt] * len(chunk))
            parts.append(image_features)
        return torch.cat(parts), text_features[0]

    def score(self, videos: list[list[Image.Image]], prompts: list[str]) -> dict[str, list[float]]:
        if len(videos) != len(prompts):
            raise ValueError(f"clip_video: got {len(videos)} videos but {len(prompts)} prompts; pass one prompt per video")
        scores: dict[str, list[float]] = {FRAME_MEAN: [], FRAME_MIN: [], CONSECUTIVE: []}
        for frames, prompt in zip(videos, prompts):
            features, text = self.frame_features(frames, prompt)
            alignment = features @ text
            scores[FRAME_MEAN].append(alignment.mean().item())
            scores[FRAME_MIN].append(alignment.min().item())
            pairs = (features[1:] * features[:-1]).sum(dim=-1)
            scores[CONSECUTIVE].append(pairs.mean().item() if len(pairs) else math.nan)
        return scores
