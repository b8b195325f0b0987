"""Loading a pipeline into the backend of its family, on a device and in a precision.

Where the model comes from, and which family it is, is checked first by asyndm/sources.py (no
torch); this module loads the weights.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from .devices import auto_device_type
from .errors import ModelError
from .sources import backend_class, from_pretrained

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """The torch device for ``device=...``; ``auto`` as asyndm/devices.py decided it (the run folder's
    name depends on it), refused with the fix where torch disagrees."""
    if name == "auto":
        guess, found = auto_device_type(), "cuda" if torch.cuda.is_available() else "cpu"
        if guess != found:
            where = ("an NVIDIA driver and a CUDA build of torch, but torch finds no GPU" if guess == "cuda"
                     else "no NVIDIA driver (/proc/driver/nvidia/version, nvidia-smi), but torch finds a GPU")
            raise ModelError(f"device=auto: asyndm found {where}; set device={found} to sample there")
        return torch.device(found)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device={name}: CUDA is not available on this machine; use device=cpu or device=auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ModelError(f"device={name}: choose auto, cpu or cuda")
    return torch.device(name)


def resolve_dtype(precision: str | torch.dtype) -> torch.dtype:
    if isinstance(precision, torch.dtype):
        return precision
    if precision not in DTYPES:
        raise ModelError(f"precision={precision}: choose one of {', '.join(DTYPES)}")
    return DTYPES[precision]


# model.<key> settings a backend's constructor takes (absent from a family that has no such choice)
BACKEND_OPTIONS = ("text_timestep", "num_frames", "default_size")


def backend_options(model_cfg) -> dict:
    """The family settings the model config sets (``model.text_timestep``), and the components it skips."""
    options = {key: _plain(model_cfg.get(key)) for key in BACKEND_OPTIONS if model_cfg.get(key) is not None}
    skip = model_cfg.get("skip_components")
    return {**options, "skip_components": tuple(skip)} if skip else options


def _plain(value):
    """A config list (``model.default_size``) as a tuple; other values as they are."""
    return tuple(value) if hasattr(value, "__len__") and not isinstance(value, str) else value


def load_backend(source: str, device: torch.device, dtype: torch.dtype, skip_components=(), **options):
    """Load the pipeline at ``source`` into the backend of its family.

    ``skip_components``: pipeline components to load as None where diffusers allows it (SD3's T5:
    ``text_encoder_3``, ``tokenizer_3``). ``options``: the family's settings (``model.text_timestep``).
    """
    cls = backend_class(source)
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise ModelError(f"model.{unknown[0]} is not a setting of the {cls.family} family; remove it")
    skipped = {name: None for name in skip_components or ()}
    pipe = from_pretrained(cls.load_pipeline, source, **pipeline_dtype(dtype), **_absent_components(source),
                            **skipped)
    return cls(pipe, device, dtype, **options)


def pipeline_dtype(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained``'s dtype argument: ``dtype`` where diffusers has it (it deprecates
    ``torch_dtype``), ``torch_dtype`` in older releases."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def _absent_components(source: str) -> dict[str, None]:
    """Components a local folder saved as None (a pixel-space pipeline has no VAE).

    diffusers refuses to load such a folder unless each missing component is passed as None.
    """
    index = Path(source) / "model_index.json"
    if not index.is_file():
        return {}
    entries = json.loads(index.read_text(encoding="utf-8"))
    return {name: None for name, value in entries.items() if isinstance(value, list) and value == [None, None]}
