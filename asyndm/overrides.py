"""Checks of command-line overrides before Hydra composes them, so that a wrong choice or type gets
one line naming the input and the fix (and status 2), not Hydra's multi-line report.

Used by the ``asyndm`` and ``asyndm-eval`` console scripts; needs no torch.
"""

from __future__ import annotations

import re

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .paths import CONF_DIR
from .settings import schema_at, unknown_key, value_problem
from .variants import VARIANTS

# Hydra reports an unknown option of a config group (curve=foo) in many lines with status 1; these
# groups get the one-line error and status 2 that every other bad input gets.
PROJECT_GROUPS = ("model", "curve", "mask", "prompts", "logger", "experiment", "smoke", "eval", "hydra/launcher")
_CHOICES = re.compile(r"\[?\s*([\w.-]+(\s*,\s*[\w.-]+)*)?\s*\]?")  # one option, a sweep (a,b) or a list ([a,b])


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files in its folder (Hydra's launchers for hydra/launcher)."""
    options = {path.stem for path in (CONF_DIR / group).glob("*.yaml")}
    if group == "hydra/launcher":
        options |= {"basic", "joblib", "submitit_local", "submitit_slurm"}
    return sorted(options)


def unknown_group_choice(argv: list[str]) -> str | None:
    """The error for the first override that picks a missing option of a config group."""
    if any(arg.startswith(("-cd", "--config-dir", "-cp", "--config-path", "hydra.searchpath")) for arg in argv):
        return None  # other config folders may add options
    for arg in argv:
        group, sep, value = arg.lstrip("+~").partition("=")
        if not sep or group not in PROJECT_GROUPS or not _CHOICES.fullmatch(value.strip()):
            continue
        options = group_options(group)
        for choice in filter(None, (c.strip() for c in value.strip("[] ").split(","))):
            if choice not in options and choice != "null":  # group=null deselects the group
                return f"unknown {group} '{choice}': choose {', '.join(f'{group}={o}' for o in options)}"
    return None


def normalise_argv(argv: list[str]) -> list[str]:
    """Older spellings that add a key the config now always has: ``+smoke=tiny`` (smoke is in the
    defaults list) and ``+model.skip_components=[...]`` (every typed key has its default)."""
    return [arg[1:] if arg.startswith("+smoke=") or _added_typed_key(arg) else arg for arg in argv]


def _added_typed_key(arg: str) -> bool:
    key, sep, _ = arg.partition("=")
    return bool(sep) and key.startswith("+") and not key.startswith("++") and schema_at(key[1:]) is not None


_SETTING = re.compile(r"\+{0,2}((?:sample|model|curve|mask|prompts)(?:\.[\w-]+)+)=(.*)", re.S)


def setting_problem(argv: list[str]) -> str | None:
    """The error for the first override of a typed key (``sample.*``, ``model.*``, ``curve.*``,
    ``mask.*``, ``prompts.*``) that its group does not have, or whose value its dataclass refuses
    (asyndm/settings.py). A sweep's comma list is checked value by value when each job composes."""
    for arg in argv:
        match = _SETTING.fullmatch(arg)
        if not match:
            continue
        key = match.group(1)
        unknown = unknown_key(key)
        if unknown:
            return unknown
        try:
            override = OverridesParser.create().parse_override(arg)
        except HydraException:
            continue  # not an override Hydra can read: Hydra reports it
        if override.is_sweep_override() or override.is_delete():
            continue
        schema, name = schema_at(key)
        found = value_problem(schema, name, override.value(), key)
        if found:
            return found
    return None


_VARIANT_OPTION = re.compile(r"\+{0,2}variant\.([\w-]+)\.([\w-]+)=(.*)")


def variant_option_problem(argv: list[str]) -> str | None:
    """The error for the first ``variant.<name>.<option>=value`` whose variant, option or value type is
    wrong (a sweep's comma list is left to Hydra, which checks each value when it composes)."""
    for arg in argv:
        match = _VARIANT_OPTION.fullmatch(arg)
        if not match:
            continue
        name, key, value = match.groups()
        variant = VARIANTS.get(name)
        if variant is None or variant.options is None:
            with_options = ",".join(n for n, v in VARIANTS.items() if v.options)
            return f"variant.{name}: no variant is named '{name}'; options belong to one of [{with_options}]"
        defaults = variant.defaults()
        if key not in defaults:
            return f"variant.{name}.{key}: {name} has no option '{key}'; it takes {', '.join(defaults)}"
        try:
            override = OverridesParser.create().parse_override(arg)
        except HydraException:
            continue  # not an override Hydra can read: Hydra reports it
        if override.is_sweep_override():
            continue
        try:
            OmegaConf.merge(OmegaConf.structured(variant.options), {key: override.value()})
        except OmegaConfBaseException as err:
            reason = str(err).splitlines()[0]
            return f"variant.{name}.{key}={value}: {reason} (default {defaults[key]!r})"
    return None
