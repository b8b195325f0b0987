"""Variants: a schedule (which pixels follow which curve) composed with a guidance rule (§2).

The registry is filled from ``asyndm.variants`` entry points (asyndm/plugins.py): the paper's variants
below and the baselines (asyndm/options/) are declared in pyproject.toml exactly as a plugin's
variant would be. A ``Variant`` names its rule as ``"module:factory"``, imported only when it samples,
so listing and checking variants needs no torch. Every registered variant is also a guidance rule for
the others' schedules: ``"asyndm+cfgpp"`` is asyndm's asynchronous schedule with CFG++'s rule (and
CFG++'s options, ``variant.cfgpp.*``). All variants sample from the same noise (METHOD.md §7).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, Callable, Iterable

from . import plugins

SCHEDULE_KINDS = ("sync", "concave", "async")
MASK_SOURCES = ("attention", "oracle")
COMPOSE = "+"  # "<schedule variant>+<guidance variant>"
FAMILY_GUIDANCE = "asyndm.guidance:family_guidance"
# The paper's variants first, in this order; every other registered variant after them, by name.
FIRST = ("dm", "dm_concave", "asyndm", "asyndm_oracle")


@dataclass(frozen=True)
class Variant:
    """``schedule``: ``sync`` (the scheduler's timesteps), ``concave`` (every pixel on the concave
    curve with the largest k) or ``async`` (item pixels concave with their own k, the rest linear).
    ``rule``: ``"module:factory"`` (or the factory itself) with ``factory(backend, guidance_scale,
    options)`` building the guidance rule from the backend, the run's scale and the variant's options
    (``variant.<options_name>.*`` in the config); the default is the model family's own guidance.
    ``options``: the dataclass of those options with their defaults (None: no options). ``needs``: the
    backend capabilities the rule calls (asyndm/capabilities.py), so that a family lacking one is
    refused, naming it, before any weights load."""

    name: str
    schedule: str
    description: str
    rule: str | Callable[..., Any] = FAMILY_GUIDANCE
    options: type | None = None
    options_name: str = ""  # whose options the rule reads; "" = the variant's own name
    masks: str = "attention"  # an async schedule's masks: the run's mask mode, or "oracle" (asyndm/oracle.py)
    rule_reads_items: bool = False  # the guidance rule reads the items' tokens (Attend-and-Excite)
    # the backend capabilities the rule needs (asyndm/capabilities.py): a family without one of them is
    # refused before its weights load
    needs: tuple[str, ...] = ()

    def __post_init__(self):
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"variant {self.name!r}: schedule {self.schedule!r} is not one of {SCHEDULE_KINDS}")
        if self.masks not in MASK_SOURCES:
            raise ValueError(f"variant {self.name!r}: masks {self.masks!r} is not one of {MASK_SOURCES}")
        if not self.options_name:
            object.__setattr__(self, "options_name", self.name)
        if isinstance(self.needs, str) or not all(isinstance(n, str) for n in self.needs):
            raise ValueError(f"variant {self.name!r}: needs {self.needs!r} must be a tuple of capability names")
        object.__setattr__(self, "needs", tuple(self.needs))

    def guidance(self, backend, guidance_scale: float, options: Mapping[str, Any]):
        """The guidance rule for this backend, scale and options (imports the rule's module)."""
        factory = self.rule
        if isinstance(factory, str):
            module, attribute = factory.split(":")
            factory = getattr(importlib.import_module(module), attribute)
        return factory(backend, guidance_scale, options)

    @property
    def needs_items(self) -> bool:
        """Whether sampling it needs the prompt's items and k: a concave or asynchronous schedule, or a
        rule that reads the items' tokens. dm and the other baselines run on the prompt alone."""
        return self.schedule != "sync" or self.rule_reads_items

    def defaults(self) -> dict[str, Any]:
        """The options' defaults (lists for tuples), as the config holds them."""
        if self.options is None:
            return {}
        return {f.name: _plain(f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(self.options)}

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise naming an option the variant does not take, or a value its options refuse."""
        unknown = sorted(set(options) - set(self.defaults()))
        if unknown:
            takes = ", ".join(self.defaults()) or "no options"
            raise ValueError(f"variant.{self.options_name}.{unknown[0]}: {self.options_name} has no option "
                             f"{unknown[0]!r}; it takes {takes}")
        if self.options is not None:
            self.options(**options)  # its own checks (choices, ranges)


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


DM = Variant("dm", "sync", "plain synchronous sampling on the scheduler's own timesteps")
DM_CONCAVE = Variant("dm_concave", "concave", "every pixel on the concave curve with the largest item k")
ASYNDM = Variant("asyndm", "async", "item pixels on the concave curve with their own k, the rest linear")
ASYNDM_ORACLE = Variant("asyndm_oracle", "async", "asyndm's schedule on static masks read off dm's finished image of "
                        "the same seed by the prompt set's prompts.oracle_masks (toy worlds): an upper bound",
                        masks="oracle")


class _Registry(Mapping):
    """name → Variant, read from the installed ``asyndm.variants`` entry points on first use (so that
    importing this module imports no plugin), paper's variants first, then by name."""

    def __init__(self):
        self._found: dict[str, Variant] | None = None
        self._added: dict[str, Variant] = {}  # registered in this process (register_variant)

    def _variants(self) -> dict[str, Variant]:
        if self._found is None:
            declared = plugins.declared(plugins.VARIANTS)
            found = {}
            for name in [n for n in FIRST if n in declared] + sorted(n for n in declared if n not in FIRST):
                variant = plugins.load(plugins.VARIANTS, name)
                if not isinstance(variant, Variant) or variant.name != name or COMPOSE in name:
                    raise plugins.PluginError(f"{plugins.VARIANTS} entry '{name}' ({declared[name].value}) must name "
                                              f"an asyndm.variants.Variant called '{name}' (no '{COMPOSE}' in it)")
                found[name] = variant
            self._found = found
        return {**self._found, **self._added}

    def __getitem__(self, name: str) -> Variant:
        return self._variants()[name]

    def __iter__(self):
        return iter(self._variants())

    def __len__(self) -> int:
        return len(self._variants())

    def add(self, variant: Variant) -> None:
        self._added[variant.name] = variant


VARIANTS = _Registry()


def register_variant(variant: Variant) -> Variant:
    """Register a variant in this process (a notebook, a test); installed packages use entry points."""
    if COMPOSE in variant.name:
        raise ValueError(f"variant name {variant.name!r}: '{COMPOSE}' composes variants; choose another name")
    if variant.name in VARIANTS and VARIANTS[variant.name] != variant:
        raise ValueError(f"variant name {variant.name!r} is registered twice; rename one")
    VARIANTS.add(variant)
    return variant


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
    return Variant(name, VARIANTS[schedule].schedule,
                   f"{schedule}'s schedule with {rule}'s guidance", by_rule.rule, by_rule.options,
                   by_rule.options_name, VARIANTS[schedule].masks, by_rule.rule_reads_items, by_rule.needs)


def oracle_variants(names: Iterable[str]) -> list[str]:
    """Those of ``names`` whose masks are read off dm's finished image (asyndm/oracle.py)."""
    return [name for name in names if get_variant(name).masks == "oracle"]


def ordered(names: Iterable[str]) -> list[str]:
    """``names`` in registry order (dm first), composed variants after, in the order given."""
    names = list(names)
    return [v for v in VARIANTS if v in names] + [v for v in names if v not in VARIANTS]
