"""Loading pipelines the way users name them (local folder or hub id) into the backend of their family.

The family is read from the folder's ``model_index.json`` (``_class_name``), never from a flag the
user must remember. Everything that can fail is checked before any weights load: the source
exists, its family is supported, and offline hub ids are in the local cache.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .errors import ModelError
from .paths import cache_dir, shipped_model, shipped_model_names  # noqa: F401 - cache_dir: evaluators build there

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def built_in_names() -> tuple[str, ...]:
    """Names that from_pretrained and model.builder accept: the models built offline
    (asyndm/offline) and the ones that ship with asyndm (models/)."""
    from .offline import BUILDERS

    return (*BUILDERS, *shipped_model_names())


def model_source(model_cfg) -> str:
    """The folder or hub id to load, checked without loading anything (built-in models are built here)."""
    path = model_cfg.get("path")
    if model_cfg.get("builder") and not path:
        return built_in_source(model_cfg.get("builder"))
    if not path:
        raise ModelError("model.path is empty: give a local diffusers folder or a hub id (model.path=<folder>)")
    return check_source(str(path))


def built_in_source(name: str) -> str:
    """The folder of a model the project builds (``tiny``, on first use) or ships (``toy``)."""
    from .offline import BUILDERS

    if name in BUILDERS:
        return str(BUILDERS[name]())
    if name in shipped_model_names():
        return str(shipped_model(name))
    raise ModelError(f"model.builder={name}: unknown built-in model; choose one of {', '.join(built_in_names())}")


def check_source(path: str) -> str:
    """A local diffusers folder or a hub id that can be had; raises with the fix otherwise."""
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise ModelError(f"model.path={path}: the folder has no model_index.json; point at a diffusers pipeline folder")
        return str(local)
    if path.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(path):
        raise ModelError(f"model.path={path}: no such folder; give an existing diffusers folder or a hub id like org/name")
    if _offline() and not _in_hub_cache(path):
        raise ModelError(_download_advice(path, "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"))
    return path


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)


def _download_advice(source: str, problem: str) -> str:
    return (
        f"model.path={source}: {problem}. Download it where there is network "
        f"(hf download {source} --local-dir <dir>) and pass model.path=<dir>"
    )


def _from_pretrained(loader, source: str, **kwargs):
    """Local folders load directly; hub ids come from the cache, or are downloaded unless offline."""
    if Path(source).exists():
        return loader(source, **kwargs)
    try:
        return loader(source, local_files_only=True, **kwargs)
    except (OSError, ValueError) as cached_err:
        if _offline():
            raise ModelError(_download_advice(source, "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")) from cached_err
    try:
        return loader(source, **kwargs)
    except Exception as err:  # noqa: BLE001 - any hub failure ends in the same advice
        raise ModelError(_download_advice(source, f"could not be loaded from the hub ({type(err).__name__}: {err})")) from err


def model_index(source: str) -> dict:
    """The pipeline's ``model_index.json`` (a local folder's, or a hub id's from the cache or the hub)."""
    local = Path(source)
    if local.exists():
        path = local / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        path = _from_pretrained(lambda repo, **kw: hf_hub_download(repo, "model_index.json", **kw), source)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"model.path={source}: its model_index.json cannot be read ({err})") from err


def backend_class(source: str):
    """The backend of the source's family, from ``model_index.json``; raises for unsupported families."""
    from .backends import backend_for_pipeline

    return backend_for_pipeline(model_index(source).get("_class_name", ""), source)


def model_family(model_cfg) -> str | None:
    """The configured model's family (``sd``, ``sdxl``, ``sd3``, ``flux``) from its ``model_index.json``,
    without building or loading weights; None where it cannot be read (an unknown or missing model)."""
    from .offline import FAMILIES

    builder, path = model_cfg.get("builder"), model_cfg.get("path")
    try:
        if builder and not path:
            return FAMILIES.get(builder) or backend_class(built_in_source(builder)).family
        return backend_class(check_source(str(path))).family if path else None
    except ModelError:
        return None


def load_tokenizer(source: str, subfolder: str = "tokenizer"):
    """The pipeline's (first) tokenizer alone: cheap, so prompts are checked before the weights load."""
    from transformers import CLIPTokenizer

    tokenizer = _from_pretrained(CLIPTokenizer.from_pretrained, source, subfolder=subfolder)
    if len(tokenizer) < 1000:  # transformers 5 may return a 2-token stub offline instead of raising
        raise ModelError(_download_advice(source, f"the tokenizer loaded with only {len(tokenizer)} tokens; its files are missing"))
    return tokenizer


def load_t5_tokenizer(source: str, subfolder: str):
    """The pipeline's T5 tokenizer in ``subfolder``, or None where the pipeline has none (a dropped T5)."""
    entry = model_index(source).get(subfolder)
    if not isinstance(entry, list) or None in entry:
        return None
    from transformers import T5TokenizerFast

    return _from_pretrained(T5TokenizerFast.from_pretrained, source, subfolder=subfolder)


# model.<key> settings a backend's constructor takes (absent from a family that has no such choice)
BACKEND_OPTIONS = ("text_timestep",)


def backend_options(model_cfg) -> dict:
    """The family settings the model config sets (``model.text_timestep``), and the components it skips."""
    options = {key: model_cfg.get(key) for key in BACKEND_OPTIONS if model_cfg.get(key) is not None}
    skip = model_cfg.get("skip_components")
    return {**options, "skip_components": tuple(skip)} if skip else options


def load_backend(source: str, device: torch.device, dtype: torch.dtype, skip_components=(), **options):
    """Load the pipeline at ``source`` into the backend of its family.

    ``skip_components``: pipeline components to load as None where diffusers allows it (SD3's T5:
    ``text_encoder_3``, ``tokenizer_3``). ``options``: the family's settings (``model.text_timestep``).
    """
    import inspect

    cls = backend_class(source)
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise ModelError(f"model.{unknown[0]} is not a setting of the {cls.family} family; remove it")
    skipped = {name: None for name in skip_components or ()}
    pipe = _from_pretrained(cls.load_pipeline, source, **pipeline_dtype(dtype), **_absent_components(source),
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
