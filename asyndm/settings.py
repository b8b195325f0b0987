"""The typed configuration: the choices each setting takes, and the structured configs Hydra composes.

The configuration layer reads these without importing torch, so a wrong choice or type is refused
before anything heavy loads. Each variant's options dataclass (asyndm/options/, or a plugin's) is the
structured config of ``variant.<name>.*``: the YAML files only choose and override, and Hydra
rejects a value of the wrong type when the config is composed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .variants import VARIANTS

CURVES = ("bin", "lin", "exp")  # METHOD.md §3
CURVE_SEMANTICS = ("reference", "refit")  # the release's float32 curves, or smoother float64 ones
MASK_MODES = ("dynamic", "static")  # §6
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class SampleSettings:
    """``sample.*``: how each image is sampled. The one definition of these keys, their types and
    defaults: config.yaml's ``sample`` node starts from them (``sample_defaults``) and sets only
    the model-dependent ones, and validation types every value against them."""

    steps: int = 50  # model calls; the model's own default (SD: 50, the paper's) via config.yaml
    eta: float = 1.0  # DDIM's η: 0 deterministic, 1.0 the paper's
    guidance_scale: float = 5.0  # the model's own default (SD: 5.0, the paper's) via config.yaml
    negative_prompt: str = ""
    batch_size: int = 8  # images per model call; does not change the images
    images_per_prompt: int = 4  # the paper presets use 32
    height: Optional[int] = None  # image size in pixels; null: the pipeline's default (Flux: 1024)
    width: Optional[int] = None
    true_cfg_scale: float = 1.0  # guidance-distilled models (FLUX.1-dev): classifier-free guidance on top; 1 = off
    generator_device: Optional[str] = None  # where the noise is drawn: null = the sampling device; part of the identity
    compile: bool = False  # torch.compile the model call; images equal eager ones within 1e-3, so not in the identity


def type_problem(node, schema: type, where: str) -> str | None:
    """The first value of ``node`` whose type ``schema`` refuses, as one line naming the key."""
    for field in dataclasses.fields(schema):
        if field.name not in node:
            continue
        value = node[field.name]
        try:
            OmegaConf.merge(OmegaConf.structured(schema), {field.name: value})
        except OmegaConfBaseException as err:
            expected = getattr(field.type, "__name__", str(field.type)).replace("Optional[", "").rstrip("]")
            return f"{where}.{field.name}={value}: not a valid {expected} ({str(err).splitlines()[0]})"
    return None


def register_sample_defaults() -> None:
    """Config ``sample_defaults``: SampleSettings' defaults as the ``sample`` node config.yaml builds on
    (untyped, so values keep the Python types they are given and the run's identity hash with them)."""
    node = OmegaConf.create(dataclasses.asdict(SampleSettings()))
    ConfigStore.instance().store(name="sample_defaults", node=node, package="sample")


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
