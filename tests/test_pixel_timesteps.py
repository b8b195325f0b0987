"""Per-pixel timesteps inside the UNet (METHOD.md §5): a constant map is the plain UNet, the model is
restored after every call, and UNets whose time embedding is not t's plus a per-sample embedding
(SDXL's text-time: tests/test_sdxl.py) are refused."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from asyndm.pixel_timesteps import PixelTimestepUNet, _subsample, check_supported

ATOL = 2e-5  # observed max difference ≈ 2e-6 (matmul order only)


@pytest.fixture(scope="module")
def inputs(tiny_backend):
    g = torch.Generator().manual_seed(0)
    h, w = tiny_backend.latent_size
    sample = torch.randn(2, tiny_backend.unet.config.in_channels, h, w, generator=g)
    context = torch.randn(2, 77, tiny_backend.unet.config.cross_attention_dim, generator=g)
    return sample, context


@pytest.fixture(scope="module")
def plain(tiny_backend, inputs):
    sample, context = inputs
    with torch.no_grad():
        return {t: tiny_backend.unet(sample, t, encoder_hidden_states=context).sample for t in (100, 900)}


def all_hooks(module):
    return [
        (name, kind)
        for name, m in module.named_modules()
        for kind in ("_forward_hooks", "_forward_pre_hooks")
        if getattr(m, kind)
    ]


@torch.no_grad()
def test_constant_map_equals_scalar_timestep_unet(tiny_backend, inputs, plain):
    sample, context = inputs
    pixel_unet = PixelTimestepUNet(tiny_backend.unet, 1000)
    for t, reference in plain.items():
        out = pixel_unet(sample, torch.full((2, *sample.shape[2:]), t), context).sample
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=ATOL)
        assert (out - plain[1000 - t]).abs().max() > 100 * ATOL, "the timestep must matter"


@torch.no_grad()
def test_each_batch_element_follows_its_own_map(tiny_backend, inputs):
    # Image 0 all at 900, image 1 all at 100 == diffusers' own per-sample timesteps tensor([900, 100]).
    sample, context = inputs
    pixel_map = torch.full((2, *sample.shape[2:]), 900)
    pixel_map[1] = 100
    out = PixelTimestepUNet(tiny_backend.unet, 1000)(sample, pixel_map, context).sample
    reference = tiny_backend.unet(sample, torch.tensor([900, 100]), encoder_hidden_states=context).sample
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=ATOL)


@torch.no_grad()
def test_two_halves_each_follow_their_own_timestep(tiny_backend, inputs, plain):
    sample, context = inputs
    pixel_map = torch.full((2, *sample.shape[2:]), 900)
    pixel_map[..., 32:] = 100  # left half 900, right half 100
    out = PixelTimestepUNet(tiny_backend.unet, 1000)(sample, pixel_map, context).sample
    left, right = (slice(0, 24), slice(40, 64))  # away from the seam, where convolutions mix both

    def err(region, t):
        return float((out[..., region] - plain[t][..., region]).abs().mean())

    for t in (100, 900):
        assert (out - plain[t]).abs().max() > 100 * ATOL, "a mixed map differs from either constant map"
    assert err(left, 900) < 0.8 * err(left, 100)
    assert err(right, 100) < 0.8 * err(right, 900)


@torch.no_grad()
def test_model_is_restored_after_a_call(tiny_backend, inputs, plain):
    sample, context = inputs
    unet = tiny_backend.unet
    processors = dict(unet.attn_processors)
    hooks_before = all_hooks(unet)
    pixel_unet = PixelTimestepUNet(unet, 1000)
    pixel_map = torch.randint(0, 1000, (2, *sample.shape[2:]))
    pixel_unet(sample, pixel_map, context)
    assert all_hooks(unet) == hooks_before == []
    assert dict(unet.attn_processors) == processors
    assert all(a is b for a, b in zip(unet.attn_processors.values(), processors.values()))
    again = unet(sample, 900, encoder_hidden_states=context).sample
    assert torch.equal(again, plain[900])


@torch.no_grad()
def test_hooks_are_removed_when_the_call_fails(tiny_backend, inputs):
    sample, context = inputs
    pixel_unet = PixelTimestepUNet(tiny_backend.unet, 1000)
    pixel_map = torch.full((2, *sample.shape[2:]), 500)
    with pytest.raises(RuntimeError):
        pixel_unet(sample, pixel_map, context[..., :5])  # wrong cross-attention width
    assert all_hooks(tiny_backend.unet) == []
    with pytest.raises(KeyError):
        with pixel_unet.active(pixel_map):
            raise KeyError("inside")
    assert all_hooks(tiny_backend.unet) == []


def test_map_shape_must_match_latents(tiny_backend, inputs):
    sample, context = inputs
    with pytest.raises(ValueError, match=r"timestep map shape \(2, 32, 32\)"):
        PixelTimestepUNet(tiny_backend.unet, 1000)(sample, torch.zeros(2, 32, 32, dtype=torch.long), context)


def test_block_subsampling_takes_the_top_left_pixel_of_each_cell():
    # Hand-worked on a 4×4 map: the 2×2 grid keeps rows 0, 2 and columns 0, 2 (no averaging).
    pixel_map = (torch.arange(16).view(1, 4, 4) * 10).expand(2, 4, 4)  # (B, h, w)
    assert _subsample(pixel_map, 2, 2).tolist() == [[[0, 20], [80, 100]]] * 2
    assert _subsample(pixel_map, 1, 1).tolist() == [[[0]]] * 2
    assert torch.equal(_subsample(pixel_map, 4, 4), pixel_map)
    assert _subsample(pixel_map, 2, 4).tolist() == [[[0, 10, 20, 30], [80, 90, 100, 110]]] * 2
    with pytest.raises(ValueError, match="does not divide"):
        _subsample(pixel_map, 3, 3)


SMALL = dict(
    sample_size=8,
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=8,
    attention_head_dim=4,
    norm_num_groups=4,
)


@pytest.mark.parametrize(
    "extra",
    [{}, {"time_embedding_act_fn": "silu"}, {"resnet_skip_time_act": True}, {"flip_sin_to_cos": False, "freq_shift": 1}],
)
@torch.no_grad()
def test_constant_map_on_other_sd_style_configs(extra):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SMALL, **extra)
    sample, context = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 8)
    out = PixelTimestepUNet(unet, 1000)(sample, torch.full((2, 8, 8), 321), context).sample
    torch.testing.assert_close(out, unet(sample, 321, encoder_hidden_states=context).sample, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "extra,match",
    [
        ({"num_class_embeds": 10}, "class"),
        ({"class_embed_type": "timestep"}, "class"),
        ({"addition_embed_type": "image", "encoder_hid_dim": 8}, "'image' addition"),  # Kandinsky 2.2
        ({"time_cond_proj_dim": 4}, "time_cond_proj_dim"),
        ({"resnet_time_scale_shift": "scale_shift"}, "scale_shift"),
    ],
)
def test_unsupported_unets_raise(extra, match):
    unet = UNet2DConditionModel(**SMALL, **extra)
    with pytest.raises(NotImplementedError, match=match):
        PixelTimestepUNet(unet, 1000)
    with pytest.raises(NotImplementedError):
        check_supported(unet)
