"""Each speed-up gives the same latents as the straightforward path it replaces."""

import torch

from asyndm.backends import ItemTokens
from asyndm.pixel_timesteps import PixelTimestepUNet
from asyndm.sampler import AsyncSampler, SamplingSettings

PROMPT, SEEDS, TOKENS, K = "a cat eating a sandwich", [7, 8], ItemTokens([[2], [5]]), [0.7, 0.3]


def test_tabulated_time_embedding_equals_per_pixel_embedding(tiny_backend):
    """Gathering a per-block table of all timesteps == embedding every pixel's timestep (§5)."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, *tiny_backend.latent_size, generator=generator)
    context = torch.randn(2, 77, tiny_backend.unet.config.cross_attention_dim, generator=generator)
    timestep_map = torch.randint(0, 1000, (2, *tiny_backend.latent_size), generator=generator)
    with torch.no_grad():
        fast = PixelTimestepUNet(tiny_backend.unet, 1000)(sample, timestep_map, context).sample
        direct = PixelTimestepUNet(tiny_backend.unet, 1000, tabulate=False)(sample, timestep_map, context).sample
    torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-5)


def test_sampler_latents_equal_with_the_straightforward_embedding(tiny_backend, monkeypatch):
    sampler = AsyncSampler(tiny_backend, SamplingSettings(steps=4))
    cond = sampler.encode(PROMPT, len(SEEDS))
    fast = sampler.sample_variant("asyndm", cond, SEEDS, TOKENS, K).latents
    monkeypatch.setattr(tiny_backend, "pixel_unet", PixelTimestepUNet(tiny_backend.unet, 1000, tabulate=False))
    direct = sampler.sample_variant("asyndm", cond, SEEDS, TOKENS, K).latents
    torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-5)


def test_synchronous_variants_use_the_scalar_unet_path(tiny_backend):
    """dm_concave calls the plain UNet with one timestep; the per-pixel path must agree with it."""
    sampler = AsyncSampler(tiny_backend, SamplingSettings(steps=4))
    cond = sampler.encode(PROMPT, len(SEEDS))
    concave = sampler.sample_variant("dm_concave", cond, SEEDS, TOKENS, [0.7, 0.7]).latents
    # every pixel on item 0's curve (k 0.7), through the per-pixel UNet
    everywhere = torch.zeros((len(SEEDS), *tiny_backend.latent_size), dtype=torch.long)
    per_pixel = sampler.sample_variant("asyndm", cond, SEEDS, TOKENS, [0.7, 0.7], masks=everywhere).latents
    torch.testing.assert_close(concave, per_pixel, rtol=1e-5, atol=1e-5)
