"""Registries filled from Python entry points.

asyndm's own variants, evaluators and model backends are declared in its pyproject.toml exactly as
a separate package declares its own, so a plugin adds a baseline, an evaluator or a model family by
installing itself, with no edit here (docs/architecture.md, "Extension points"):

    [project.entry-points."asyndm.variants"]
    my_rule = "my_package.variant:VARIANT"          # an asyndm.variants.Variant
    [project.entry-points."asyndm.evaluators"]
    my_metric = "my_package.metric:MyMetric"        # an evaluator class (evaluation/registry.py)
    [project.entry-points."asyndm.backends"]
    MyPipeline = "my_package.backend:MyBackend"     # named by the diffusers pipeline class it drives

Listing a group reads installed metadata only; an entry is imported when it is used.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

from .errors import AsyndmError

VARIANTS = "asyndm.variants"
EVALUATORS = "asyndm.evaluators"
BACKENDS = "asyndm.backends"


class PluginError(AsyndmError):
    """An entry point that cannot be used (declared twice, or not importable)."""


@lru_cache(maxsize=None)
def declared(group: str) -> dict[str, EntryPoint]:
    """Name → entry point of every installed distribution's ``group``; two packages declaring one
    name differently are refused, naming both."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=group):
        other = found.get(entry.name)
        if other is not None and other.value != entry.value:
            raise PluginError(f"{group} entry '{entry.name}' is declared twice ({other.value} and {entry.value}); "
                              f"uninstall or rename one")
        found[entry.name] = entry
    if not found and group in (VARIANTS, EVALUATORS, BACKENDS):
        raise PluginError(f"no {group} entry points are installed: asyndm declares its own in pyproject.toml, "
                          f"so install the package (pip install -e .) rather than running it from a source tree")
    return found


def load(group: str, name: str):
    """The object ``name`` of ``group`` names, imported now."""
    entry = declared(group)[name]
    try:
        return entry.load()
    except (ImportError, AttributeError) as err:
        raise PluginError(f"{group} entry '{name}' ({entry.value}) cannot be loaded: {err}") from err
