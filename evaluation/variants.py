"""Variant names in evaluation: any registered variant (asyndm.variants.VARIANTS), known ones first.

Evaluation reads variant names from the run's files, so a run made with a variant that this
process does not know (a baseline added later, another branch) is still summarised and reported;
it is shown after the registered ones, in name order.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

from asyndm.variants import VARIANTS

BASELINE = "dm"
# The paper's three, in their order; used when the registry cannot be imported.
PAPER_VARIANTS = ("dm", "dm_concave", "asyndm")


@lru_cache(maxsize=1)
def registered_variants() -> tuple[str, ...]:
    """The names of asyndm.variants.VARIANTS in registration order (the paper's three first)."""
    try:
        names = list(VARIANTS)
    except Exception:  # noqa: BLE001 - ordering is cosmetic; a broken plugin must not stop a report
        return PAPER_VARIANTS
    return tuple(dict.fromkeys([*PAPER_VARIANTS, *names]))


def variant_key(variant: str) -> tuple[int, str]:
    """Sort key: registered variants in registration order, then any other name alphabetically.

    The registry (which loads the installed plugins) is only consulted for a name outside the paper's three.
    """
    known = PAPER_VARIANTS if variant in PAPER_VARIANTS else registered_variants()
    return (known.index(variant), "") if variant in known else (len(known), str(variant))


def order_variants(names: Iterable[str]) -> list[str]:
    """The distinct names of ``names`` in display order (see ``variant_key``)."""
    return sorted(dict.fromkeys(str(n) for n in names), key=variant_key)
