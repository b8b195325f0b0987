"""Cross-attention capture (METHOD.md §6): the right layers, the right numbers, an unchanged output,
and every processor restored afterwards."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from asyndm.attention import AttentionStore, capture_cross_attention, capture_layer_names, cross_attention_grids


def measured_query_sides(unet, sample, context, timestep=500):
    """Processor name → side of the query grid, measured from each attn2 input's sequence length."""
    sides, handles = {}, []
    for name, module in unet.named_modules():
        if name.endswith("attn2"):

            def pre_hook(module, args, kwargs, name=name):
                hidden = args[0] if args else kwargs["hidden_states"]
                sides[f"{name}.processor"] = int(round(hidden.shape[1] ** 0.5))

            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        with torch.no_grad():
            unet(sample, timestep, encoder_hidden_states=context)
    finally:
        for handle in handles:
            handle.remove()
    return sides


@pytest.fixture(scope="module")
def inputs(tiny_backend):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, *tiny_backend.latent_size, generator=g)
    context = torch.randn(2, 77, tiny_backend.unet.config.cross_attention_dim, generator=g)
    return sample, context


def test_tiny_model_layers_at_resolution_16_are_those_with_a_16x16_query(tiny_backend, inputs):
    assert tiny_backend.latent_size == (64, 64)
    sides = measured_query_sides(tiny_backend.unet, *inputs)
    assert set(sides) == set(cross_attention_grids(tiny_backend.unet))
    for resolution in sorted(set(sides.values())):
        expected = sorted(name for name, side in sides.items() if side == resolution)
        assert sorted(capture_layer_names(tiny_backend.unet, 64, resolution)) == expected
    at_16 = capture_layer_names(tiny_backend.unet, 64, 16)
    assert len(at_16) >= 1 and all(sides[name] == 16 for name in at_16)


def test_sd2_shaped_unet_captures_two_down_and_three_up_layers_at_16():
    # SD2.x block layout (METHOD.md §6): 16×16 = two layers in the third down block, three in the second up block.
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=8,
        attention_head_dim=4,
        norm_num_groups=4,
        use_linear_projection=True,
    )
    names = capture_layer_names(unet, 64, 16)
    sides = measured_query_sides(unet, torch.randn(1, 4, 64, 64), torch.randn(1, 3, 8))
    assert sorted(names) == sorted(name for name, side in sides.items() if side == 16)
    assert sorted(n.split(".attentions")[0] for n in names) == ["down_blocks.2"] * 2 + ["up_blocks.1"] * 3


