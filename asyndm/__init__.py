"""asyndm: asynchronous diffusion models (per-pixel timesteps) on diffusers Stable Diffusion."""

__version__ = "0.1.0"
