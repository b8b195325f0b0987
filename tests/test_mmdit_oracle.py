"""Per-token timesteps in SD3 and Flux (METHOD.md §9) against an independent forward.

``backend.predict(..., uniform=False, sync_state=τ)`` (asyndm/backends/mmdit.py, through the wrappers
of asyndm/token_timesteps.py) is compared with an oracle written here from diffusers' block code and
nothing of asyndm's per-token machinery: every image token gets its own full time(-text) embedding,
``time_text_embed`` run once per token, and every AdaLN modulation of the image stream is
``norm.linear(silu(temb))`` of that token's embedding, a (B, L, D) tensor; the text stream gets its
sample's one embedding (B, D). In Flux's single-stream blocks the text tokens share the sequence and
take the text stream's modulation (docs/mmdit.md §2). Everything that does not depend on the
timestep (attention with its processor, feed-forwards, LayerNorms, patch/rotary embeddings, output
projection) is the model's own sub-module.

Checked: the oracle equals the plain transformer call when every token and the text share a
timestep; predict equals the oracle on maps with several distinct timesteps and a text timestep
unlike any image token's (and a different text timestep visibly changes the oracle); states above
τ₀ are seen as σ = 1 (timestep exactly num_train_timesteps).
"""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention import JointTransformerBlock
from diffusers.models.attention_processor import JointAttnProcessor2_0
from diffusers.models.normalization import (
    AdaLayerNormContinuous,
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
    SD35AdaLayerNormZeroX,
)
from diffusers.models.transformers.transformer_flux import (
    FluxAttnProcessor,
    FluxSingleTransformerBlock,
    FluxTransformer2DModel,
    FluxTransformerBlock,
)
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel

from asyndm.conditioning import TextConditioning

PROMPTS = ["a cat eating a sandwich", "a red house by a lake"]  # one per sample: the pooled text differs
GUIDANCE = 3.5  # Flux's embedded guidance scale, where the model embeds one (the pipeline's default)
RTOL = ATOL = 1e-5
BACKENDS = ["tiny_sd3_backend", "tiny_flux_backend"]


# ---------------------------------------------------------------------------- the oracle: shared pieces


def _modulation(norm, temb: torch.Tensor, chunks: int) -> tuple[torch.Tensor, ...]:
    """An AdaLN-zero's chunks from ``temb``: (B, D) → each (B, 1, D) (one row per sample), (B, L, D) →
    each (B, L, D) (one row per token). The model's own linear layer, applied to every row given."""
    emb = norm.linear(F.silu(temb))
    if emb.dim() == 2:
        emb = emb[:, None]
    return emb.chunk(chunks, dim=-1)


