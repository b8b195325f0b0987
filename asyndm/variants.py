"""Variants: a schedule (which pixels follow which curve) composed with a guidance rule (§2).

The paper's three paired variants are registered here, the baselines in asyndm/baselines/ (one
module each, found by that package). Every registered variant is also a guidance rule for the
others' schedules: ``"asyndm+cfgpp"`` is asyndm's asynchronous schedule with CFG++'s rule (and
CFG++'s options, ``variant.cfgpp.*``). All variants sample from the same noise (METHOD.md §7).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from .guidance import GuidanceRule

SCHEDULE_KINDS = ("sync", "concave", "async")
MASK_SOURCES = ("attention", "oracle")
RUN_SETTING = {"run_setting": True}  # metadata of a rule's field set by the run or the backend, not an option
COMPOSE = "+"  # "<schedule variant>+<guidance variant>"


def family_guidance(backend, guidance_scale: float, options: Mapping[str, Any]) -> GuidanceRule:
    """The model family's own guidance at the run's scale (classifier-free guidance for SD; Flux-dev
    embeds the scale and adds classifier-free guidance at ``true_cfg_scale``)."""
    return backend.guidance_rule(guidance_scale, float(options.get("true_cfg_scale", 1.0)))


@dataclass(frozen=True)
class Variant:
    """``schedule``: ``sync`` (the scheduler's timesteps), ``concave`` (every pixel on the concave
    curve with the largest k) or ``async`` (item pixels concave with their own k, the rest linear).
    ``guidance(backend, guidance_scale, options)`` builds the rule from the backend, the run's
    scale and the variant's own options (``variant.<options_name>.*`` in the config).
    ``options``: a dataclass whose fields are those options with their defaults (None: no options);
    conf/variant/<name>.yaml lists the same defaults, for the command line."""

    name: str
    schedule: str
    description: str
    guidance: Callable[[Any, float, Mapping[str, Any]], GuidanceRule] = family_guidance
    options: type | None = None
    options_name: str = ""  # whose options the rule reads; "" = the variant's own name
    masks: str = "attention"  # an async schedule's masks: the run's mask mode, or "oracle" (asyndm/oracle.py)

    def __post_init__(self):
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"variant {self.name!r}: schedule {self.schedule!r} is not one of {SCHEDULE_KINDS}")
        if self.masks not in MASK_SOURCES:
            raise ValueError(f"variant {self.name!r}: masks {self.masks!r} is not one of {MASK_SOURCES}")
        if not self.options_name:
            object.__setattr__(self, "options_name", self.name)

    def defaults(self) -> dict[str, Any]:
        """The options' defaults (lists for tuples), as the config holds them."""
        if self.options is None:
            return {}
        return {f.name: _plain(f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(self.options) if not f.metadata.get("run_setting")}

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise naming an option the variant does not take."""
        unknown = sorted(set(options) - set(self.defaults()))
        if unknown:
            takes = ", ".join(self.defaults()) or "no options"
            raise ValueError(f"variant.{self.options_name}.{unknown[0]}: {self.options_name} has no option "
                             f"{unknown[0]!r}; it takes {takes}")


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    if COMPOSE in variant.name:
        raise ValueError(f"variant name {variant.name!r}: '{COMPOSE}' composes variants; choose another name")
    if variant.name in VARIANTS and VARIANTS[variant.name] != variant:
        raise ValueError(f"variant name {variant.name!r} is registered twice; rename one")
    VARIANTS[variant.name] = variant
    return variant


register_variant(Variant("dm", "sync", "plain synchronous sampling on the scheduler's own timesteps"))
register_variant(Variant("dm_concave", "concave", "every pixel on the concave curve with the largest item k"))
register_variant(Variant("asyndm", "async", "item pixels on the concave curve with their own k, the rest linear"))
register_variant(Variant("asyndm_oracle", "async", "asyndm's schedule on static masks read off dm's finished image of "
                         "the same seed by the prompt set's prompts.oracle_masks (toy worlds): an upper bound",
                         masks="oracle"))


def unknown_variant(name: str, where: str = "") -> str | None:
    """The error for a name that is neither registered nor two registered names joined by '+'."""
    parts = name.split(COMPOSE)
    if name in VARIANTS or (len(parts) == 2 and all(part in VARIANTS for part in parts)):
        return None
    unknown = next((part for part in parts if part not in VARIANTS), name) if len(parts) == 2 else name
    inside = f" in '{name}'" if unknown != name else ""
    return (f"unknown variant '{unknown}'{inside}{where}: choose from [{','.join(VARIANTS)}], or compose two "
            f"as schedule{COMPOSE}guidance (asyndm{COMPOSE}cfgpp)")


def get_variant(name: str) -> Variant:
    """A registered variant, or ``schedule+guidance``: the first's schedule with the second's rule."""
    if name in VARIANTS:
        return VARIANTS[name]
    problem = unknown_variant(name)
    if problem:
        raise ValueError(problem)
    schedule, rule = name.split(COMPOSE)
    by_rule = VARIANTS[rule]
    return Variant(name, VARIANTS[schedule].schedule, f"{schedule}'s schedule with {rule}'s guidance",
                   by_rule.guidance, by_rule.options, by_rule.options_name, VARIANTS[schedule].masks)


def oracle_variants(names: Iterable[str]) -> list[str]:
    """Those of ``names`` whose masks are read off dm's finished image (asyndm/oracle.py)."""
    return [name for name in names if get_variant(name).masks == "oracle"]


def ordered(names: Iterable[str]) -> list[str]:
    """``names`` in registry order (dm first), composed variants after, in the order given."""
    names = list(names)
    return [v for v in VARIANTS if v in names] + [v for v in names if v not in VARIANTS]


from . import baselines  # noqa: E402,F401  - registers every baseline module (after the registry exists)
