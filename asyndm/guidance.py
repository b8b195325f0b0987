"""Guidance rules: which model passes one step needs and how their outputs combine.

In the style of diffusers' guiders: a rule is a small object with one job, kept apart from the
schedule (which pixels follow which curve) and from the update step (the backend's). It calls
``model(latents, states, text, capture_rows=...)``, a backend's ``predict`` with the step's
``uniform`` flag and attention capture already bound, as often as it needs, and returns a
``Prediction``. ``capture_rows`` names the rows whose item maps make the masks (§6: the
conditional half of the guidance batch). ``context`` (a ``StepContext``) says where the step goes,
for rules that take extra steps of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from .backends.base import Prediction, PromptConditioning, StepContext, TextConditioning

ModelCall = Callable[..., torch.Tensor]


class GuidanceRule(Protocol):
    def __call__(self, model: ModelCall, latents: torch.Tensor, states: torch.Tensor,
                 cond: PromptConditioning, context: StepContext) -> Prediction: ...

    @property
    def guided(self) -> bool:
        """Whether the rule needs the negative prompt's conditioning."""


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """ε̂ = ε_uncond + s·(ε_cond − ε_uncond) in one batched call [negative; positive] (§4).

    ``scale`` ≤ 1 runs the conditional pass alone, as diffusers' pipelines do.
    """

    scale: float = 5.0

    @property
    def guided(self) -> bool:
        return self.scale > 1

    def __call__(self, model, latents, states, cond, context=None) -> Prediction:
        batch = len(latents)
        if not self.guided:
            return Prediction(model(latents, states, cond.positive, capture_rows=slice(0, batch)))
        text = TextConditioning.cat([cond.negative, cond.positive])
        out = model(torch.cat([latents] * 2), torch.cat([states] * 2), text, capture_rows=slice(batch, 2 * batch))
        uncond, positive = out.chunk(2)
        return Prediction(uncond + self.scale * (positive - uncond))
