"""The typed configuration: every setting's type, default, allowed values and meaning, defined once.

Each group of keys is a dataclass: ``sample.*`` (SampleSettings), ``model.*`` (ModelSettings),
``curve.*`` (CurveSettings), ``mask.*`` (MaskSettings), ``prompts.*`` (PromptSetSettings), and each
variant's options (asyndm/options/). The config starts from their defaults (``settings_defaults``,
first in config.yaml's defaults list), so the YAML files only choose and override. A field's
``rule`` (``choice``, ``check``) says which values it takes and how to fix a wrong one; ``problem``
reads type and rule for every key, and the CLI (before Hydra composes, asyndm/overrides.py), the
run's validation and the Python API all ask it.

The configuration layer reads these without importing torch, so a wrong value is refused before
anything heavy loads. The groups' nodes stay untyped in the composed config (validated here, not
converted): a value keeps the Python type it was given, and with it the run's identity hash
(``mask.threshold=2`` named folders as ``2`` before these types existed, and still does).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .variants import VARIANTS

CURVES = ("bin", "lin", "exp")  # METHOD.md §3
CURVE_SEMANTICS = ("reference", "refit")  # the release's float32 curves, or smoother float64 ones
MASK_MODES = ("dynamic", "static")  # §6
MASK_TIMES = ("frame", "union")  # videos: an item's mask per frame, or the union over its frames
PRECISIONS = ("fp32", "fp16", "bf16")
TEXT_TIMESTEPS = ("linear", "min", "mean", "max")  # SD3/Flux: the text stream's timestep per sample (§9)
ITEM_TOKENS = ("word", "legacy")


def check(test: Callable[[Any], bool], says: str, default=MISSING, **kwargs):
    """A field whose values must pass ``test``; a value that fails is refused with ``key=value: says``
    (``says`` may instead hold the whole message, with ``{value}``)."""
    return field(default=default, metadata={"test": test, "says": says}, **kwargs)


def choice(options: tuple, default=MISSING, says: str = "", **kwargs):
    """A field that takes one of ``options`` (or null where its type is Optional)."""
    says = says or f"choose {', '.join(options[:-1])} or {options[-1]}"
    return check(lambda value: value is None or value in options, says, default, **kwargs)


@dataclass(frozen=True)
class SampleSettings:
    """``sample.*``: how each image is sampled. config.yaml's ``sample`` node sets only the
    model-dependent ones (from ``model.sampling``)."""

    steps: int = check(lambda v: v >= 2, "needs at least 2 steps (paper: 50)", 50)  # model calls; the model's own default
    eta: float = check(lambda v: v >= 0, "must be >= 0 (DDIM: 0 deterministic, paper: 1.0)", 1.0)  # DDIM's η
    guidance_scale: float = 5.0  # the model's own default (SD: 5.0, the paper's) via config.yaml
    negative_prompt: str = ""
    batch_size: int = check(lambda v: v >= 1, "must be at least 1", 8)  # images per model call; does not change the images
    images_per_prompt: int = check(lambda v: v >= 1, "must be at least 1", 4)  # the paper presets use 32
    # image size in pixels; null: the pipeline's default (Flux: 1024)
    height: Optional[int] = check(lambda v: v is None or v > 0, "a positive number of pixels, or null for the pipeline's default", None)
    width: Optional[int] = check(lambda v: v is None or v > 0, "a positive number of pixels, or null for the pipeline's default", None)
    # guidance-distilled models (FLUX.1-dev): classifier-free guidance on top; 1 = off
    true_cfg_scale: float = check(lambda v: v >= 1, "1 (off) or more", 1.0)
    # where the noise is drawn: null = the sampling device; part of the identity
    generator_device: Optional[str] = check(lambda v: v in (None, "cpu", "cuda") or str(v).startswith("cuda:"),
                                            "choose cpu, cuda or null (the sampling device)", None)
    compile: bool = False  # torch.compile the model call; images equal eager ones within 1e-3, so not in the identity


@dataclass(frozen=True)
class CurveSettings:
    """``curve.*``: the concave curve the item pixels follow (METHOD.md §3)."""

    name: str = choice(CURVES, "bin", "unknown curve '{value}': choose curve=bin, curve=lin or curve=exp")
    # reference: the release's float32 curves, exactly; refit: float64 state, exp refit, lin straight-line fallback
    semantics: str = choice(CURVE_SEMANTICS, "reference", "choose reference or refit (default reference)")


@dataclass(frozen=True)
class MaskSettings:
    """``mask.*``: where the item pixels are (METHOD.md §6)."""

    # dynamic: recomputed from each call's attention (call i's mask first moves call i + 2); static: one
    # mask per image from the dm pass of the same seed
    name: str = choice(MASK_MODES, "dynamic", "unknown mask mode '{value}': choose mask=dynamic or mask=static")
    threshold: float = check(lambda v: v > 0, "must be positive (default 1.0)", 1.0)  # binarise at threshold × the map's mean
    # side of the attention grid; null = latent side / 4 (the model's own, model.sampling.mask_resolution)
    resolution: Optional[int] = check(lambda v: v is None or v > 0, "a positive grid side or null",
                                      "${oc.select:model.sampling.mask_resolution,null}")
    # SD3 / Flux: the transformer blocks whose joint attention makes the masks; null = the family's default
    blocks: Optional[List[int]] = check(
        lambda v: v is None or (len(v) > 0 and all(isinstance(b, int) and b >= 0 for b in v)),
        "a list of block indices (0 = the first transformer block) or null", None)
    # videos (Wan): an item's mask per frame (frame) or the union over its frames (union)
    time: str = choice(MASK_TIMES, "frame", "choose frame or union (videos: an item's mask per frame, or the union "
                                            "over its frames)")


@dataclass(frozen=True)
class ModelSampling:
    """``model.sampling.*``: the model's own defaults for ``sample.steps``, ``sample.guidance_scale``
    and ``mask.resolution``."""

    steps: int = check(lambda v: v >= 2, "needs at least 2 steps", 50)
    guidance_scale: float = 5.0
    mask_resolution: Optional[int] = check(lambda v: v is None or v > 0, "a positive grid side or null", None)


@dataclass(frozen=True)
class ModelSettings:
    """``model.*``: which pipeline, where from. A hub id or a local diffusers folder (``path``), or a
    model the project builds itself (``builder``); the family is read from its ``model_index.json``."""

    name: str = MISSING  # names the run folder
    builder: Optional[str] = None  # tiny, tiny_sdxl, tiny_sd3, tiny_flux, tiny_wan, toy, toy_context
    path: Optional[str] = None
    # SD3/Flux: the text stream's timestep per sample: linear (τ_i, the scheduler's own, as dm) | min | mean | max
    text_timestep: Optional[str] = choice(TEXT_TIMESTEPS, None)
    # pipeline components loaded as None (SD3 without T5: [text_encoder_3,tokenizer_3])
    skip_components: Optional[List[str]] = None
    # Wan: frames per video (1 + 4n; 1: an image); null: the pipeline's default (81)
    num_frames: Optional[int] = check(lambda v: v is None or v >= 1,
                                      "a positive number of frames (1: an image), or null for the model's default", None)
    # Wan: [height, width] when sample.height / sample.width are unset; null: the pipeline's default (480×832)
    default_size: Optional[List[int]] = check(lambda v: v is None or (len(v) == 2 and all(x > 0 for x in v)),
                                              "[height, width] in pixels, or null for the pipeline's default", None)
    sampling: ModelSampling = field(default_factory=ModelSampling)


@dataclass(frozen=True)
class PromptSetSettings:
    """``prompts.*``: a prompt set with item words and k (a JSONL file, or the reference's two files)."""

    name: str = MISSING  # names the run folder
    file: Optional[str] = None
    items_file: Optional[str] = None  # the reference's two-file format: its items file
    limit: Optional[int] = check(lambda v: v is None or v > 0, "a positive number of prompts, or null for all", None)
    # word: the tokenizer finds the item words; legacy: the reference's indices; null: legacy for two-file input, else word
    item_tokens: Optional[str] = choice(ITEM_TOKENS, None, "choose word or legacy (unset: legacy for the reference's two-file format)")
    evaluators: List[str] = field(default_factory=list)  # evaluators this set is always scored with, beside eval=[...]
    oracle_masks: Optional[str] = None  # "module:function" reading item cells off a finished dm image (asyndm_oracle)


# The typed groups of the config, by where they sit in it.
GROUPS = {"sample": SampleSettings, "model": ModelSettings, "curve": CurveSettings, "mask": MaskSettings,
          "prompts": PromptSetSettings}


def _nested(spec) -> type | None:
    """The dataclass a field holds (``model.sampling``), or None for a plain value."""
    factory = spec.default_factory
    return factory if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory) else None


