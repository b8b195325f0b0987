"""QwenScore (METHOD.md §8): a chat VLM rates how well each image matches its prompt, 1 to 10.

The default judge is the paper's Qwen2.5-VL-7B-Instruct; any chat VLM that transformers loads
with `AutoModelForImageTextToText` can be set with `model`. The question is the versioned
`template` of conf/eval/vlm_judge.yaml, decoding is greedy, and the answer is parsed by
`parse_rating`. An answer with no single number on the scale is *unparseable*: its `vlm/score`
is NaN (summary means and n skip it) and its `vlm/unparseable` is 1.0, so the summary's mean of
`vlm/unparseable` is the unparseable rate. Nothing is dropped.
"""

from __future__ import annotations

import logging
import math
import re

from PIL import Image

from evaluation.vlm import fill_template, load_vlm, resolve_model

SCORE = "vlm/score"
UNPARSEABLE = "vlm/unparseable"
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
TEMPLATE_VERSION = "qwenscore-v1"
TEMPLATE = (
    'Does this image match the text prompt "{prompt}"? Rate how well the image matches the prompt on a scale '
    "from 1 to 10, where 1 means it does not match at all and 10 means every object, attribute and relation "
    "in the prompt is shown correctly. Answer with a single integer from 1 to 10 and nothing else.")

_log = logging.getLogger(__name__)
_NUMBER = r"-?\d+(?:\.\d+)?"
_STANDALONE = rf"(?<![\w.])({_NUMBER})(?!\w|\.\d)"  # not part of a word, an id or a longer decimal
_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_LABEL = r"(?:score|rating|rated|rate|grade)"


def parse_rating(answer: str, scale_min: float = 1, scale_max: float = 10) -> float | None:
    """The single rating in `answer` on [scale_min, scale_max], or None when there is none or several.

    Accepted: `7`, `**7**`, `7.`, `7/10`, `7 out of 10`, `Score: 7`, `Rating = 7.5`, `seven`, and a
    sentence holding one number (`I would rate it 7.`). Mentions of the scale itself (`1-10`,
    `1 to 10`, `/10`) are ignored. Unparseable: no number, two different numbers (`7-8`,
    `2 cats, 6`) unless one is labelled (`2 cats. Score: 6`), or a number off the scale (`0`, `11`).
    """
    text = re.sub(r"[*_`#]", " ", answer.lower())
    high = _number_text(scale_max)
    high_word = [w for w, i in _WORDS.items() if i == scale_max]
    high_pattern = "|".join([re.escape(high), *high_word])
    fractions = re.findall(rf"(?<![\w.])({_NUMBER})\s*(?:/|out of)\s*(?:{high_pattern})(?!\w|\.\d)", text)
    if fractions:
        return _single(fractions, scale_min, scale_max)
    # Drop mentions of the scale: "1-10", "1 to 10", "(out of 10)", "/10".
    low = re.escape(_number_text(scale_min))
    text = re.sub(rf"(?<![\w.]){low}\s*(?:-|–|—|to)\s*(?:{high_pattern})(?!\w|\.\d)", " ", text)
    text = re.sub(rf"(?:/|out of)\s*(?:{high_pattern})(?!\w|\.\d)", " ", text)
    labelled = re.findall(rf"{_LABEL}\s*(?:is|:|=|of)?\s*({_NUMBER})(?!\w|\.\d)", text)
    if labelled:
        return _single(labelled, scale_min, scale_max)
    numbers = re.findall(_STANDALONE, text)
    words = re.findall(rf"\b({'|'.join(_WORDS)})\b", text)
    return _single(numbers + [str(_WORDS[w]) for w in words], scale_min, scale_max)


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _single(found: list[str], scale_min: float, scale_max: float) -> float | None:
    values = {float(v) for v in found}
    if len(values) != 1:
        return None
    value = values.pop()
    return value if scale_min <= value <= scale_max else None


class VlmJudge:
    """Per-image alignment rating by a chat VLM (the paper's QwenScore), with unparseable answers counted."""

    @staticmethod
    def check_weights(model: str, **_) -> None:
        resolve_model(str(model), "eval.vlm_judge.model")

    def __init__(self, model: str = DEFAULT_MODEL, template_version: str = TEMPLATE_VERSION,
                 template: str = TEMPLATE, scale_min: float = 1, scale_max: float = 10,
                 max_new_tokens: int = 8, batch_size: int = 8, device: str = "auto", dtype: str = "auto"):
        if not scale_min < scale_max:
            raise ValueError(f"eval.vlm_judge: scale_min={scale_min} must be below scale_max={scale_max}")
        if int(batch_size) < 1 or int(max_new_tokens) < 1:
            raise ValueError(f"eval.vlm_judge: batch_size={batch_size} and max_new_tokens={max_new_tokens} "
                             f"must be >= 1")
        fill_template(template, "", "eval.vlm_judge.template")  # fail now, not after loading 16 GB
        self.template_version = template_version
        self.template = template
        self.scale = (float(scale_min), float(scale_max))
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.vlm = load_vlm(model, device, dtype, key="eval.vlm_judge.model")

    @classmethod
    def metric_names(cls, **cfg) -> list[str]:
        return [SCORE, UNPARSEABLE]

    def answers(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        """The judge's raw answers, one per image."""
        questions = [fill_template(self.template, p, "eval.vlm_judge.template") for p in prompts]
        return self.vlm.ask(images, questions, self.max_new_tokens, self.batch_size)

    def score(self, images: list[Image.Image], prompts: list[str]) -> dict[str, list[float]]:
        if len(images) != len(prompts):
            raise ValueError(f"vlm_judge: got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        answers = self.answers(images, prompts)
        ratings = [parse_rating(a, *self.scale) for a in answers]
        failed = [a for a, r in zip(answers, ratings) if r is None]
        if failed:
            _log.warning("vlm_judge (%s): %d of %d answers unparseable (score NaN), e.g. %r",
                         self.template_version, len(failed), len(answers), failed[:3])
        return {SCORE: [math.nan if r is None else r for r in ratings],
                UNPARSEABLE: [1.0 if r is None else 0.0 for r in ratings]}
