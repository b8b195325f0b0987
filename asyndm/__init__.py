"""asyndm: asynchronous diffusion models (per-pixel timesteps) on diffusers pipelines.

    from asyndm import AsyncPipeline
    pipe = AsyncPipeline.from_pretrained("toy")
    out = pipe("a red circle", items=["circle"], k=0.5, num_inference_steps=25, guidance_scale=3.0)
"""

__version__ = "0.2.0"

__all__ = ["AsyncPipeline", "SamplingSettings", "__version__"]


def __getattr__(name):
    # torch and diffusers load on first use, so `asyndm --help` and config errors stay quick
    if name == "AsyncPipeline":
        from .pipeline import AsyncPipeline

        return AsyncPipeline
    if name == "SamplingSettings":
        from .sampler import SamplingSettings

        return SamplingSettings
    raise AttributeError(f"module 'asyndm' has no attribute {name!r}")
