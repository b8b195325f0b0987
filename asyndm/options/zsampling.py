"""Z-Sampling's options (Bai et al., ICLR 2025; github.com/xie-lab-ml/Zigzag-Diffusion-Sampling):
denoise, invert, denoise again at each of the first λ steps; γ1 is sample.guidance_scale. The rule is
in asyndm/baselines/zsampling.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..variants import Variant

INVERSIONS = ("released", "exact")


@dataclass(frozen=True)
class ZSamplingOptions:
    inversion_scale: float = 0.0  # γ2, the inversion's guidance (official 0)
    zigzag_steps: Optional[int] = None  # λ: zigzag at steps 0 … λ-1; null = every step but the last (official 49 of 50)
    rounds: int = 1  # T_max, zigzags per step
    # released: the official code's DDIMInverseScheduler arithmetic; exact: the DDIM inversion t' → t
    inversion: str = "released"

    def __post_init__(self):
        if self.inversion not in INVERSIONS:
            raise ValueError(f"variant.zsampling.inversion={self.inversion!r}: choose {' or '.join(INVERSIONS)}")
        if self.rounds < 1 or (self.zigzag_steps is not None and self.zigzag_steps < 0):
            raise ValueError(f"variant.zsampling: rounds={self.rounds} must be >= 1 and zigzag_steps="
                             f"{self.zigzag_steps} >= 0 (null: every step but the last)")


VARIANT = Variant(
    "zsampling", "sync", "Z-Sampling (Bai et al. 2025): zigzag of denoising and inversion, guidance gap 5 / 0",
    rule="asyndm.baselines.zsampling:zigzag_guidance", options=ZSamplingOptions,
    needs=("classifier_free_guidance",),
)
