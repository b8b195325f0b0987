"""Guidance rules: which model passes one step needs and how their outputs combine.

In the style of diffusers' guiders: a rule is a small object with one job, kept apart from the
schedule (which pixels follow which curve) and from the update step (the backend's). It calls
``model(latents, states, text, capture_rows=...)``, a backend's ``predict`` with the step's
``uniform`` flag and attention capture already bound, as often as it needs (a batched pass passes the
step's states once: they repeat for each conditioning), and returns a
``Prediction``. ``capture_rows`` names the rows whose item maps make the masks (§6: the
conditional half of the guidance batch). ``context`` (a ``StepContext``) says where the step goes,
for rules that take extra steps of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import torch

from .conditioning import PromptConditioning, TextConditioning

ModelCall = Callable[..., torch.Tensor]


@dataclass
class Prediction:
    """What a guidance rule hands the update step.

    ``output``: the guided model output x̂0 comes from. ``renoise``: the output the update's
    direction points along, where a rule separates the two (CFG++ uses the unconditional one).
    ``sample``: the latents the update starts from, where the rule moved them before predicting
    (Attend-and-Excite's latent update, Z-Sampling's zigzag); None keeps the loop's latents.
    ``alphas_cumprod``: the ᾱ table a DDIM update reads at each cell's timestep (below 0: the
    final ᾱ), where a rule indexes the noise schedule otherwise than the scheduler (CFG++'s released
    indexing); None: the scheduler's own.
    """

    output: torch.Tensor
    renoise: torch.Tensor | None = None
    sample: torch.Tensor | None = None
    alphas_cumprod: torch.Tensor | None = None


@dataclass
class StepContext:
    """What a guidance rule may need beyond the model call: where this step goes and how to step.

    Rules that take extra denoising or inversion steps (Z-Sampling) call ``backend.step`` with it;
    rules that need more of the model than its output use the backend's optional capabilities
    (``attention_probabilities``, ``blurred_self_attention``, ``latent_gradients``).
    """

    step: int
    num_steps: int
    next_states: torch.Tensor  # (B, h, w)
    eta: float
    generators: list
    backend: Any  # the family's Backend (asyndm/backends/base.py), for its step and capabilities
    tokens: Any = None  # the prompt's ItemTokens, for rules that act on them (Attend-and-Excite)


class GuidanceRule(Protocol):
    def __call__(self, model: ModelCall, latents: torch.Tensor, states: torch.Tensor,
                 cond: PromptConditioning, context: StepContext) -> Prediction: ...

    @property
    def guided(self) -> bool:
        """Whether the rule needs the negative prompt's conditioning."""


def guidance_passes(model: ModelCall, latents: torch.Tensor, states: torch.Tensor, cond: PromptConditioning,
                    negative: bool = True, positive: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(ε_negative, ε_positive): the model's outputs under the negative prompt and the prompt, the two
    batched in one call [negative; positive] where both are asked for. The prompt's rows give the
    call's item maps (§6); an output not asked for is None."""
    batch = len(latents)
    if not negative:
        return None, model(latents, states, cond.positive, capture_rows=slice(0, batch))
    if not positive:
        return model(latents, states, cond.negative), None
    text = TextConditioning.cat([cond.negative, cond.positive])
    out = model(torch.cat([latents] * 2), states, text, capture_rows=slice(batch, 2 * batch))
    return out.chunk(2)


def guided(model: ModelCall, latents: torch.Tensor, states: torch.Tensor, cond: PromptConditioning,
           scale: float) -> torch.Tensor:
    """ε_neg + scale·(ε_pos − ε_neg) for any scale, running only the passes it needs (0: the negative
    pass alone, 1: the prompt's alone). Rules that combine at several scales in one step use it."""
    negative, positive = guidance_passes(model, latents, states, cond, negative=scale != 1, positive=scale != 0)
    if positive is None or negative is None:
        return negative if positive is None else positive
    return negative + scale * (positive - negative)


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
        uncond, positive = guidance_passes(model, latents, states, cond, negative=self.guided)
        return Prediction(positive if uncond is None else uncond + self.scale * (positive - uncond))


def family_guidance(backend, guidance_scale: float, options: Mapping[str, Any]) -> GuidanceRule:
    """The model family's own guidance at the run's scale (classifier-free guidance for SD; Flux-dev
    embeds the scale and adds classifier-free guidance at ``true_cfg_scale``): the rule of ``dm``,
    ``dm_concave`` and ``asyndm`` (asyndm/variants.py)."""
    return backend.guidance_rule(guidance_scale, float(options.get("true_cfg_scale", 1.0)))