def schema_at(key: str) -> tuple[type, str] | None:
    """The dataclass and field name a dotted key (``mask.threshold``, ``model.sampling.steps``) is
    typed by; None for keys outside the typed groups and for keys no group has."""
    *path, name = key.split(".")
    if not path or path[0] not in GROUPS:
        return None
    schema = GROUPS[path[0]]
    for part in path[1:]:
        inner = {f.name: f for f in dataclasses.fields(schema)}.get(part)
        schema = _nested(inner) if inner is not None else None
        if schema is None:
            return None
    return (schema, name) if name in {f.name for f in dataclasses.fields(schema)} else None


def unknown_key(key: str) -> str | None:
    """The error for a dotted key inside a typed group that its dataclass does not have, naming the
    keys it does have (``mask.thresold`` → ``mask takes name, threshold, resolution, blocks``)."""
    *path, name = key.split(".")
    if not path or path[0] not in GROUPS or schema_at(key) is not None:
        return None
    schema, where = GROUPS[path[0]], path[0]
    for part in path[1:]:
        inner = {f.name: f for f in dataclasses.fields(schema)}.get(part)
        if inner is None or _nested(inner) is None:
            name = part
            break
        schema, where = _nested(inner), f"{where}.{part}"
    keys = ", ".join(f.name for f in dataclasses.fields(schema))
    return f"{key}: {where} has no setting '{name}'; it takes {keys} (docs/configuration.md)"


