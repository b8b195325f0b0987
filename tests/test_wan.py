"""Wan on the offline ``tiny_wan`` (METHOD.md §9): dm against diffusers' WanPipeline with the flow-matching
Euler scheduler (fp32 and bf16, 7 steps), all-linear asyndm against dm, per-token timesteps against a
forward written here from the transformer's weights (every token modulated by its own embedding),
cross-attention capture against a hand-computed softmax, and masks over frames."""

import math

import pytest
import torch
import torch.nn.functional as F

from asyndm.masks import frame_assignment
from asyndm.sampler import AsyncSampler, SamplingSettings

PROMPT = "a red car driving past a dog"
ITEMS = ["car", "dog"]
K = [0.7, 0.5]
SEEDS = [1234, 1235]
HEIGHT, WIDTH, FRAMES = 64, 96, 5  # latents (16, 2, 8, 12): 2 frames of 4×6 tokens
GRID = (2 * 4, 6)
STEPS = 7  # does not divide 1000


@pytest.fixture(scope="module")
def tiny_wan_path():
    from asyndm.offline.wan import build_tiny_wan

    return build_tiny_wan()


def _backend(path, dtype, frames=FRAMES):
    from asyndm.models import load_backend

    return load_backend(str(path), torch.device("cpu"), dtype, num_frames=frames)


@pytest.fixture(scope="module")
def backends(tiny_wan_path):
    return {torch.float32: _backend(tiny_wan_path, torch.float32), torch.bfloat16: _backend(tiny_wan_path, torch.bfloat16)}


@pytest.fixture(scope="module")
def wan(backends):
    return backends[torch.float32]


@pytest.fixture(scope="module")
def tokens(wan):
    return wan.item_tokens(PROMPT, ITEMS, None, "word")


def sample(backend, tokens, variant, steps=STEPS, masks=None, callbacks=(), **settings):
    settings = {"guidance_scale": 5.0, "height": HEIGHT, "width": WIDTH, **settings}
    sampler = AsyncSampler(backend, SamplingSettings(steps=steps, **settings))
    return sampler.sample_variant(variant, sampler.encode(PROMPT, len(SEEDS)), SEEDS, tokens, K, masks, callbacks)


