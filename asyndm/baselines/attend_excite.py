"""Attend-and-Excite (Chefer et al., SIGGRAPH 2023, arXiv 2301.13826).

Official code: github.com/yuval-alaluf/Attend-and-Excite (``pipeline_attend_and_excite.py``,
``config.py``, ``run.py``); diffusers keeps it as the deprecated
``StableDiffusionAttendAndExcitePipeline``, which the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..attention_control import smooth
from ..conditioning import TextConditioning
from ..guidance import Prediction, guidance_passes
from ..options.attend_excite import AttendExciteOptions


@dataclass(frozen=True)
class AttendAndExcite(AttendExciteOptions):
    """The paper's Algorithm 1 (one Attend-and-Excite step) before each of the first steps, then CFG.

    For each image, at step i < ``max_iter_to_alter``: run the model on the prompt alone with
    gradients, average the cross-attention maps of the ``attention_res``-sided layers over layers and
    heads, drop the start token (and everything from the end token on with ``normalize_eot``, else
    just the last position), softmax(100·A) over the tokens, smooth each item token's map (3×3,
    σ = 0.5, reflect-padded) and take its maximum; the loss is max over item tokens of
    max(0, 1 − max attention), and the latents move by z ← z − α_i·∇_z loss with
    α_i = ``scale_factor``·√(linspace(1.0, 0.5, N)[i]) (``scale_range``). At the steps listed in
    ``thresholds`` the update first repeats ("iterative refinement", at most
    ``max_refinement_steps`` times) until every item token's max attention reaches the threshold.
    The loop then takes CFG's step from the updated latents (the rule's ``sample``).

    Defaults (the official ``RunConfig``, = diffusers' pipeline): ``max_iter_to_alter`` 25,
    ``thresholds`` {0: 0.05, 10: 0.5, 20: 0.8} (step indices, as released, also for other N),
    ``scale_factor`` 20, ``scale_range`` [1.0, 0.5], ``attention_res`` 16 (the grid side: latent/4
    for 512 px SD), ``max_refinement_steps`` 20, ``normalize_eot`` null = as the official
    ``run.py`` sets it: true for SD 2.x (a tokenizer that pads with a token other than its end
    token), false for SD 1.x, where it equals diffusers' pipeline. Item tokens: every token
    position of every item (``prompts.item_tokens``). w = the run's ``sample.guidance_scale``
    (official 7.5; the paired comparison keeps dm's 5.0).

    Pairing: the latent update is deterministic, so no noise is drawn beyond the step's own; extra
    cost per updated step and image: one forward and backward pass of the prompt alone (up to 21
    more at the threshold steps), one image at a time as released (bounded memory).
    """

    guidance_scale: float = 5.0  # w: the run's sample.guidance_scale
    pads_with_end_token: bool = True  # the backend's tokenizer decides

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1

    def __call__(self, model, latents, states, cond, context) -> Prediction:
        if context.step < self.max_iter_to_alter or context.step in self.thresholds:
            if context.tokens is None:
                raise ValueError("attend_excite needs the prompt's item tokens (StepContext.tokens)")
            step_sizes = self.scale_factor * np.sqrt(np.linspace(*self.scale_range, context.num_steps))
            with context.backend.latent_gradients(), context.backend.attention_probabilities(
                    latents, [self.attention_res], kinds=("attn2",)) as record:
                latents = torch.cat([
                    self.excite(model, latents[j:j + 1], states[j:j + 1], _row(cond.positive, j), record,
                                context, float(step_sizes[context.step]))
                    for j in range(len(latents))])
        uncond, positive = guidance_passes(model, latents, states, cond, negative=self.guided)
        eps = positive if uncond is None else uncond + self.guidance_scale * (positive - uncond)
        return Prediction(eps, sample=latents)

    def excite(self, model, latent, states, text, record, context, step_size: float) -> torch.Tensor:
        """One image's update (diffusers' loop body, in the same order)."""
        latent, loss = self.loss(model, latent, states, text, record, context.tokens)
        threshold = self.thresholds.get(context.step)
        if threshold is not None and loss > 1.0 - threshold:
            iteration = 0
            while loss > max(0.0, 1.0 - threshold):
                iteration += 1
                latent, loss = self.loss(model, latent, states, text, record, context.tokens)
                if loss != 0:
                    latent = latent - step_size * torch.autograd.grad(loss, [latent])[0]
                if iteration >= self.max_refinement_steps:
                    break
            latent, loss = self.loss(model, latent, states, text, record, context.tokens)
        if context.step < self.max_iter_to_alter and loss != 0:
            latent = latent - step_size * torch.autograd.grad(loss, [latent])[0]
        return latent.detach()

    def loss(self, model, latent, states, text, record, tokens) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent as a leaf with gradients, the loss) for one image: max over items of 1 − max attention."""
        latent = latent.detach().requires_grad_(True)
        model(latent, states, text)
        maps = record.mean(record.layers("attn2"))[0]  # (g², L), over layers and heads
        end = self.text_end(tokens)
        probs = torch.softmax(maps[:, 1:end] * 100, dim=-1)  # without the start token
        side = self.attention_res
        indices = [p - 1 for positions in tokens.positions for p in positions]
        peaks = smooth(probs[:, indices].T.reshape(len(indices), side, -1)).amax(dim=(1, 2))
        return latent, torch.clamp(1.0 - peaks, min=0).max()

    def text_end(self, tokens) -> int:
        """The softmax's end: the end token's position with ``normalize_eot``, else -1 (the last position)."""
        normalize = (not self.pads_with_end_token) if self.normalize_eot is None else self.normalize_eot
        if not normalize:
            return -1
        if tokens.length is None:
            raise ValueError("variant.attend_excite.normalize_eot needs the prompt's token count, which this "
                             "backend does not give; set variant.attend_excite.normalize_eot=false")
        return tokens.length - 1


def _row(text: TextConditioning, j: int) -> TextConditioning:
    return TextConditioning({key: value[j:j + 1] for key, value in text.tensors.items()})


def attend_excite_guidance(backend, guidance_scale, options):
    tokenizer = getattr(backend, "tokenizer", None)
    pads = tokenizer is None or tokenizer.pad_token_id == tokenizer.eos_token_id
    options = dict(options)
    if "thresholds" in options:
        options["thresholds"] = {int(k): float(v) for k, v in dict(options["thresholds"]).items()}
    return AttendAndExcite(guidance_scale=guidance_scale, pads_with_end_token=pads, **options)

