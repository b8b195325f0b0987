"""The typed configuration: the choices each setting takes, and the structured configs Hydra composes.

The configuration layer reads these without importing torch, so a wrong choice or type is refused
before anything heavy loads. Each variant's options dataclass (asyndm/options/, or a plugin's) is the
structured config of ``variant.<name>.*``: the YAML files only choose and override, and Hydra
rejects a value of the wrong type when the config is composed.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from .variants import VARIANTS

CURVES = ("bin", "lin", "exp")  # METHOD.md §3
CURVE_SEMANTICS = ("reference", "refit")  # the release's float32 curves, or smoother float64 ones
MASK_MODES = ("dynamic", "static")  # §6
PRECISIONS = ("fp32", "fp16", "bf16")


def register_variant_options() -> list[str]:
    """Config group ``variant``: each variant with options as ``variant/<name>`` (its dataclass, at
    ``variant.<name>``), and ``variant/all`` listing them all (config.yaml's default), so every run's
    config holds every variant's options (``variant.cfgpp.scale=0.4`` on the command line). Returns
    the names."""
    store = ConfigStore.instance()
    names = sorted(name for name, variant in VARIANTS.items() if variant.options is not None)
    for name in names:
        node = OmegaConf.structured(VARIANTS[name].options)  # typed by the dataclass's fields
        OmegaConf.set_readonly(node, False)  # a frozen dataclass still takes command-line overrides
        store.store(group="variant", name=name, node=node, package=f"variant.{name}")
    store.store(group="variant", name="all", node={"defaults": names})
    return names