def pipeline_latents(path, dtype, steps=STEPS, guidance=5.0, frames=FRAMES):
    """WanPipeline itself, loaded afresh, with FlowMatchEulerDiscreteScheduler at the folder's flow_shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    pipe = WanPipeline.from_pretrained(str(path), dtype=dtype)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=pipe.scheduler.config.flow_shift)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    return pipe(PROMPT, height=HEIGHT, width=WIDTH, num_frames=frames, num_inference_steps=steps,
                guidance_scale=guidance, num_videos_per_prompt=len(SEEDS), generator=generators,
                output_type="latent").frames


# ---------------------------------------------------------------------------- equal to diffusers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_dm_equals_the_wan_pipeline_with_flow_matching_euler_bit_for_bit(backends, tiny_wan_path, tokens, dtype):
    ours = sample(backends[dtype], tokens, "dm").latents
    reference = pipeline_latents(tiny_wan_path, dtype)
    assert ours.shape == (2, 16, 2, 8, 12) and ours.dtype == reference.dtype == dtype
    assert torch.equal(ours, reference)


def test_dm_without_guidance_equals_the_pipeline_and_the_scale_reaches_the_model(wan, tiny_wan_path, tokens):
    unguided = sample(wan, tokens, "dm", steps=3, guidance_scale=1.0).latents
    assert torch.equal(unguided, pipeline_latents(tiny_wan_path, torch.float32, steps=3, guidance=1.0))
    assert not torch.allclose(unguided, sample(wan, tokens, "dm", steps=3).latents)


def test_the_folder_names_unipc_and_asyndm_samples_with_euler_at_its_flow_shift(wan):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from asyndm.offline.wan import WAN21_FLOW_SHIFT

    assert isinstance(wan.pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert wan.pipe.scheduler.config.shift == WAN21_FLOW_SHIFT


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_asyndm_with_every_token_linear_equals_dm(backends, tokens, dtype):
    """Per-token timesteps (the model's (batch, tokens) input) + per-token Euler + the linear curve == dm."""
    backend = backends[dtype]
    background = torch.full((len(SEEDS), *GRID), -1)
    linear = sample(backend, tokens, "asyndm", masks=background).latents
    dm = sample(backend, tokens, "dm").latents
    if dtype == torch.float32:
        torch.testing.assert_close(linear, dm, rtol=1e-5, atol=1e-5)
    else:  # the linear curve's float32 states give σ to 2–3e-7 of the scheduler's, which can flip a bf16
        # rounding of dt or of the model's activations: measured at most 0.031 with |latents| up to 4.8
        torch.testing.assert_close(linear.float(), dm.float(), rtol=0, atol=2**-4)


# ---------------------------------------------------------------------------- per-token timesteps


def _sinusoid(t: torch.Tensor, channels: int) -> torch.Tensor:
    """Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0), written out."""
    half = channels // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _rotate(x, cos, sin):
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
    out[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
    return out


def independent_forward(model, latents, timesteps, text):
    """WanTransformer3DModel's output with token n of sample b at ``timesteps[b, n]``, from its weights:
    each token's embedding computed on its own, its AdaLN from that embedding (fp32)."""
    cfg = model.config
    p_t, p_h, p_w = cfg.patch_size
    batch, _, frames, height, width = latents.shape
    heads = cfg.num_attention_heads
    x = F.conv3d(latents, model.patch_embedding.weight, model.patch_embedding.bias, stride=(p_t, p_h, p_w))
    x = x.flatten(2).transpose(1, 2)  # (B, N, D) frame-major
    tokens = x.shape[1]
    embedder = model.condition_embedder
    temb = torch.stack([torch.stack([
        embedder.time_embedder(_sinusoid(timesteps[b, n : n + 1], cfg.freq_dim))[0] for n in range(tokens)])
        for b in range(batch)])  # (B, N, D): one token at a time
    modulation = embedder.time_proj(F.silu(temb)).unflatten(2, (6, -1))  # (B, N, 6, D)
    context = embedder.text_embedder(text)
    cos, sin = model.rope(latents)  # positions only: (1, N, 1, head_dim)

    def attention(attn, hidden, keys_from, rotary):
        q = attn.norm_q(attn.to_q(hidden)).unflatten(2, (heads, -1))
        k = attn.norm_k(attn.to_k(keys_from)).unflatten(2, (heads, -1))
        v = attn.to_v(keys_from).unflatten(2, (heads, -1))
        if rotary:
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return attn.to_out[0](out.transpose(1, 2).flatten(2))

    for block in model.blocks:
        shift, scale, gate, c_shift, c_scale, c_gate = (block.scale_shift_table[0][None, None] + modulation).unbind(2)
        normed = F.layer_norm(x, x.shape[-1:], eps=block.norm1.eps) * (1 + scale) + shift
        x = x + attention(block.attn1, normed, normed, rotary=True) * gate
        x = x + attention(block.attn2, block.norm2(x), context, rotary=False)
        normed = F.layer_norm(x, x.shape[-1:], eps=block.norm3.eps) * (1 + c_scale) + c_shift
        x = x + block.ffn(normed) * c_gate
    shift, scale = (model.scale_shift_table[0][None, None] + temb[:, :, None]).unbind(2)
    x = F.layer_norm(x, x.shape[-1:], eps=model.norm_out.eps) * (1 + scale) + shift
    x = model.proj_out(x)
    x = x.reshape(batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
    return x.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)


def test_per_token_predict_equals_the_independent_per_token_forward(wan):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 16, 2, 8, 12, generator=generator)
    states = torch.rand(2, *GRID, generator=generator) * 1000  # every token its own state
    text = wan.encode(PROMPT, 2, "", False).positive
    ours = wan.predict(latents, states, text, uniform=False)
    seen = wan.model_timesteps(states).flatten(1)  # σ(s)·1000, frame-major like the tokens
    reference = independent_forward(wan.transformer, latents, seen, text.tensors["encoder_hidden_states"])
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    # the token order matters: the map read column-major gives another output
    transposed = wan.model_timesteps(states).transpose(1, 2).flatten(1)
    assert not torch.allclose(ours, independent_forward(wan.transformer, latents, transposed,
                                                        text.tensors["encoder_hidden_states"]), atol=1e-3)


def test_a_per_token_map_constant_per_sample_equals_the_scalar_call(wan):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 16, 2, 8, 12, generator=generator)
    text = wan.encode(PROMPT, 2, "", False).positive
    states = torch.tensor([700.0, 300.0])[:, None, None].expand(2, *GRID)
    per_token = wan.predict(latents, states, text, uniform=False)
    scalar = wan.transformer(hidden_states=latents, timestep=wan.model_timesteps(states)[:, 0, 0],
                             encoder_hidden_states=text.tensors["encoder_hidden_states"], return_dict=False)[0]
    torch.testing.assert_close(per_token, scalar, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- masks over frames


def test_capture_equals_a_hand_computed_cross_attention_softmax_and_leaves_the_output_unchanged(wan, tokens):
    generator = torch.Generator().manual_seed(2)
    latents = torch.randn(2, 16, 2, 8, 12, generator=generator)
    states = torch.full((2, *GRID), 500.0)
    text = wan.encode(PROMPT, 2, "", False).positive
    plain = wan.predict(latents, states, text, uniform=True)
    seen = {}
    block = wan.transformer.blocks[2]

    def keep_inputs(module, args, out):
        seen["in"] = args

    hook = block.attn2.register_forward_hook(keep_inputs)
    try:
        with wan.item_attention(tokens, latents, None, blocks=[2]) as attention:
            captured = wan.predict(latents, states, text, uniform=True, capture_rows=slice(0, 2), attention=attention)
            maps = attention.take()
    finally:
        hook.remove()
    assert torch.equal(captured, plain)
    hidden, context = seen["in"][0], seen["in"][1]
    attn, heads = block.attn2, wan.transformer.config.num_attention_heads
    q = attn.norm_q(attn.to_q(hidden)).unflatten(2, (heads, -1)).transpose(1, 2)
    k = attn.norm_k(attn.to_k(context)).unflatten(2, (heads, -1)).transpose(1, 2)
    probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1).mean(1)  # (B, N, 512)
    expected = torch.stack([probs[..., p].mean(-1) for p in tokens.positions], dim=1)
    assert maps.shape == (2, 2, GRID[0] * GRID[1])
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)


