"""Model families behind one surface (base.py); each module is one family.

``backend_for_pipeline`` maps a diffusers pipeline class (``model_index.json``'s ``_class_name``)
to its backend, and refuses pipelines asyndm cannot drive with the reason, before anything loads.
"""

from __future__ import annotations

from ..errors import ModelError
from .base import Backend, ItemTokens, Prediction, PromptConditioning, TextConditioning, Timeline
from .flux import FluxBackend
from .sd import StableDiffusionBackend
from .sdxl import StableDiffusionXLBackend
from .sd3 import StableDiffusion3Backend

BACKENDS: dict[str, type[Backend]] = {
    cls.family: cls for cls in (StableDiffusionBackend, StableDiffusionXLBackend, StableDiffusion3Backend, FluxBackend)
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


def backend_for_pipeline(class_name: str, source: str = "") -> type[Backend]:
    for cls in BACKENDS.values():
        if class_name in cls.pipeline_classes:
            return cls
    where = f"model.path={source}: " if source else ""
    if class_name in UNSUPPORTED:
        raise ModelError(f"{where}{class_name} is {UNSUPPORTED[class_name]}; asyndm samples text-to-image only")
    supported = sorted(name for cls in BACKENDS.values() for name in cls.pipeline_classes)
    raise ModelError(f"{where}pipeline class '{class_name or '(none)'}' is not supported; asyndm drives "
                     f"{', '.join(supported)} folders")


__all__ = ["BACKENDS", "Backend", "ItemTokens", "Prediction", "PromptConditioning", "TextConditioning", "Timeline",
           "StableDiffusionBackend", "StableDiffusionXLBackend", "StableDiffusion3Backend", "FluxBackend",
           "backend_for_pipeline"]
