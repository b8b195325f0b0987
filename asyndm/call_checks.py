"""The Python API's keywords checked by the CLI's own validation, refused in Python terms.

A call's keywords become the config node the CLI would compose for the same settings, and
``asyndm.config.validate`` checks it: one set of checks for both. Its one-line messages name config
keys (``sample.steps=0``); here they are re-worded to name the keyword the caller typed
(``num_inference_steps=0``).
"""

from __future__ import annotations

import re

from omegaconf import OmegaConf

from . import config as config_mod
from .errors import AsyndmError, ConfigError

# config key → the Python keyword that sets it
KEYWORDS = {
    "sample.steps": "num_inference_steps",
    "sample.guidance_scale": "guidance_scale",
    "sample.eta": "eta",
    "sample.negative_prompt": "negative_prompt",
    "sample.images_per_prompt": "num_images_per_prompt",
    "sample.batch_size": "num_images_per_prompt",
    "sample.height": "height",
    "sample.width": "width",
    "sample.true_cfg_scale": "true_cfg_scale",
    "sample.generator_device": "generator",
    "sample.compile": "compile",
    "mask.threshold": "mask_threshold",
    "mask.resolution": "mask_resolution",
    "mask.blocks": "mask_blocks",
    "mask.time": "mask_time",
    "curve.semantics": "curve_semantics",
    "prompts.item_tokens": "item_tokens",
    "prompts.oracle_masks": "oracle_masks",
    "model.skip_components": "skip_components",
    "model.text_timestep": "text_timestep",
}
_KEY = re.compile(r"\b(?:sample|mask|curve|prompts|model)\.[a-z_]+\b")
_VARIANT_OPTION = re.compile(r"\bvariant\.([\w+]+)\.(\w+)")
_MODEL_PATH = re.compile(r"model\.path=(.+?)(?=:\s|;\s|$|\)|\s)")


def in_python_terms(message: str) -> str:
    """A CLI message with its config keys named as the Python API's keywords."""
    message = _MODEL_PATH.sub(lambda m: f"from_pretrained({m.group(1)!r})", message)
    message = _VARIANT_OPTION.sub(lambda m: f"variant_options['{m.group(1)}']['{m.group(2)}']", message)
    return _KEY.sub(lambda m: KEYWORDS.get(m.group(0), m.group(0)), message)


def python_error(err: AsyndmError) -> AsyndmError:
    """The same error, re-worded in Python terms."""
    return type(err)(in_python_terms(str(err)))


def check_call(*, variants, variant_options, curve: str, curve_semantics: str, mask: str, mask_threshold,
               mask_resolution, mask_blocks, mask_time, k, steps, guidance_scale, eta, negative_prompt, images, height,
               width, true_cfg_scale, item_tokens: str, oracle_masks, precision: str) -> None:
    """Refuse, in Python terms, the settings ``asyndm.config.validate`` refuses on the command line."""
    cfg = OmegaConf.create({
        "variants": list(variants),
        "variant": {name: dict(options) for name, options in (variant_options or {}).items()},
        "prompts": {"name": "(python call)", "oracle_masks": oracle_masks if isinstance(oracle_masks, str) else
                    ("(function)" if oracle_masks is not None else None), "item_tokens": item_tokens},
        "curve": {"name": curve, "semantics": curve_semantics},
        "mask": {"name": mask, "threshold": mask_threshold, "resolution": mask_resolution,
                 "blocks": list(mask_blocks) if mask_blocks is not None else None, "time": mask_time},
        "sample": {"steps": steps, "eta": eta, "guidance_scale": guidance_scale, "negative_prompt": negative_prompt,
                   "batch_size": images, "images_per_prompt": images, "height": height, "width": width,
                   "true_cfg_scale": true_cfg_scale, "generator_device": None},
        "k": k, "precision": precision, "device": "auto", "shard": {"index": 0, "count": 1},
    })
    try:
        config_mod.validate(cfg)
    except ConfigError as err:
        raise python_error(err) from None
