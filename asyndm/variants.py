"""Variants: a schedule (which pixels follow which curve) composed with a guidance rule (§2).

The paper's three paired variants are registered here; a new one (a baseline, or asyndm with
another guidance rule) is one ``register_variant`` call with its own guidance rule, and samples
from the same noise as the others (METHOD.md §7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .guidance import GuidanceRule

SCHEDULE_KINDS = ("sync", "concave", "async")


def family_guidance(backend, guidance_scale: float, options: Mapping[str, Any]) -> GuidanceRule:
    """The model family's own guidance at the run's scale (classifier-free guidance for SD; Flux-dev
    embeds the scale and adds classifier-free guidance at ``true_cfg_scale``)."""
    return backend.guidance_rule(guidance_scale, float(options.get("true_cfg_scale", 1.0)))


@dataclass(frozen=True)
class Variant:
    """``schedule``: ``sync`` (the scheduler's timesteps), ``concave`` (every pixel on the concave
    curve with the largest k) or ``async`` (item pixels concave with their own k, the rest linear).
    ``guidance(backend, guidance_scale, options)`` builds the rule from the backend, the run's
    scale and the variant's own options (``variant.<name>.*`` in the config)."""

    name: str
    schedule: str
    description: str
    guidance: Callable[[Any, float, Mapping[str, Any]], GuidanceRule] = family_guidance

    def __post_init__(self):
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"variant {self.name!r}: schedule {self.schedule!r} is not one of {SCHEDULE_KINDS}")


VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    if variant.name in VARIANTS and VARIANTS[variant.name] != variant:
        raise ValueError(f"variant name {variant.name!r} is registered twice; rename one")
    VARIANTS[variant.name] = variant
    return variant


register_variant(Variant("dm", "sync", "plain synchronous sampling on the scheduler's own timesteps"))
register_variant(Variant("dm_concave", "concave", "every pixel on the concave curve with the largest item k"))
register_variant(Variant("asyndm", "async", "item pixels on the concave curve with their own k, the rest linear"))


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown variant '{name}': choose from [{','.join(VARIANTS)}]")
    return VARIANTS[name]