def test_item_words_resolve_to_their_umt5_positions(wan, tokens):
    ids = wan.pipe.tokenizer(PROMPT).input_ids
    for item, positions in zip(ITEMS, tokens.positions):
        assert wan.pipe.tokenizer.decode([ids[p] for p in positions]).strip() == item


def test_frame_masks_binarise_each_frame_at_its_own_mean_and_union_joins_the_frames():
    maps = torch.tensor([[[1.0, 0.1], [0.1, 0.1],  # item 0, frame 0: top-left only
                          [0.1, 0.1], [0.2, 0.3]],  # item 0, frame 1: faint, but the bottom row ≥ this frame's mean
                         [[0.1, 0.2], [0.1, 0.1],  # item 1, frame 0: top-right
                          [0.1, 0.1], [0.1, 5.0]]])[None]  # item 1, frame 1: bottom-right (2 frames stacked)
    k = torch.tensor([0.5, 0.7])
    per_frame = frame_assignment(maps, k, 1.0, frames=2)
    assert per_frame[0].tolist() == [[0, 1], [-1, -1], [-1, -1], [0, 1]]  # overlap → the larger k (item 1)
    assert frame_assignment(maps, k, 1.0, frames=1)[0, 2:].tolist() == [[-1, -1], [-1, 1]]  # one mean: frame 1's item 0 is lost
    union = frame_assignment(maps, k, 1.0, frames=2, union=True)
    assert union[0].tolist() == [[0, 1], [0, 1], [0, 1], [0, 1]]


def test_dynamic_masks_cover_every_frame_and_mask_time_changes_them(wan, tokens):
    per_frame = sample(wan, tokens, "asyndm", steps=4)
    union = sample(wan, tokens, "asyndm", steps=4, mask_time="union")
    assert per_frame.assignment.shape == (2, *GRID)
    frames = per_frame.assignment.view(2, 2, 4, 6)
    assert all((frames[:, f] >= 0).any() for f in range(2))  # items found in each frame
    u = union.assignment.view(2, 2, 4, 6)
    assert torch.equal(u[:, 0], u[:, 1])  # the union is the same mask in every frame
    assert not torch.equal(per_frame.latents, union.latents)


def test_one_frame_is_an_image_through_the_same_path(tiny_wan_path):
    image = _backend(tiny_wan_path, torch.float32, frames=1)
    tokens = image.item_tokens(PROMPT, ITEMS, None, "word")
    out = sample(image, tokens, "asyndm", steps=3)
    assert out.latents.shape == (2, 16, 1, 8, 12) and out.assignment.shape == (2, 4, 6)
    frames = image.decode(out.latents)
    assert len(frames) == 2 and len(frames[0]) == 1 and frames[0][0].size == (WIDTH, HEIGHT)