def value_problem(schema: type, name: str, value, where: str) -> str | None:
    """Why ``value`` does not fit field ``name`` of ``schema`` (its type, then its rule), as one line
    naming ``where=value``; None when it fits."""
    spec = {f.name: f for f in dataclasses.fields(schema)}[name]
    if _nested(spec) is not None:
        return problem(value, _nested(spec), where) if isinstance(value, dict) or OmegaConf.is_dict(value) else None
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), {name: value})[name]
    except OmegaConfBaseException as err:
        expected = getattr(spec.type, "__name__", str(spec.type)).replace("Optional[", "").rstrip("]")
        return f"{where}={_shown(value)}: not a valid {expected} ({str(err).splitlines()[0]})"
    test = spec.metadata.get("test")
    if test is None or typed is None and "Optional" in str(spec.type) or test(typed):
        return None
    says = spec.metadata["says"]
    return says.format(value=_shown(value)) if "{value}" in says else f"{where}={_shown(value)}: {says}"


def problem(node, schema: type, where: str) -> str | None:
    """The first value of ``node`` (a config group, or a plain dict) that its dataclass refuses."""
    for spec in dataclasses.fields(schema):
        if spec.name in node and not (OmegaConf.is_config(node) and OmegaConf.is_missing(node, spec.name)):
            found = value_problem(schema, spec.name, node[spec.name], f"{where}.{spec.name}")
            if found:
                return found
    return None


def _shown(value):
    """A value as the user wrote it (OmegaConf containers as plain lists and dicts)."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def defaults(schema: type) -> dict:
    """A group's defaults as plain data (a required value as ``???``, interpolations as written)."""
    return OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)


def register_settings_defaults() -> None:
    """Config ``settings_defaults``: every typed group's defaults, where config.yaml starts. Untyped
    nodes, so values keep the Python types they are given and the run's identity hash with them."""
    node = OmegaConf.create({group: defaults(schema) for group, schema in GROUPS.items()})
    ConfigStore.instance().store(name="settings_defaults", node=node, package="_global_")


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
