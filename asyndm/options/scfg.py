"""S-CFG's options (Shen et al., CVPR 2024; github.com/SmilesDZgk/S-CFG): CFG's scale per semantic
region, from the CFG call's own attention maps. The rule is in asyndm/baselines/scfg.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..variants import Variant


@dataclass(frozen=True)
class SCFGOptions:
    use_rate: bool = True  # false: plain CFG (dm)
    mask_ratio: int = 4  # R: regions on the latent/R grid, from the latent/R … latent/8 attention layers
    rate_min: float = 0.8  # rates are clamped to [rate_min, rate_max] ...
    rate_max: float = 3.0
    rate_cap: float = 15.0  # ... and to at most rate_cap / sample.guidance_scale


VARIANT = Variant(
    "scfg", "sync", "S-CFG (Shen et al. 2024): CFG scale per semantic region from attention maps",
    rule="asyndm.baselines.scfg:scfg_guidance", options=SCFGOptions,
    needs=("classifier_free_guidance", "attention_probabilities",),
)
