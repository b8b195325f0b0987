"""CFG++: manifold-constrained classifier-free guidance (Chung et al., ICLR 2025, arXiv 2406.08070).

Official code: github.com/CFGpp-diffusion/CFGpp, ``latent_diffusion.py``, solver ``ddim_cfg++``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backends.base import Prediction
from ..guidance import guidance_passes
from ..variants import Variant, register_variant


@dataclass(frozen=True)
class CFGpp:
    """CFG++'s DDIM step (the paper's DDIM with CFG++; ``BaseDDIMCFGpp.sample`` in the official code).

    With λ ∈ [0, 1] in place of CFG's ω, the Tweedie estimate comes from the guided noise and the
    re-noising direction from the *unconditional* one:

        ε̂_λ = ε_∅ + λ·(ε_c − ε_∅),   x̂0 = (x_t − √(1−ᾱ_t)·ε̂_λ) / √ᾱ_t,
        x_{t−1} = √ᾱ_{t−1}·x̂0 + √(1−ᾱ_{t−1}−σ²)·ε_∅ + σ·z.

    The rule returns ε̂_λ as the output and ε_∅ as ``renoise``; the backend's DDIM step does the rest
    per pixel, so CFG++ runs on any schedule (``asyndm+cfgpp``).

    Defaults: ``scale`` λ = 0.6, the official README's text-to-image setting (its README: λ in
    [0, 1] has an effect similar to CFG's ω in [1, 12.5]). The run's ``sample.guidance_scale`` is not
    used: λ replaces it. λ = 0 is unconditional DDIM.

    Differences from the official sampler: it is deterministic DDIM (η = 0) and decodes the last
    x̂0; here the run's η applies (σ above; η = 0 gives the official update exactly) and the last
    step goes to ᾱ = ``final_alpha_cumprod`` as every variant does.

    Pairing: one batched call [negative; prompt] per step (CFG's cost); the step draws the run's
    per-step noise from each image's generator as dm does, so the images start from and are driven
    by the same noise as dm's.
    """

    scale: float = 0.6

    @property
    def guided(self) -> bool:
        return True  # ε_∅ is the re-noising direction at every λ

    def __call__(self, model, latents, states, cond, context=None) -> Prediction:
        uncond, positive = guidance_passes(model, latents, states, cond)
        return Prediction(uncond + self.scale * (positive - uncond), renoise=uncond)


register_variant(Variant(
    "cfgpp", "sync", "CFG++ (Chung et al. 2025): guided x̂0, unconditional re-noising direction, λ = 0.6",
    guidance=lambda backend, guidance_scale, options: CFGpp(**options), options=CFGpp,
))
