"""CFG++'s options (Chung et al., ICLR 2025; github.com/CFGpp-diffusion/CFGpp): the rule is in
asyndm/baselines/cfgpp.py. Also read by ``asyndm+cfgpp``."""

from __future__ import annotations

from dataclasses import dataclass

from ..variants import Variant

NOISE_LEVELS = ("released", "diffusers")


@dataclass(frozen=True)
class CFGppOptions:
    scale: float = 0.6  # λ in [0, 1] (the official README's text-to-image value); replaces sample.guidance_scale
    # which ᾱ the step reads at UNet timestep t: released = the official code's ᾱ[t − 1];
    # diffusers = the scheduler's ᾱ[t], as every other variant (docs/baselines.md)
    noise_levels: str = "released"

    def __post_init__(self):
        if self.noise_levels not in NOISE_LEVELS:
            raise ValueError(f"variant.cfgpp.noise_levels={self.noise_levels!r}: choose {' or '.join(NOISE_LEVELS)}")


VARIANT = Variant(
    "cfgpp", "sync", "CFG++ (Chung et al. 2025): guided x̂0, unconditional re-noising direction, λ = 0.6, "
    "the official code's noise levels",
    rule="asyndm.baselines.cfgpp:cfgpp_guidance", options=CFGppOptions,
    needs=("classifier_free_guidance", "renoised_step",),
)
