"""The model presets of conf/model/: a model's own sampling defaults, found from how it is named.

The CLI reads ``model.sampling.*`` of the chosen preset (``model=toy``: 25 steps, guidance 3.0, masks
on the 16-sided grid); the Python API names a model by a built-in name or a hub id instead, so it
looks up the preset that builds that name or loads that hub id and takes the same defaults. Any
other source (a local folder, an in-memory pipeline) gets ``model=local``'s, as the CLI gives it.
"""

from __future__ import annotations

from functools import lru_cache

from omegaconf import OmegaConf

from .paths import CONF_DIR
from .settings import ModelSampling, defaults

LOCAL = "local"  # the preset of any diffusers folder


@lru_cache(maxsize=None)
def _presets() -> dict[str, dict]:
    """Every conf/model/*.yaml by its file name, as plain containers."""
    return {path.stem: OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            for path in sorted((CONF_DIR / "model").glob("*.yaml"))}


def preset_for(source: str | None) -> str:
    """The name of the preset that builds ``source`` (a built-in name) or loads it (a hub id); ``local`` else."""
    presets = _presets()
    for field in ("builder", "path"):
        for name, node in presets.items():
            if source is not None and node.get(field) == str(source):
                return name
    return LOCAL


def sampling_defaults(source: str | None) -> dict:
    """``steps``, ``guidance_scale`` and ``mask_resolution``: the model's own, as ``model=<preset>`` gives them."""
    sampling = _presets().get(preset_for(source), {}).get("sampling") or {}
    return {**defaults(ModelSampling), **sampling}  # a preset writes only what differs (asyndm/settings.py)
