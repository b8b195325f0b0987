"""QwenScore on videos: the VLM judge (evaluation/vlm_judge.py) rates a few evenly spaced frames of
each video against the prompt, the same question as for images, one answer per frame.

- ``vlm_video/score``: the mean rating over the judged frames (unparseable answers left out; NaN
  when none parses), ``vlm_video/min``: the worst judged frame, ``vlm_video/unparseable``: the
  share of the judged frames whose answer had no rating.

``frames`` (default 3: the first, middle and last) keeps the cost at a few VLM calls per video.
"""

from __future__ import annotations

import math

from PIL import Image

from evaluation.vlm_judge import VlmJudge, parse_rating

SCORE, MINIMUM, UNPARSEABLE = "vlm_video/score", "vlm_video/min", "vlm_video/unparseable"


def spaced_frames(count: int, chosen: int) -> list[int]:
    """``chosen`` evenly spaced frame indices of ``count`` frames, first and last included (fewer frames: all)."""
    if count <= chosen:
        return list(range(count))
    if chosen == 1:
        return [(count - 1) // 2]
    return sorted({round(i * (count - 1) / (chosen - 1)) for i in range(chosen)})


class VideoVlmJudge(VlmJudge):
    """The VLM judge's rating of a few frames per video: mean, minimum and unparseable share."""

    reads_frames = True  # score() gets each video's frames (evaluation/scoring.py)

    def __init__(self, frames: int = 3, **settings):
        if int(frames) < 1:
            raise ValueError(f"eval.vlm_video.frames={frames}: judge at least 1 frame per video")
        self.frames = int(frames)
        super().__init__(**settings)

    @classmethod
    def metric_names(cls, **cfg) -> list[str]:
        return [SCORE, MINIMUM, UNPARSEABLE]

    def score(self, videos: list[list[Image.Image]], prompts: list[str]) -> dict[str, list[float]]:
        if len(videos) != len(prompts):
            raise ValueError(f"vlm_video: got {len(videos)} videos but {len(prompts)} prompts; pass one prompt per video")
        chosen = [[frames[i] for i in spaced_frames(len(frames), self.frames)] for frames in videos]
        answers = iter(self.answers([f for c in chosen for f in c], [p for c, p in zip(chosen, prompts) for _ in c]))
        scores: dict[str, list[float]] = {SCORE: [], MINIMUM: [], UNPARSEABLE: []}
        for frames in chosen:
            ratings = [parse_rating(next(answers), *self.scale) for _ in frames]
            parsed = [r for r in ratings if r is not None]
            scores[SCORE].append(sum(parsed) / len(parsed) if parsed else math.nan)
            scores[MINIMUM].append(min(parsed) if parsed else math.nan)
            scores[UNPARSEABLE].append(1 - len(parsed) / len(ratings))
        return scores
