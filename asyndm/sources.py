"""Where a model comes from, checked without loading weights or importing torch.

Users name a model as a local diffusers folder, a hub id, or a built-in name (``tiny``, ``toy``...).
Everything that can fail is checked here before anything heavy loads: the source exists, offline hub
ids are in the cache, and its family (``model_index.json``'s ``_class_name``) has a backend. Backends
are found by that pipeline class through the ``asyndm.backends`` entry points (asyndm/plugins.py).
"""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path

from . import plugins
from .errors import ModelError
from .paths import shipped_model, shipped_model_names

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

# Models the project builds itself with random weights (asyndm/offline/): name → (builder, pipeline class).
BUILT_IN_MODELS = {
    "tiny": ("asyndm.offline.sd:build_tiny_pipeline", "StableDiffusionPipeline"),
    "tiny_sdxl": ("asyndm.offline.sdxl:build_tiny_sdxl_pipeline", "StableDiffusionXLPipeline"),
    "tiny_sd3": ("asyndm.offline.sd3:build_tiny_sd3", "StableDiffusion3Pipeline"),
    "tiny_flux": ("asyndm.offline.flux:build_tiny_flux", "FluxPipeline"),
    "tiny_wan": ("asyndm.offline.wan:build_tiny_wan", "WanPipeline"),
}

# Pipelines that share a supported family's checkpoints but not its task.
UNSUPPORTED = {
    "StableDiffusionInpaintPipeline": "an inpainting checkpoint (its UNet takes 9 input channels and a mask)",
    "StableDiffusionXLImg2ImgPipeline": "an SDXL refiner (image-to-image on already denoised latents)",
    "StableDiffusionImg2ImgPipeline": "an image-to-image pipeline",
    "StableDiffusionXLInpaintPipeline": "an SDXL inpainting checkpoint (its UNet takes 9 input channels and a mask)",
    "StableDiffusion3Img2ImgPipeline": "an image-to-image pipeline",
    "FluxImg2ImgPipeline": "an image-to-image pipeline",
}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def built_in_names() -> tuple[str, ...]:
    """Names that from_pretrained and model.builder accept: the models built offline and the ones
    that ship with asyndm (models/)."""
    return (*BUILT_IN_MODELS, *shipped_model_names())


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
    if name in BUILT_IN_MODELS:
        module, function = BUILT_IN_MODELS[name][0].split(":")
        return str(getattr(importlib.import_module(module), function)())
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


def from_pretrained(loader, source: str, **kwargs):
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

        path = from_pretrained(lambda repo, **kw: hf_hub_download(repo, "model_index.json", **kw), source)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"model.path={source}: its model_index.json cannot be read ({err})") from err


def pipeline_class(model_cfg) -> str | None:
    """The configured model's diffusers pipeline class, without building or loading it; None where it
    cannot be read (an unknown or missing model)."""
    builder, path = model_cfg.get("builder"), model_cfg.get("path")
    try:
        if builder and not path:
            if builder in BUILT_IN_MODELS:
                return BUILT_IN_MODELS[builder][1]
            return model_index(built_in_source(builder)).get("_class_name")
        return model_index(check_source(str(path))).get("_class_name") if path else None
    except ModelError:
        return None


def backend_for_pipeline(class_name: str, source: str = ""):
    """The backend class that drives ``class_name`` (an ``asyndm.backends`` entry point), or a refusal
    that says why, before anything loads."""
    where = f"model.path={source}: " if source else ""
    if class_name in UNSUPPORTED:
        raise ModelError(f"{where}{class_name} is {UNSUPPORTED[class_name]}; asyndm samples text-to-image only")
    backends = plugins.declared(plugins.BACKENDS)
    if class_name not in backends:
        raise ModelError(f"{where}pipeline class '{class_name or '(none)'}' is not supported; asyndm drives "
                         f"{', '.join(sorted(backends))} folders")
    return plugins.load(plugins.BACKENDS, class_name)


def backend_class(source: str):
    """The backend of the source's family, from ``model_index.json``; raises for unsupported families."""
    return backend_for_pipeline(model_index(source).get("_class_name", ""), source)


def load_tokenizer(source: str, subfolder: str = "tokenizer"):
    """The pipeline's (first) tokenizer alone: cheap, so prompts are checked before the weights load."""
    from transformers import CLIPTokenizer

    tokenizer = from_pretrained(CLIPTokenizer.from_pretrained, source, subfolder=subfolder)
    if len(tokenizer) < 1000:  # transformers 5 may return a 2-token stub offline instead of raising
        raise ModelError(_download_advice(source, f"the tokenizer loaded with only {len(tokenizer)} tokens; its files are missing"))
    return tokenizer


def load_t5_tokenizer(source: str, subfolder: str):
    """The pipeline's T5 tokenizer in ``subfolder``, or None where the pipeline has none (a dropped T5)."""
    entry = model_index(source).get(subfolder)
    if not isinstance(entry, list) or None in entry:
        return None
    from transformers import T5TokenizerFast

    return from_pretrained(T5TokenizerFast.from_pretrained, source, subfolder=subfolder)
