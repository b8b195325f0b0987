"""SEG's options (Hong, NeurIPS 2024; github.com/SusungHong/SEG-SDXL): guidance away from the
prediction with blurred self-attention queries, on top of CFG at sample.guidance_scale. The rule is
in asyndm/baselines/seg.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from ..variants import Variant


@dataclass(frozen=True)
class SEGOptions:
    scale: float = 3.0  # s (official: "we generally fix this parameter to 3.0"); 0 = plain CFG
    blur_sigma: float = float("inf")  # σ of the query blur; above 9999 every query becomes the mean query (official)
    layers: Tuple[str, ...] = ("mid",)  # UNet parts whose self-attention is blurred: any of down, mid, up


VARIANT = Variant(
    "seg", "sync", "SEG (Hong 2024): guidance away from a prediction with blurred self-attention queries",
    rule="asyndm.baselines.seg:seg_guidance", options=SEGOptions,
    needs=("classifier_free_guidance", "blurred_self_attention",),
)
