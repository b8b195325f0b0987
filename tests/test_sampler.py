"""The sampler against diffusers' own StableDiffusionPipeline with DDIM (METHOD.md §4, §7)."""

import pytest
import torch

from asyndm.sampler import AsyncSampler, SamplingSettings

PROMPT = "a cat eating a sandwich"
SEEDS = [1234, 1235]
TOKENS = [[2], [5]]
K = [0.7, 0.5]


def pipeline_latents(bundle, steps, eta, guidance, seeds=SEEDS):
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    out = bundle.pipe(
        PROMPT,
        num_images_per_prompt=len(seeds),
        generator=generators,
        eta=eta,
        guidance_scale=guidance,
        num_inference_steps=steps,
        output_type="latent",
    )
    return out.images


@pytest.mark.parametrize("eta,guidance", [(1.0, 5.0), (0.0, 1.0)])
def test_dm_reproduces_diffusers_pipeline(tiny_bundle, eta, guidance):
    settings = SamplingSettings(steps=10, eta=eta, guidance_scale=guidance)
    sampler = AsyncSampler(tiny_bundle, settings)
    ours = sampler.sample_variant("dm", sampler.encode(PROMPT, len(SEEDS)), SEEDS, TOKENS, K).latents
    reference = pipeline_latents(tiny_bundle, 10, eta, guidance)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_asyndm_with_every_pixel_linear_reproduces_pipeline(tiny_bundle):
    """Per-pixel UNet + per-pixel step + linear curve == diffusers DDIM when N divides 1000."""
    sampler = AsyncSampler(tiny_bundle, SamplingSettings(steps=10))
    zeros = torch.zeros(len(SEEDS), *tiny_bundle.latent_size)
    result = sampler.sample_variant(
        "asyndm", sampler.encode(PROMPT, len(SEEDS)), SEEDS, TOKENS, K, k_override=zeros, record_timesteps=True
    )
    assert [int(m.unique()) for m in result.timestep_maps] == list(range(901, 0, -100))
    torch.testing.assert_close(result.latents, pipeline_latents(tiny_bundle, 10, 1.0, 5.0), rtol=1e-5, atol=1e-5)


def test_images_do_not_depend_on_batch_composition(tiny_bundle):
    sampler = AsyncSampler(tiny_bundle, SamplingSettings(steps=4))
    together = sampler.sample_variant("asyndm", sampler.encode(PROMPT, 2), SEEDS, TOKENS, K).latents
    alone = sampler.sample_variant("asyndm", sampler.encode(PROMPT, 1), SEEDS[1:], TOKENS, K).latents
    torch.testing.assert_close(together[1:], alone, rtol=1e-5, atol=1e-5)


def test_variants_start_from_identical_noise_and_differ_after(tiny_bundle):
    sampler = AsyncSampler(tiny_bundle, SamplingSettings(steps=4))
    emb = sampler.encode(PROMPT, 2)
    first = sampler.initial_latents(sampler.generators(SEEDS), emb.dtype)
    again = sampler.initial_latents(sampler.generators(SEEDS), emb.dtype)
    assert torch.equal(first, again)
    dm = sampler.sample_variant("dm", emb, SEEDS, TOKENS, K).latents
    concave = sampler.sample_variant("dm_concave", emb, SEEDS, TOKENS, K).latents
    assert not torch.allclose(dm, concave)


def test_dynamic_asyndm_moves_items_slower_than_background(tiny_bundle):
    sampler = AsyncSampler(tiny_bundle, SamplingSettings(steps=10))
    result = sampler.sample_variant("asyndm", sampler.encode(PROMPT, 2), SEEDS, TOKENS, K, record_timesteps=True)
    first = result.timestep_maps[0]
    # before the first call every pixel belongs to the item with the largest token index (k = 0.5)
    assert int(first.unique()) == round(1001 * 9 / 10 + 1 / 10 + 0.5 * 1000 * 9 / 100)
    later = result.timestep_maps[5]
    assert later.unique().numel() > 1, "after the first call the mask should split items from background"
    item_pixels = result.assignment >= 0
    assert item_pixels.any() and (~item_pixels).any()


def test_recording_item_maps_keeps_the_images_and_returns_one_map_per_step(tiny_bundle):
    sampler = AsyncSampler(tiny_bundle, SamplingSettings(steps=3))
    embeddings = sampler.encode(PROMPT, len(SEEDS))
    for variant in ("dm", "asyndm"):
        plain = sampler.sample_variant(variant, embeddings, SEEDS, TOKENS, K)
        recorded = sampler.sample_variant(variant, embeddings, SEEDS, TOKENS, K, record_item_maps=True)
        assert torch.equal(plain.latents, recorded.latents)
        assert plain.item_maps == [] and len(recorded.item_maps) == 3
        grid_h, grid_w = sampler.mask_grid
        assert recorded.item_maps[0].shape == (len(SEEDS), len(K), grid_h * grid_w)