def test_bad_frame_counts_and_mask_settings_are_refused_in_one_line(wan, tiny_wan_path, tokens):
    with pytest.raises(ValueError, match=r"model.num_frames=6: .* use 5 or 9"):
        _backend(tiny_wan_path, torch.float32, frames=6)
    latents = torch.zeros(1, 16, 2, 8, 12)
    with pytest.raises(ValueError, match="mask.resolution=4"):
        wan.item_attention(tokens, latents, 4)
    with pytest.raises(ValueError, match="mask.blocks=\\[9\\]"):
        wan.item_attention(tokens, latents, None, blocks=[9])
    with pytest.raises(ValueError, match="mask.time=both"):
        wan.item_masks(torch.rand(1, 2, 48), torch.tensor([0.5, 0.5]), 1.0, GRID, GRID, time="both")


# ---------------------------------------------------------------------------- Wan 2.2 TI2V's shape


@pytest.fixture(scope="module")
def ti2v_path(tmp_path_factory):
    """A tiny Wan 2.2 TI2V (expand_timesteps: the pipeline itself passes a per-token timestep; 48 channels,
    VAE factor 16), saved with save_pretrained."""
    from asyndm.offline.wan import tiny_wan22_ti2v_pipeline

    folder = tmp_path_factory.mktemp("ti2v") / "tiny-wan22-ti2v"
    tiny_wan22_ti2v_pipeline().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_dm_equals_the_ti2v_pipeline_on_its_per_token_path(ti2v_path, dtype):
    backend = _backend(ti2v_path, dtype)
    tokens = backend.item_tokens(PROMPT, ITEMS, None, "word")
    ours = sample(backend, tokens, "dm").latents
    assert ours.shape == (2, 48, 2, 4, 6) and backend.map_shape(ours) == (2 * 2, 3)
    assert torch.equal(ours, pipeline_latents(ti2v_path, dtype))
    linear = sample(backend, tokens, "asyndm", masks=torch.full((2, 4, 3), -1)).latents
    if dtype == torch.float32:
        torch.testing.assert_close(linear, ours, rtol=1e-5, atol=1e-5)
    frames = backend.decode(ours)
    assert len(frames[0]) == FRAMES and frames[0][0].size == (WIDTH, HEIGHT)


def test_static_masks_come_from_the_dm_pass_per_frame(wan, tokens):
    settings = SamplingSettings(steps=3, guidance_scale=5.0, height=HEIGHT, width=WIDTH, mask_mode="static")
    results = AsyncSampler(wan, settings).sample(PROMPT, tokens, K, SEEDS, ["dm", "asyndm"])
    masks = results["asyndm"].assignment.view(2, 2, 4, 6)
    assert all((masks[:, f] >= 0).any() for f in range(2))
    assert torch.equal(results["dm"].latents, sample(wan, tokens, "dm", steps=3).latents)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_dm_equals_the_wan_pipeline_on_cuda(tiny_wan_path, dtype):
    """On a CUDA device, noise drawn there: dm = WanPipeline + Euler, bit for bit in fp32; in bf16 the
    scheduler's CPU 0-dim dt may stay float32 in CUDA kernels (tests/test_family_equivalence.py): the
    done-when level there, 99.5 % of the elements within 1e-3. All-linear asyndm within the CPU's bounds."""
    from tests.test_family_equivalence import agreement

    from asyndm.models import load_backend
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    backend = load_backend(str(tiny_wan_path), torch.device("cuda"), dtype, num_frames=FRAMES)
    tokens = backend.item_tokens(PROMPT, ITEMS, None, "word")
    ours = sample(backend, tokens, "dm").latents
    pipe = WanPipeline.from_pretrained(str(tiny_wan_path), dtype=dtype).to("cuda")
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=pipe.scheduler.config.flow_shift)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cuda").manual_seed(s) for s in SEEDS]
    reference = pipe(PROMPT, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS,
                     num_videos_per_prompt=len(SEEDS), generator=generators, output_type="latent").frames
    assert torch.equal(ours, reference) if dtype == torch.float32 else agreement(ours, reference) >= 0.995
    linear = sample(backend, tokens, "asyndm", masks=torch.full((len(SEEDS), *GRID), -1, device="cuda")).latents
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=0, atol=2**-4)
    torch.testing.assert_close(linear.float(), ours.float(), **tolerance)
