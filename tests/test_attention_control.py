"""The SD backend's capabilities for the baselines (asyndm/attention_control.py): SEG's blur against
torchvision's, recorded probabilities against the item-map capture, and a model left unchanged."""

import pytest
import torch
import torchvision.transforms.functional as TF

from asyndm.attention_control import gaussian_blur, layers_in, smooth, smoothing_kernel
from asyndm.backends import ItemTokens

TOKENS = ItemTokens([[2], [5]])


def test_blur_is_torchvision_gaussian_blur():
    """SEG's kernel (size ⌈6σ⌉ made odd, exp(-x²/2σ²), reflect padding) is torchvision's."""
    images = torch.randn(2, 3, 16, 16)
    for sigma in (0.5, 1.0, 2.0):
        size = int(torch.tensor(6 * sigma).ceil()) // 2 * 2 + 1
        torch.testing.assert_close(gaussian_blur(images, sigma), TF.gaussian_blur(images, [size, size], [sigma, sigma]))
    assert torch.equal(gaussian_blur(images, 1e9), images.mean(dim=(2, 3), keepdim=True).expand_as(images))
    torch.testing.assert_close(gaussian_blur(images, 1e-3), images)  # no blur at all


def test_smoothing_kernel_is_the_released_one():
    """GaussianSmoothing(3, 0.5) of Attend-and-Excite and S-CFG: per axis exp(-(x-1)²) at x = 0, 1, 2;
    to the last bit as released: c·exp(...) per axis with c = 1/(0.5·√(2π)), multiplied, normalised."""
    axis = torch.exp(-torch.tensor([1.0, 0.0, 1.0]))
    expected = axis[:, None] * axis[None, :]
    torch.testing.assert_close(smoothing_kernel(), expected / expected.sum())
    factor = 1 / (0.5 * (2 * torch.pi) ** 0.5) * torch.exp(-(((torch.arange(3.0) - 1) / 1.0) ** 2))
    released = factor[:, None] * factor[None, :]
    assert torch.equal(smoothing_kernel(), released / torch.sum(released))
    ones = torch.ones(2, 5, 5)
    torch.testing.assert_close(smooth(ones), ones)


def unet_call(backend, latents, cond):
    return backend.unet(latents, 501, encoder_hidden_states=cond.positive.tensors["encoder_hidden_states"]).sample


@pytest.fixture(scope="module")
def inputs(tiny_backend):
    latents = tiny_backend.initial_latents(tiny_backend.generators([1, 2]), 128, 128)
    cond = tiny_backend.encode("a cat eating a sandwich", 2, "", False)
    return latents, cond


def test_capabilities_leave_the_model_as_they_found_it(tiny_backend, inputs):
    backend, (latents, cond) = tiny_backend, inputs
    with torch.no_grad():
        before = unet_call(backend, latents, cond)
        with backend.attention_probabilities(latents, [16, 8]) as record:
            recorded = unet_call(backend, latents, cond)
        with backend.blurred_self_attention(latents, float("inf")):
            blurred = unet_call(backend, latents, cond)
        with backend.blurred_self_attention(latents, 1e-3):  # a kernel that is a delta: no change
            sharp = unet_call(backend, latents, cond)
        after = unet_call(backend, latents, cond)
    with backend.latent_gradients():
        assert torch.is_grad_enabled() and not any(p.requires_grad for p in backend.unet.parameters())
    assert all(p.requires_grad for p in backend.unet.parameters())
    assert torch.equal(before, recorded) and torch.equal(before, after)
    torch.testing.assert_close(sharp, before, rtol=1e-5, atol=1e-5)
    assert (blurred - before).abs().max() > 1e-3
    assert not any(m._forward_hooks for m in backend.unet.modules()), "every hook removed"
    assert layers_in(backend.unet, ["mid"]) == ["mid_block.attentions.0.transformer_blocks.0.attn1"]
    assert set(record.grid_of.values()) == {16, 8} and record.layers("attn1", 8) == [
        "mid_block.attentions.0.transformer_blocks.0.attn1"]


def test_explicit_attention_is_diffusers_attn_processor(tiny_backend, inputs):
    """S-CFG's call (``explicit=True``): every layer computes softmax probabilities as diffusers'
    ``AttnProcessor`` (the released processor's arithmetic), bit for bit; the processors come back."""
    from diffusers.models.attention_processor import AttnProcessor

    backend, (latents, cond) = tiny_backend, inputs
    before = {name: type(p) for name, p in backend.unet.attn_processors.items()}
    with torch.no_grad():
        with backend.attention_probabilities(latents, [16, 8], explicit=True):
            explicit = unet_call(backend, latents, cond)
        saved = backend.unet.attn_processors
        backend.unet.set_attn_processor(AttnProcessor())
        try:
            expected = unet_call(backend, latents, cond)
        finally:
            backend.unet.set_attn_processor(saved)
    assert torch.equal(explicit, expected)
    assert {name: type(p) for name, p in backend.unet.attn_processors.items()} == before


def test_recorded_cross_attention_gives_the_item_maps(tiny_backend, inputs):
    """The recorded maps of the 16×16 cross-attention layers, averaged and read at the item tokens,
    are the item maps the sampler's own capture gives (§6): two ways to the same probabilities."""
    backend, (latents, cond) = tiny_backend, inputs
    with torch.no_grad(), backend.item_attention(TOKENS, latents, 16) as items:
        with backend.attention_probabilities(latents, [16], kinds=("attn2",)) as record:
            backend.predict(latents, backend.timeline(4).sync_states[1].expand(2, 64, 64), cond.positive, True,
                            capture_rows=slice(0, 2), attention=items)
        expected = items.take()  # (B, items, 256)
    maps = record.mean(record.layers("attn2"))  # (B, 256, 77)
    assert maps.shape == (2, 256, 77) and torch.allclose(maps.sum(-1), torch.ones(2, 256))
    torch.testing.assert_close(maps[:, :, [2, 5]].transpose(1, 2), expected, rtol=1e-5, atol=1e-6)