def test_bad_resolution_lists_the_available_ones(tiny_backend):
    sides = sorted({64 // f for f in cross_attention_grids(tiny_backend.unet).values()})
    assert sides == [8, 16, 32]
    with pytest.raises(ValueError, match=r"mask.resolution=12: .* choose one of \[8, 16, 32\]"):
        capture_layer_names(tiny_backend.unet, 64, 12)


def manual_item_maps(unet, layer_names, sample, context, token_weights, cond_start):
    """Softmax(QKᵀ/√d) written out by hand from each attn2's inputs: mean over heads, then layers."""
    maps, handles = [], []
    modules = dict(unet.named_modules())
    for name in layer_names:
        attn = modules[name.removesuffix(".processor")]

        def pre_hook(attn, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            ctx = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            start = int(hidden.shape[0] * cond_start)
            q, k = attn.to_q(hidden[start:]), attn.to_k(ctx[start:])
            batch, heads = q.shape[0], attn.heads
            q = q.view(batch, q.shape[1], heads, -1).transpose(1, 2)  # (B, heads, hw, d)
            k = k.view(batch, k.shape[1], heads, -1).transpose(1, 2)  # (B, heads, L, d)
            probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
            maps.append((probs.mean(dim=1) @ token_weights).transpose(1, 2))  # (B, n_items, hw)

        handles.append(attn.register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        with torch.no_grad():
            out = unet(sample, 500, encoder_hidden_states=context).sample
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(maps).mean(dim=0), out


def token_weights_for(positions, length=77):
    weights = torch.zeros(length, len(positions))
    for item, tokens in enumerate(positions):
        weights[tokens, item] = 1.0 / len(tokens)
    return weights


@pytest.mark.parametrize("cond_start", [0.0, 0.5])
def test_captured_maps_equal_hand_computed_attention(tiny_backend, inputs, cond_start):
    unet = tiny_backend.unet
    sample, context = inputs
    names = capture_layer_names(unet, 64, 16)
    weights = token_weights_for([[2], [5, 6]])  # item 1 spans two tokens: the mean of their maps
    expected, plain = manual_item_maps(unet, names, sample, context, weights, cond_start)
    store = AttentionStore([[2], [5, 6]])
    with capture_cross_attention(unet, names, store), torch.no_grad():
        store.rows = slice(int(len(sample) * cond_start), len(sample))
        out = unet(sample, 500, encoder_hidden_states=context).sample
    captured = store.item_maps()
    assert captured.shape == (2 if cond_start == 0 else 1, 2, 16 * 16)
    torch.testing.assert_close(captured, expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(out, plain), "capturing must not change the UNet output"


def test_all_token_maps_sum_to_one_per_pixel(tiny_backend, inputs):
    unet = tiny_backend.unet
    store = AttentionStore([[t] for t in range(77)])  # one "item" per token: a full softmax row per pixel
    with capture_cross_attention(unet, capture_layer_names(unet, 64, 32), store), torch.no_grad():
        store.rows = slice(0, 2)
        unet(inputs[0], 500, encoder_hidden_states=inputs[1])
    sums = store.item_maps().sum(dim=1)  # (B, 32*32)
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=1e-5, atol=1e-5)
    assert store.item_maps().shape == (2, 77, 32 * 32)


def test_disabled_store_captures_nothing(tiny_backend, inputs):
    store = AttentionStore([[1]])
    with capture_cross_attention(tiny_backend.unet, capture_layer_names(tiny_backend.unet, 64, 16), store):
        with torch.no_grad():
            tiny_backend.unet(inputs[0], 500, encoder_hidden_states=inputs[1])
    with pytest.raises(RuntimeError, match="no cross-attention was captured"):
        store.item_maps()


def test_processors_are_restored_on_exit_and_on_error(tiny_backend):
    unet = tiny_backend.unet
    original = dict(unet.attn_processors)
    names = capture_layer_names(unet, 64, 16)
    store = AttentionStore([[1]])
    with capture_cross_attention(unet, names, store):
        inside = unet.attn_processors
        patched = [n for n in inside if inside[n] is not original[n]]
        assert sorted(patched) == sorted(names), "only the captured layers change; the rest keep SDPA"
    assert all(unet.attn_processors[n] is p for n, p in original.items())
    with pytest.raises(ZeroDivisionError):
        with capture_cross_attention(unet, names, store):
            1 / 0
    assert all(unet.attn_processors[n] is p for n, p in original.items())
    with pytest.raises(KeyError, match="no attention processors named"):
        with capture_cross_attention(unet, ["down_blocks.9.attn2.processor"], store):
            pass
    assert all(unet.attn_processors[n] is p for n, p in original.items())


def test_capture_reuses_each_layers_own_projections_and_leaves_no_hooks(tiny_backend, inputs):
    """The captured maps come from the layer's own to_q/to_k outputs: one query projection per layer."""
    unet = tiny_backend.unet
    names = capture_layer_names(unet, 64, 16)
    modules = dict(unet.named_modules())
    calls = []
    counters = [modules[n.removesuffix(".processor")].to_q.register_forward_pre_hook(lambda m, a: calls.append(m))
                for n in names]
    store = AttentionStore([[2]])
    try:
        with capture_cross_attention(unet, names, store), torch.no_grad():
            store.rows = slice(1, 2)
            unet(inputs[0], 500, encoder_hidden_states=inputs[1])
    finally:
        for handle in counters:
            handle.remove()
    assert len(calls) == len(names)
    assert store.item_maps().shape == (1, 1, 16 * 16)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in unet.modules())
