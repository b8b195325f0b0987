"""SEG: smoothed energy guidance (Hong, NeurIPS 2024, arXiv 2408.00760).

Official code: github.com/SusungHong/SEG-SDXL, ``pipeline_seg.py`` (``StableDiffusionXLSEGPipeline``
and its ``SEGCFGSelfAttnProcessor``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..guidance import Prediction, guidance_passes
from ..options.seg import SEGOptions


@dataclass(frozen=True)
class SmoothedEnergyGuidance(SEGOptions):
    """SEG's guidance, combined with CFG as the official pipeline combines them:

        ε̂ = ε_c + (w − 1)·(ε_c − ε_∅) + s·(ε_c − ε̃_c),

    where ε̃_c is the prompt's prediction with the self-attention *queries* of the chosen layers
    Gaussian-blurred with σ (the paper: blurring the queries blurs the attention weights, i.e. smooths the
    energy landscape; σ → ∞ makes every query the mean query). With w ≤ 1 the CFG term is dropped,
    as in the pipeline. The blur is the backend's ``blurred_self_attention`` (a hook on the query
    projection, removed after the call).

    Defaults (the official ``__call__``): ``scale`` s = 3.0 ("we generally fix this parameter to
    3.0"), ``blur_sigma`` σ = .inf (the pipeline's default 9999999 is above its infinite-blur
    threshold 9999; the README's example uses 100), ``layers`` = [mid] (``seg_applied_layers``;
    any of down, mid, up). w = the run's ``sample.guidance_scale`` (official example: 1.0, SEG
    alone; the paired comparison keeps dm's 5.0). s = 0 is plain CFG, which is dm.

    Differences: the official pipeline runs the blurred pass as a third third of one batched call;
    here it is a second call of the same size (same arithmetic, one more kernel launch).

    Pairing: no extra noise; one extra UNet pass of the batch per step (1.5× dm's passes under CFG).
    """

    guidance_scale: float = 5.0  # w: the run's sample.guidance_scale

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1

    def __call__(self, model, latents, states, cond, context) -> Prediction:
        uncond, positive = guidance_passes(model, latents, states, cond, negative=self.guided)
        eps = positive if uncond is None else positive + (self.guidance_scale - 1) * (positive - uncond)
        if self.scale == 0:  # the pipeline's do_seg = False: plain CFG
            return Prediction(positive if uncond is None else uncond + self.guidance_scale * (positive - uncond))
        with context.backend.blurred_self_attention(latents, self.blur_sigma, tuple(self.layers)):
            perturbed = model(latents, states, cond.positive)
        return Prediction(eps + self.scale * (positive - perturbed))


def seg_guidance(backend, guidance_scale, options):
    return SmoothedEnergyGuidance(guidance_scale=guidance_scale, **options)
