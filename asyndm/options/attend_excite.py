"""Attend-and-Excite's options (Chefer et al., SIGGRAPH 2023; github.com/yuval-alaluf/Attend-and-Excite):
gradient steps on the latents that raise each item token's maximum cross-attention, then CFG. Item
tokens: every token of every item. The rule is in asyndm/baselines/attend_excite.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ..variants import Variant


@dataclass(frozen=True)
class AttendExciteOptions:
    max_iter_to_alter: int = 25  # update the latents before steps 0 … 24
    # step → max attention that iterative refinement aims for (step indices, as released, for any N)
    thresholds: Dict[int, float] = field(default_factory=lambda: {0: 0.05, 10: 0.5, 20: 0.8})
    scale_factor: float = 20.0  # step size α_i = scale_factor·√(linspace(*scale_range, N)[i])
    scale_range: Tuple[float, float] = (1.0, 0.5)
    attention_res: int = 16  # side of the attention grid whose maps count (latent/4 at 512 px)
    max_refinement_steps: int = 20  # refinement iterations at most
    normalize_eot: Optional[bool] = None  # null: true for SD 2.x tokenizers (official --sd_2_1), false for SD 1.x


VARIANT = Variant(
    "attend_excite", "sync", "Attend-and-Excite (Chefer et al. 2023): latent updates that excite the items' attention",
    rule="asyndm.baselines.attend_excite:attend_excite_guidance", options=AttendExciteOptions, rule_reads_items=True,
    needs=("classifier_free_guidance", "attention_probabilities", "latent_gradients"),
)
