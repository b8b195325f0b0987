"""CFG++: manifold-constrained classifier-free guidance (Chung et al., ICLR 2025, arXiv 2406.08070).

Official code: github.com/CFGpp-diffusion/CFGpp at 8035352, ``latent_diffusion.py`` (SD 1.x/2.x)
and ``latent_sdxl.py`` (SDXL), solver ``ddim_cfg++`` (``BaseDDIMCFGpp``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..guidance import Prediction, guidance_passes
from ..options.cfgpp import CFGppOptions


def released_alphas_cumprod(alphas_cumprod: torch.Tensor, final_alpha: torch.Tensor) -> torch.Tensor:
    """The ᾱ table the official sampler indexes with the UNet's timestep t: the scheduler's with one
    entry prepended (``latent_diffusion.py`` l. 80, ``latent_sdxl.py`` l. 67), so step t reads
    ᾱ[t − 1] (ᾱ(901) = 0.014151 where diffusers' DDIM has 0.014005). Past the last step both
    official files go to ``final_alpha_cumprod`` (``alpha()``, l. 88-89; SDXL's sampler reads
    ``alphas_cumprod[t - skip]`` with a negative index there, but returns the last x̂0 instead).

    The prepended entry: the official 1.0 is read only where a step lands on t = 0 exactly, which the
    SD and SDXL schedules (``steps_offset`` = 1: t ≡ 1 mod Y/N) never do; here it is the final ᾱ,
    because asyndm's curves end at state 0 (``asyndm+cfgpp`` with every pixel on the linear curve is
    then ``cfgpp``). With ``set_alpha_to_one`` the two are the same 1.0."""
    return torch.cat([final_alpha.reshape(1).to(alphas_cumprod), alphas_cumprod])


@dataclass(frozen=True)
class CFGpp(CFGppOptions):
    """CFG++'s DDIM step (the paper's DDIM with CFG++; ``BaseDDIMCFGpp.sample`` in the official code).

    With λ ∈ [0, 1] in place of CFG's ω, the Tweedie estimate comes from the guided noise and the
    re-noising direction from the *unconditional* one:

        ε̂_λ = ε_∅ + λ·(ε_c − ε_∅),   x̂0 = (x_t − √(1−ᾱ_t)·ε̂_λ) / √ᾱ_t,
        x_{t−1} = √ᾱ_{t−1}·x̂0 + √(1−ᾱ_{t−1}−σ²)·ε_∅ + σ·z.

    The rule returns ε̂_λ as the output and ε_∅ as ``renoise``; the backend's DDIM step does the rest
    per pixel, so CFG++ runs on any schedule (``asyndm+cfgpp``).

    Defaults: ``scale`` λ = 0.6, the official README's text-to-image setting (its README: λ in
    [0, 1] has an effect similar to CFG's ω in [1, 12.5]). The run's ``sample.guidance_scale`` is not
    used: λ replaces it. λ = 0 is unconditional DDIM (on the released noise levels by default).

    ``noise_levels``: which ᾱ the step reads at UNet timestep t. ``released`` (default) indexes the
    schedule as the official code does, ᾱ[t − 1] (``released_alphas_cumprod``), so that η = 0 gives
    the official sampler's update; ``diffusers`` reads the scheduler's own ᾱ[t], as diffusers' DDIM
    and every other variant do. The model is called at t either way.

    Differences from the official sampler: it is deterministic DDIM (η = 0) and decodes the last
    x̂0; here the run's η applies (σ above, from the same ᾱ) and the last step goes to
    ᾱ = ``final_alpha_cumprod``, re-noised along ε_∅, as every variant does (docs/baselines.md).

    Pairing: one batched call [negative; prompt] per step (CFG's cost); the step draws the run's
    per-step noise from each image's generator as dm does, so the images start from and are driven
    by the same noise as dm's.
    """

    @property
    def guided(self) -> bool:
        return True  # ε_∅ is the re-noising direction at every λ

    def __call__(self, model, latents, states, cond, context=None) -> Prediction:
        uncond, positive = guidance_passes(model, latents, states, cond)
        table = None
        if self.noise_levels == "released":
            alphas = getattr(context.backend, "alphas", None)  # the DDIM backends' alphas_cumprod
            if alphas is None:
                raise NotImplementedError(f"CFG++ steps on a DDIM noise schedule; the {context.backend.family} "
                                          f"backend has none")
            table = released_alphas_cumprod(alphas, context.backend.final_alpha)
        return Prediction(uncond + self.scale * (positive - uncond), renoise=uncond, alphas_cumprod=table)


def cfgpp_guidance(backend, guidance_scale, options):
    return CFGpp(**options)  # λ replaces the run's scale
