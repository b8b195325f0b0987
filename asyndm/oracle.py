"""Ground-truth masks for the oracle variant (``asyndm_oracle``): would slowing the *right* pixels help?

Attention masks can be wrong early in sampling, so a null result could be the masks' fault or the
method's. In a world whose images can be read exactly (the toy worlds), the prompt set names a
function that reads the item cells off an image: ``prompts.oracle_masks: module:function``. The
oracle variant first samples ``dm`` on the same seeds (same noise, so the layout mostly carries
over), reads each finished dm image's item cells, and samples asyndm's schedule with those as
static masks. An upper bound for diagnosis, not a method: it needs the finished image.

The function's contract: ``fn(image: PIL.Image, spec: PromptSpec, grid: (h, w)) -> (h, w) ints``,
the item index per cell of the timestep grid, -1 for context (background).
"""

from __future__ import annotations

import importlib
from typing import Callable

import numpy as np
import torch

from .errors import ConfigError
from .prompts import PromptSpec

OracleFunction = Callable[[object, PromptSpec, tuple[int, int]], np.ndarray]


def load_oracle(path: str | OracleFunction) -> OracleFunction:
    """The function named ``module:function`` (or a callable, returned as it is)."""
    if callable(path):
        return path
    module_name, sep, name = str(path).partition(":")
    if not sep or not module_name or not name:
        raise ConfigError(f"prompts.oracle_masks={path}: write it as module:function "
                          f"(e.g. evaluation.shapes_context:oracle_assignment)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"prompts.oracle_masks={path}: cannot import {module_name} ({err})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"prompts.oracle_masks={path}: {module_name} has no function {name!r}")
    return function


def oracle_masks(function: OracleFunction, images: list, spec: PromptSpec, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) long: the function's item index per cell for each image, checked."""
    masks = []
    for image in images:
        cells = np.asarray(function(image, spec, tuple(grid)))
        if cells.shape != tuple(grid):
            raise ValueError(f"oracle mask function gave shape {cells.shape} for a {tuple(grid)} timestep grid")
        if cells.min(initial=-1) < -1 or cells.max(initial=-1) >= len(spec.items):
            raise ValueError(f"oracle mask function gave item indices outside -1..{len(spec.items) - 1} "
                             f"for '{spec.prompt}' ({len(spec.items)} items)")
        masks.append(torch.from_numpy(cells.astype(np.int64)))
    return torch.stack(masks)