def _continuous(norm, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """AdaLayerNormContinuous (scale first, then shift) with a (B, D) or per-token (B, L, D) ``temb``."""
    emb = norm.linear(F.silu(temb).to(x.dtype))
    if emb.dim() == 2:
        emb = emb[:, None]
    scale, shift = emb.chunk(2, dim=-1)
    return norm.norm(x) * (1 + scale) + shift


def _per_token_embedding(embed, timesteps: torch.Tensor, *per_sample: torch.Tensor) -> torch.Tensor:
    """(B, L, D): ``embed`` run on every token's own timestep (B, L), each per-sample input (pooled
    text, guidance) repeated for its sample's tokens: the full MLP once per token."""
    batch, tokens = timesteps.shape
    repeated = [x.repeat_interleave(tokens, dim=0) for x in per_sample]
    return embed(timesteps.reshape(-1), *repeated).view(batch, tokens, -1)


def _clip_fp16(x: torch.Tensor) -> torch.Tensor:
    """Flux's blocks clip float16 activations to float16's range."""
    return x.clip(-65504, 65504) if x.dtype == torch.float16 else x


# ---------------------------------------------------------------------------- SD3


def _check_sd3(transformer) -> None:
    """The config branches the SD3 oracle implements (SD3, SD3.5 medium/large, tiny_sd3)."""
    assert type(transformer) is SD3Transformer2DModel, f"oracle: {type(transformer).__name__} is not SD3's"
    assert isinstance(transformer.norm_out, AdaLayerNormContinuous), "oracle: final norm is not AdaLayerNormContinuous"
    for i, block in enumerate(transformer.transformer_blocks):
        where = f"oracle: SD3 block {i}"
        assert type(block) is JointTransformerBlock, f"{where} is a {type(block).__name__}"
        assert block._chunk_size is None, f"{where}: feed-forward chunking is not implemented"
        norm1 = SD35AdaLayerNormZeroX if block.use_dual_attention else AdaLayerNormZero
        assert type(block.norm1) is norm1, f"{where}: image norm {type(block.norm1).__name__} not implemented"
        assert getattr(block.norm1, "emb", None) is None, f"{where}: an AdaLN with its own label embedding"
        context = AdaLayerNormContinuous if block.context_pre_only else AdaLayerNormZero
        assert type(block.norm1_context) is context, f"{where}: text norm {type(block.norm1_context).__name__}"
        for attn in filter(None, (block.attn, block.attn2)):
            assert type(attn.processor) is JointAttnProcessor2_0, \
                f"{where}: attention processor {type(attn.processor).__name__} not implemented"


def _sd3_block(block, x, context, temb_img, temb_txt):
    """JointTransformerBlock.forward with the image stream's modulation per token.

    x (B, L, D) image tokens; context (B, T, D) text tokens; temb_img (B, L, D); temb_txt (B, D).
    """
    if block.use_dual_attention:
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp, shift2, scale2, gate2 = _modulation(block.norm1, temb_img, 9)
    else:
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = _modulation(block.norm1, temb_img, 6)
    normed = block.norm1.norm(x)
    norm_x = normed * (1 + scale) + shift
    if block.context_pre_only:
        norm_context = _continuous(block.norm1_context, context, temb_txt)
    else:
        c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = _modulation(block.norm1_context, temb_txt, 6)
        norm_context = block.norm1_context.norm(context) * (1 + c_scale) + c_shift

    attn_out, context_attn_out = block.attn(hidden_states=norm_x, encoder_hidden_states=norm_context)
    x = x + gate * attn_out
    if block.use_dual_attention:  # SD3.5's second, image-only attention on the same normalised input
        x = x + gate2 * block.attn2(hidden_states=normed * (1 + scale2) + shift2)
    x = x + gate_mlp * block.ff(block.norm2(x) * (1 + scale_mlp) + shift_mlp)

    if block.context_pre_only:
        return None, x
    context = context + c_gate * context_attn_out
    context = context + c_gate_mlp * block.ff_context(block.norm2_context(context) * (1 + c_scale_mlp) + c_shift_mlp)
    return context, x


def sd3_oracle(transformer, latents, text: TextConditioning, image_t: torch.Tensor, text_t: torch.Tensor):
    """SD3Transformer2DModel's output with image token (b, n) at timestep image_t[b, n] and sample b's
    text stream at text_t[b]. latents (B, C, H, W); image_t (B, L) in the token grid's row-major order."""
    _check_sd3(transformer)
    pooled = text.tensors["pooled_projections"]
    patch = transformer.config.patch_size
    x = transformer.pos_embed(latents).contiguous()  # (B, L, D), patch and position embedding
    temb_img = _per_token_embedding(transformer.time_text_embed, image_t, pooled)  # (B, L, D)
    temb_txt = transformer.time_text_embed(text_t, pooled)  # (B, D)
    context = transformer.context_embedder(text.tensors["encoder_hidden_states"])
    for block in transformer.transformer_blocks:
        context, x = _sd3_block(block, x, context, temb_img, temb_txt)
    out = transformer.proj_out(_continuous(transformer.norm_out, x, temb_img))  # (B, L, p·p·C)
    # unpatchify, as the model does
    batch, _, height, width = latents.shape
    grid_h, grid_w = height // patch, width // patch
    out = out.reshape(batch, grid_h, grid_w, patch, patch, transformer.out_channels)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(batch, transformer.out_channels, height, width)


def sd3_plain(transformer, latents, text: TextConditioning, t: torch.Tensor):
    """The plain diffusers call, one timestep per sample."""
    return transformer(hidden_states=latents, timestep=t, return_dict=False, **text.tensors)[0]


# ---------------------------------------------------------------------------- Flux


def _check_flux(transformer) -> None:
    """The config branches the Flux oracle implements (FLUX.1 dev/schnell, tiny_flux)."""
    assert type(transformer) is FluxTransformer2DModel, f"oracle: {type(transformer).__name__} is not Flux's"
    assert isinstance(transformer.norm_out, AdaLayerNormContinuous), "oracle: final norm is not AdaLayerNormContinuous"
    for i, block in enumerate(transformer.transformer_blocks):
        where = f"oracle: Flux double-stream block {i}"
        assert type(block) is FluxTransformerBlock, f"{where} is a {type(block).__name__}"
        assert type(block.norm1) is AdaLayerNormZero and block.norm1.emb is None, f"{where}: image norm"
        assert type(block.norm1_context) is AdaLayerNormZero, f"{where}: text norm"
        assert type(block.attn.processor) is FluxAttnProcessor, \
            f"{where}: attention processor {type(block.attn.processor).__name__} (IP-adapter?) not implemented"
    for i, block in enumerate(transformer.single_transformer_blocks):
        where = f"oracle: Flux single-stream block {i}"
        assert type(block) is FluxSingleTransformerBlock, f"{where} is a {type(block).__name__}"
        assert type(block.norm) is AdaLayerNormZeroSingle, f"{where}: norm {type(block.norm).__name__}"
        assert type(block.attn.processor) is FluxAttnProcessor, \
            f"{where}: attention processor {type(block.attn.processor).__name__} not implemented"


def _flux_double_block(block, x, context, temb_img, temb_txt, rotary):
    """FluxTransformerBlock.forward with the image stream's modulation per token.

    x (B, L, D); context (B, T, D); temb_img (B, L, D); temb_txt (B, D).
    """
    shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = _modulation(block.norm1, temb_img, 6)
    c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = _modulation(block.norm1_context, temb_txt, 6)
    norm_x = block.norm1.norm(x) * (1 + scale) + shift
    norm_context = block.norm1_context.norm(context) * (1 + c_scale) + c_shift

    outputs = block.attn(hidden_states=norm_x, encoder_hidden_states=norm_context, image_rotary_emb=rotary)
    assert len(outputs) == 2, "oracle: IP-adapter attention outputs are not implemented"
    attn_out, context_attn_out = outputs
    x = x + gate * attn_out
    x = x + gate_mlp * block.ff(block.norm2(x) * (1 + scale_mlp) + shift_mlp)

    context = context + c_gate * context_attn_out
    context = context + c_gate_mlp * block.ff_context(block.norm2_context(context) * (1 + c_scale_mlp) + c_shift_mlp)
    return _clip_fp16(context), x


def _flux_single_block(block, x, context, temb_img, temb_txt, rotary):
    """FluxSingleTransformerBlock.forward on [text; image]: the text tokens' modulation from the text
    stream's embedding, each image token's from its own."""
    batch, text_length = context.shape[:2]
    sequence = torch.cat([context, x], dim=1)  # (B, T + L, D)
    text_mod = block.norm.linear(F.silu(temb_txt))[:, None].expand(batch, text_length, -1)  # (B, T, 3D)
    image_mod = block.norm.linear(F.silu(temb_img))  # (B, L, 3D)
    shift, scale, gate = torch.cat([text_mod, image_mod], dim=1).chunk(3, dim=-1)

    normed = block.norm.norm(sequence) * (1 + scale) + shift
    mlp = block.act_mlp(block.proj_mlp(normed))
    attn_out = block.attn(hidden_states=normed, image_rotary_emb=rotary)
    sequence = _clip_fp16(sequence + gate * block.proj_out(torch.cat([attn_out, mlp], dim=2)))
    return sequence[:, :text_length], sequence[:, text_length:]


def _flux_inputs(pipe, latents, text: TextConditioning):
    """What FluxPipeline hands the transformer besides the timestep: packed latents (B, L, 4C), text
    ids (T, 3) and image ids (L, 3)."""
    batch, channels, height, width = latents.shape
    states = text.tensors["encoder_hidden_states"]
    packed = pipe._pack_latents(latents, batch, channels, height, width)
    text_ids = torch.zeros(states.shape[1], 3, dtype=latents.dtype)
    image_ids = pipe._prepare_latent_image_ids(batch, height // 2, width // 2, latents.device, latents.dtype)
    return packed, text_ids, image_ids


def _flux_unpack(pipe, out, latents):
    factor = pipe.vae_scale_factor
    return pipe._unpack_latents(out, latents.shape[-2] * factor, latents.shape[-1] * factor, factor)


def _flux_timestep(t: torch.Tensor, dtype) -> torch.Tensor:
    """The model's timestep from a model timestep σ·1000: the pipeline passes t/1000 in the latents'
    dtype, the transformer multiplies by 1000 again."""
    return t.to(dtype) / 1000 * 1000


def flux_oracle(pipe, latents, text: TextConditioning, image_t: torch.Tensor, text_t: torch.Tensor):
    """FluxTransformer2DModel's output (unpacked, (B, C, H, W)) with image token (b, n) at image_t[b, n]
    and sample b's text stream (and its text tokens in the single-stream blocks) at text_t[b]."""
    transformer = pipe.transformer
    _check_flux(transformer)
    packed, text_ids, image_ids = _flux_inputs(pipe, latents, text)
    pooled = text.tensors["pooled_projections"]
    x = transformer.x_embedder(packed)  # (B, L, D)
    per_sample = [pooled]
    if transformer.config.guidance_embeds:  # embedder(timestep, guidance, pooled)
        per_sample.insert(0, text.tensors["guidance"].to(x.dtype) * 1000)
    else:
        assert text.tensors.get("guidance") is None, "oracle: guidance given to a model without guidance embedding"
    temb_img = _per_token_embedding(transformer.time_text_embed, _flux_timestep(image_t, x.dtype), *per_sample)
    temb_txt = transformer.time_text_embed(_flux_timestep(text_t, x.dtype), *per_sample)  # (B, D)
    context = transformer.context_embedder(text.tensors["encoder_hidden_states"])
    rotary = transformer.pos_embed(torch.cat([text_ids, image_ids], dim=0))
    for block in transformer.transformer_blocks:
        context, x = _flux_double_block(block, x, context, temb_img, temb_txt, rotary)
    for block in transformer.single_transformer_blocks:
        context, x = _flux_single_block(block, x, context, temb_img, temb_txt, rotary)
    out = transformer.proj_out(_continuous(transformer.norm_out, x, temb_img))  # (B, L, 4C)
    return _flux_unpack(pipe, out, latents)


def flux_plain(pipe, latents, text: TextConditioning, t: torch.Tensor):
    """The plain diffusers call as FluxPipeline makes it, one timestep per sample."""
    packed, text_ids, image_ids = _flux_inputs(pipe, latents, text)
    out = pipe.transformer(hidden_states=packed, timestep=t.to(latents.dtype) / 1000, txt_ids=text_ids,
                           img_ids=image_ids, return_dict=False, **text.tensors)[0]
    return _flux_unpack(pipe, out, latents)


def oracle(backend, latents, text, image_t, text_t):
    """The family's oracle; image_t (B, h, w) model timesteps on the token grid, text_t (B,)."""
    image_t = image_t.flatten(1)
    if backend.family == "sd3":
        return sd3_oracle(backend.transformer, latents, text, image_t, text_t)
    assert backend.family == "flux", f"oracle: no oracle for family {backend.family}"
    return flux_oracle(backend.pipe, latents, text, image_t, text_t)


def plain(backend, latents, text, t):
    return (sd3_plain(backend.transformer, latents, text, t) if backend.family == "sd3"
            else flux_plain(backend.pipe, latents, text, t))


# ---------------------------------------------------------------------------- inputs


def _grid(backend) -> tuple[int, int]:
    """A non-square token grid (rows ≠ columns catches a transposed map) of half the scheduler's base
    token count (its dynamic shift's reference size): side × side/2."""
    side = math.isqrt(backend.pipe.scheduler.config.base_image_seq_len)
    return side, side // 2


def _inputs(backend, seed: int = 0):
    """(B, C, H, W) latents for the grid, and text with a different prompt per sample (Flux: with the
    embedded guidance scale where the model has one)."""
    rows, columns = _grid(backend)
    step = backend.vae_scale_factor * backend.patch  # pixels per token
    shape = backend.latent_shape(rows * step, columns * step)
    latents = torch.randn(len(PROMPTS), *shape, generator=torch.Generator().manual_seed(seed))
    parts = [backend.encode(prompt, 1, "", False).positive.tensors for prompt in PROMPTS]
    tensors = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
    if backend.family == "flux" and backend.transformer.config.guidance_embeds:
        tensors["guidance"] = torch.full((len(PROMPTS),), GUIDANCE)
    assert backend.map_shape(latents) == (rows, columns)
    return latents, TextConditioning(tensors)


def _random_map(values: torch.Tensor, grid, seed: int) -> torch.Tensor:
    """(B, h, w): sample b's tokens drawn from its row of ``values`` (B, K), every value present."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, values.shape[1], (values.shape[0], *grid), generator=generator)
    states = values.gather(1, index.flatten(1)).view(index.shape)
    for sample, row in zip(states, values):
        assert set(row.tolist()) == set(sample.unique().tolist())
    return states


def _text_timesteps(backend, tau: float, states: torch.Tensor) -> torch.Tensor:
    """(B,) the text stream's model timestep for sync state τ (``text_timestep=linear``)."""
    tokens = states.shape[-2] * states.shape[-1]
    return backend.shift.model_timesteps(torch.full((len(states),), tau, dtype=torch.float64), tokens)


def _backend(request, name):
    """The session's backend with ``text_timestep=linear`` (the default; set here so that a test that
    changes the shared backend's setting does not leak into these): the text stream sees sync_state."""
    backend = request.getfixturevalue(name)
    request.getfixturevalue("monkeypatch").setattr(backend, "text_timestep", "linear")
    return backend


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", BACKENDS)
@torch.no_grad()
def test_the_oracle_with_one_timestep_per_sample_is_the_plain_transformer_call(request, name):
    """The oracle's own check: every token and the text at one timestep (one for the batch, then one
    per sample) gives diffusers' plain call."""
    backend = _backend(request, name)
    latents, text = _inputs(backend, seed=0)
    grid = backend.map_shape(latents)
    for t in (torch.full((len(latents),), 613.25), torch.tensor([912.0, 87.5])):
        ours = oracle(backend, latents, text, t[:, None, None].expand(-1, *grid), t)
        torch.testing.assert_close(ours, plain(backend, latents, text, t), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", BACKENDS)
@torch.no_grad()
def test_per_token_predict_equals_the_independent_forward(request, name):
    """Four distinct states per sample (different values and layouts per sample), the text stream at
    a state unlike any image token's: predict = the oracle; the oracle with another text timestep
    (the sample's smallest state, the ``min`` rule) is far off, so the text timestep is checked too."""
    backend = _backend(request, name)
    latents, text = _inputs(backend, seed=1)
    values = torch.tensor([[955.0, 640.25, 301.5, 42.0], [870.5, 512.0, 233.0, 118.75]])
    states = _random_map(values, backend.map_shape(latents), seed=2)
    tau = 777.0  # the call's sync state
    assert not (states == tau).any()

    ours = backend.predict(latents, states, text, uniform=False, sync_state=tau)
    image_t = backend.model_timesteps(states)  # (B, h, w)
    expected = oracle(backend, latents, text, image_t, _text_timesteps(backend, tau, states))
    torch.testing.assert_close(ours, expected, rtol=RTOL, atol=ATOL)

    other_text = oracle(backend, latents, text, image_t, image_t.flatten(1).amin(1))
    assert (ours - other_text).abs().max() > 100 * ATOL, "the text stream's timestep made no visible difference"


@pytest.mark.parametrize("name", BACKENDS)
@torch.no_grad()
def test_states_above_tau0_are_seen_as_sigma_one(request, name):
    """Tokens at states above τ₀ (1030, 1150) are pure noise: predict = the oracle with those tokens
    at exactly num_train_timesteps (σ = 1). Without the clamp the oracle would differ."""
    backend = _backend(request, name)
    latents, text = _inputs(backend, seed=3)
    tau0 = float(backend.unshifted_timesteps(2)[0])
    pure_noise = backend.pipe.scheduler.config.num_train_timesteps  # σ = 1
    assert tau0 == pure_noise  # the scheduler's first timestep is pure noise for these schedules
    values = torch.tensor([[1150.0, tau0, 480.5], [1030.0, 1150.0, 205.0]])
    states = _random_map(values, backend.map_shape(latents), seed=4)
    above = states > tau0
    tau = 903.0

    ours = backend.predict(latents, states, text, uniform=False, sync_state=tau)
    image_t = torch.where(above, torch.tensor(float(pure_noise)), backend.model_timesteps(states))
    text_t = _text_timesteps(backend, tau, states)
    torch.testing.assert_close(ours, oracle(backend, latents, text, image_t, text_t), rtol=RTOL, atol=ATOL)

    # the unclamped shift puts those tokens above σ = 1, and the output moves
    unclamped = dataclasses.replace(backend.shift, ceiling=float("inf"))
    tokens = states.shape[-2] * states.shape[-1]
    raw_t = unclamped.model_timesteps(states, tokens)
    assert (raw_t[above] > pure_noise).all()
    assert (ours - oracle(backend, latents, text, raw_t, text_t)).abs().max() > 100 * ATOL


@pytest.mark.parametrize("path", ["tiny_sd3_path", "tiny_flux_path"])
@torch.no_grad()
def test_installed_wrappers_equal_the_oracle_and_leave_plain_calls_alone(request, path):
    """The compiled path's wrappers, installed for good and switched per call (``TokenTimesteps.install``):
    a per-token predict equals the oracle and, bit for bit, the per-call wrappers' output (their
    ``v[:, None]`` gathers first and adds after: the same sums); a plain call stays diffusers' plain call."""
    from asyndm.models import load_backend

    # a copy of its own: installing changes the model for good
    backend = load_backend(str(request.getfixturevalue(path)), torch.device("cpu"), torch.float32)
    latents, text = _inputs(backend, seed=5)
    values = torch.tensor([[955.0, 640.25, 301.5, 42.0], [870.5, 512.0, 233.0, 118.75]])
    states = _random_map(values, backend.map_shape(latents), seed=6)
    t = torch.tensor([912.0, 87.5])
    per_call = backend.predict(latents, states, text, uniform=False, sync_state=777.0)
    plain_before = plain(backend, latents, text, t)

    backend.token_timesteps.install()
    installed = backend.predict(latents, states, text, uniform=False, sync_state=777.0)
    assert torch.equal(installed, per_call)
    assert torch.equal(plain(backend, latents, text, t), plain_before)  # switched off outside the call
    expected = oracle(backend, latents, text, backend.model_timesteps(states), _text_timesteps(backend, 777.0, states))
    torch.testing.assert_close(installed, expected, rtol=RTOL, atol=ATOL)
