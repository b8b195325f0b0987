"""The baselines (asyndm/baselines/) on the tiny model: each against an independent reference where
one exists (diffusers' Attend-and-Excite pipeline, diffusers' DDIM for unconditional sampling,
diffusers' DDIM and DDIM-inverse schedulers for Z-Sampling's released loop, CFG++'s update by
hand), each reducing to dm where its paper says it does, and each differing from dm otherwise.

64-pixel images (32×32 latents) and few steps keep the module to seconds.
"""

import warnings
from functools import partial

import pytest
import torch

from asyndm.backends import ItemTokens
from asyndm.callbacks import RecordTimesteps
from asyndm.sampler import AsyncSampler, SamplingSettings

PROMPT = "a cat eating a sandwich"
SEEDS = [1234, 1235]
K = [0.7, 0.5]
SIZE = 64  # pixels: a 32×32 latent (cross-attention grids 16, 8 and 4)


def tokens(backend):
    return backend.item_tokens(PROMPT, ["cat", "sandwich"], None, "word")  # positions 2 and 5


def sample(backend, variant, steps=3, options=None, masks=None, callbacks=(), **settings):
    settings = {"height": SIZE, "width": SIZE, **settings}
    variant_options = {variant.split("+")[-1]: options} if options else {}
    sampler = AsyncSampler(backend, SamplingSettings(steps=steps, variant_options=variant_options, **settings))
    cond = sampler.encode(PROMPT, len(SEEDS), [variant])
    return sampler.sample_variant(variant, cond, SEEDS, tokens(backend), K, masks, callbacks).latents


def diffusers_latents(pipe, steps, eta, guidance, prompt=PROMPT, **kwargs):
    generators = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    return pipe(prompt, num_images_per_prompt=len(SEEDS), generator=generators, eta=eta, guidance_scale=guidance,
                num_inference_steps=steps, height=SIZE, width=SIZE, output_type="latent", **kwargs).images


@pytest.fixture(scope="module")
def dm(tiny_backend):
    return sample(tiny_backend, "dm")


# ---------------------------------------------------------------------------- Attend-and-Excite


def attend_and_excite_pipeline(backend):
    """diffusers' deprecated StableDiffusionAttendAndExcitePipeline on the tiny model's components, or
    a skip that says why it cannot run under the installed diffusers."""
    try:
        import diffusers
        from diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite.pipeline_stable_diffusion_attend_and_excite import (  # noqa: E501
            StableDiffusionAttendAndExcitePipeline)

        p = backend.pipe
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = StableDiffusionAttendAndExcitePipeline(
                vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet, scheduler=p.scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    except Exception as err:  # noqa: BLE001 - any failure to build it is the skip's reason
        pytest.skip(f"StableDiffusionAttendAndExcitePipeline cannot run under diffusers "
                    f"{getattr(diffusers, '__version__', '?')} ({type(err).__name__}: {err}); "
                    f"test_attend_excite_update_lowers_its_loss checks the paper's algorithm instead")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_attend_excite_equals_diffusers_pipeline(tiny_backend, dm):
    """Same DDIM, seeds, token indices (2, 5), CFG 5, default thresholds and iteration schedule; 3
    steps run step 0's iterative refinement (20 iterations: the random model never reaches 0.05)."""
    pipe = attend_and_excite_pipeline(tiny_backend)
    ours = sample(tiny_backend, "attend_excite", eta=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = diffusers_latents(pipe, 3, 1.0, 5.0, token_indices=[2, 5])
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    assert (ours - dm).abs().max() > 1e-2, "the latent update changes the images"


def test_attend_excite_update_lowers_its_loss(tiny_backend):
    """The paper's Algorithm 1 on one image: the gradient step raises the items' max attention."""
    from asyndm.baselines.attend_excite import AttendAndExcite, _row
    from asyndm.guidance import StepContext

    backend = tiny_backend
    sampler = AsyncSampler(backend, SamplingSettings(steps=3, height=SIZE, width=SIZE))
    rule = sampler.guidance("attend_excite")
    assert isinstance(rule, AttendAndExcite) and rule.thresholds == {0: 0.05, 10: 0.5, 20: 0.8}
    cond = sampler.encode(PROMPT, 1, ["attend_excite"])
    latents = backend.initial_latents(backend.generators(SEEDS[:1]), SIZE, SIZE)
    states = backend.timeline(3).sync_states[0].expand(1, SIZE // 2, SIZE // 2)
    context = StepContext(1, 3, states, 1.0, [], backend, tokens(backend))
    model = partial(backend.predict, uniform=True)
    with backend.latent_gradients(), backend.attention_probabilities(latents, [16], kinds=("attn2",)) as record:
        _, before = rule.loss(model, latents, states, _row(cond.positive, 0), record, context.tokens)
        moved = rule.excite(model, latents, states, _row(cond.positive, 0), record, context, step_size=20.0)
        _, after = rule.loss(model, moved, states, _row(cond.positive, 0), record, context.tokens)
    assert 0 < after < before
    assert all(p.requires_grad for p in backend.unet.parameters()), "parameters unfrozen again"


# ---------------------------------------------------------------------------- CFG++


def test_cfgpp_scale_zero_is_unconditional_ddim(tiny_backend):
    """λ = 0 on diffusers' noise levels: x̂0 and the direction both from ε_∅, i.e. DDIM on the empty
    prompt (diffusers, guidance 1). On the released noise levels it is another sampler."""
    ours = sample(tiny_backend, "cfgpp", steps=4, options={"scale": 0.0, "noise_levels": "diffusers"}, eta=1.0)
    reference = diffusers_latents(tiny_backend.pipe, 4, 1.0, 1.0, prompt="")
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    released = sample(tiny_backend, "cfgpp", steps=4, options={"scale": 0.0}, eta=1.0)
    assert (released - reference).abs().max() > 1e-2


def official_alpha(noise_levels):
    """ᾱ at timestep t as CFG++'s official ``latent_diffusion.py`` reads it, from SD's scaled-linear
    betas written out: ``alphas_cumprod`` with 1.0 prepended (released) or as is (diffusers), and
    ``final_alpha_cumprod`` (ᾱ[0]: set_alpha_to_one is false) below t = 0."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    table = torch.cat([torch.ones(1), alphas_cumprod]) if noise_levels == "released" else alphas_cumprod
    return lambda t: table[t] if t >= 0 else alphas_cumprod[0]


@pytest.mark.parametrize("noise_levels", ["released", "diffusers"])
def test_cfgpp_equals_its_update_written_out(tiny_backend, noise_levels):
    """η = 0, four steps by hand with the plain UNet, as the official ``BaseDDIMCFGpp.sample`` loop:
    x̂0 = (x − √(1−ᾱ_t)·ε_λ)/√ᾱ_t, x' = √ᾱ_{t−250}·x̂0 + √(1−ᾱ_{t−250})·ε_∅ at t = 751, 501, 251, 1,
    with ᾱ_t = alphas_cumprod[t − 1] (released: ᾱ(751) is ᾱ[750]) or alphas_cumprod[t] (diffusers)."""
    backend, lam = tiny_backend, 0.6
    ours = sample(backend, "cfgpp", steps=4, options={"scale": lam, "noise_levels": noise_levels}, eta=0.0)
    cond = AsyncSampler(backend, SamplingSettings(steps=4)).encode(PROMPT, len(SEEDS), ["cfgpp"])
    alpha = official_alpha(noise_levels)
    x = backend.initial_latents(backend.generators(SEEDS), SIZE, SIZE)
    for t in (751, 501, 251, 1):
        eps = {name: backend.unet(x, t, encoder_hidden_states=text.tensors["encoder_hidden_states"]).sample
               for name, text in (("uncond", cond.negative), ("cond", cond.positive))}
        eps_lambda = eps["uncond"] + lam * (eps["cond"] - eps["uncond"])
        x0 = (x - (1 - alpha(t)).sqrt() * eps_lambda) / alpha(t).sqrt()
        x = alpha(t - 250).sqrt() * x0 + (1 - alpha(t - 250)).sqrt() * eps["uncond"]
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)
    other = "diffusers" if noise_levels == "released" else "released"
    assert (sample(backend, "cfgpp", steps=4, options={"noise_levels": other}, eta=0.0) - ours).abs().max() > 1e-3


def test_cfgpp_refuses_unknown_noise_levels(tiny_backend):
    with pytest.raises(ValueError, match="noise_levels='ddpm': choose released or diffusers"):
        sample(tiny_backend, "cfgpp", options={"noise_levels": "ddpm"})


# ---------------------------------------------------------------------------- Z-Sampling


def test_zsampling_without_zigzag_steps_is_dm(tiny_backend, dm):
    assert torch.equal(sample(tiny_backend, "zsampling", options={"zigzag_steps": 0}), dm)


def released_zsampling(backend, steps, gamma1, gamma2):
    """The official ``z_sampling_call`` loop for SD (T_max = 1, λ = N − 1, η = 0), with diffusers'
    own DDIMScheduler and DDIMInverseScheduler as the official code uses them."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    config = backend.pipe.scheduler.config
    scheduler, inverse = DDIMScheduler.from_config(config), DDIMInverseScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    inverse.set_timesteps(steps)
    cond = AsyncSampler(backend, SamplingSettings(steps=steps)).encode(PROMPT, len(SEEDS), ["zsampling"])
    text = torch.cat([cond.negative.tensors["encoder_hidden_states"], cond.positive.tensors["encoder_hidden_states"]])

    def eps(x, t, gamma):
        uncond, positive = backend.unet(torch.cat([x] * 2), t, encoder_hidden_states=text).sample.chunk(2)
        return uncond + gamma * (positive - uncond)

    latents = backend.initial_latents(backend.generators(SEEDS), SIZE, SIZE)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        noise = eps(latents, t, gamma1)
        following = scheduler.step(noise, t, latents).prev_sample
        if i < len(timesteps) - 1:
            latents = inverse.step(eps(following, t, gamma2), timesteps[i + 1], following).prev_sample
            following = scheduler.step(eps(latents, t, gamma1), t, latents).prev_sample
        latents = following
    return latents


def test_zsampling_follows_the_released_code(tiny_backend):
    ours = sample(tiny_backend, "zsampling", steps=4, eta=0.0)
    reference = released_zsampling(tiny_backend, 4, gamma1=5.0, gamma2=0.0)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    exact = sample(tiny_backend, "zsampling", steps=4, eta=0.0, options={"inversion": "exact"})
    assert (exact - ours).abs().max() > 1e-2, "the exact inversion is another method"


# ---------------------------------------------------------------------------- SEG and S-CFG


def test_seg_scale_zero_is_dm(tiny_backend, dm):
    assert torch.equal(sample(tiny_backend, "seg", options={"scale": 0.0}), dm)


def test_scfg_with_rates_fixed_to_one_is_dm(tiny_backend, dm):
    """Every region's rate clamped to exactly 1 (the whole S-CFG path runs): CFG, i.e. dm, with the
    attention computed as S-CFG's call computes it (diffusers' AttnProcessor, as released)."""
    from diffusers.models.attention_processor import AttnProcessor

    fixed = sample(tiny_backend, "scfg", options={"rate_min": 1.0, "rate_max": 1.0})
    saved = tiny_backend.unet.attn_processors
    tiny_backend.unet.set_attn_processor(AttnProcessor())
    try:
        explicit_dm = sample(tiny_backend, "dm")
    finally:
        tiny_backend.unet.set_attn_processor(saved)
    torch.testing.assert_close(fixed, explicit_dm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fixed, dm, rtol=1e-3, atol=1e-4)  # fused attention: rounding apart
    assert torch.equal(sample(tiny_backend, "scfg", options={"use_rate": False}), dm)


def test_scfg_rates_follow_the_regions(tiny_backend):
    """r = mean‖δ‖ on the foreground / mean‖δ‖ on the region, clamped to [0.8, 3] and to 15/w (w = 5)."""
    from asyndm.baselines.scfg import SemanticCFG

    rule = SemanticCFG(guidance_scale=5.0)
    regions = torch.zeros(1, 3, 2, 2)
    regions[0, 1, 0, :] = 1  # token 1: the top row
    regions[0, 2, 1, :] = 1  # token 2: the bottom row
    foreground = torch.ones(1, 1, 2, 2)
    delta = torch.zeros(1, 4, 4, 4)
    delta[:, 0, :2] = 1.0  # ‖δ‖ = 1 on the top half, 4 on the bottom half
    delta[:, 0, 2:] = 4.0
    rate = rule.rates(regions, foreground, delta)
    # foreground mean 2.5: top 2.5 (clamped to 15/5 = 3 stays 2.5), bottom 0.625 → clamped to 0.8; then smoothed
    from asyndm.attention_control import smooth

    unsmoothed = torch.tensor([[2.5] * 4] * 2 + [[0.8] * 4] * 2)
    torch.testing.assert_close(rate[0, 0], smooth(unsmoothed[None])[0])


def test_scfg_regions_keep_every_tied_token_and_add_their_rates():
    """The released tie rule (sd/utils.py ``get_mask``: ``ca_mask = (new_ca == max_ca)``; sd/sd.py:
    ``(rate * mask_t).sum(dim=1)``): tokens 1 and 2 have the same map, the largest on the left half of
    a 4×4 grid, token 3 on the right. Both tied tokens own the left half; each tied region's rate
    counts its cells, and a left cell's rate is the two rates added."""
    from asyndm.attention_control import AttentionRecord
    from asyndm.baselines.scfg import SemanticCFG

    side, tokens = 4, 4
    left = torch.zeros(side, side)
    left[:, :2] = 1
    prompt = torch.full((side * side, tokens), 0.01)
    prompt[:, 1] = prompt[:, 2] = 0.1 + left.flatten()  # an exact tie everywhere
    prompt[:, 3] = 0.1 + (1 - left).flatten()
    negative = torch.full((side * side, tokens), 0.3)
    negative[:, 0] = 0.05  # the start token's share is small everywhere: all foreground
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn"
    record = AttentionRecord({name + "1": side, name + "2": side})
    record.maps[name + "1"] = torch.eye(side * side).expand(2, -1, -1)  # no self-attention smoothing
    record.maps[name + "2"] = torch.stack([negative, prompt])
    regions, foreground = SemanticCFG.regions(record, [4], latent_side=16)
    assert torch.equal(regions[0, 1], left) and torch.equal(regions[0, 2], left)
    assert torch.equal(regions[0, 3], 1 - left) and regions[0, 0].sum() == 0
    assert torch.equal(foreground, torch.ones(1, 1, side, side))
    delta = torch.zeros(1, 4, 16, 16)
    delta[:, 0, :, :8] = 2.0  # ‖δ‖ = 2 on the left half, 1 on the right: foreground mean 1.5
    delta[:, 0, :, 8:] = 1.0
    rate = SemanticCFG(guidance_scale=5.0).rates(regions, foreground, delta)
    # tokens 1 and 2: 1.5 / 2 = 0.75 each, added on the left: 1.5 (one token alone would be 0.75 → 0.8);
    # token 3: 1.5 / 1 = 1.5 on the right
    torch.testing.assert_close(rate, torch.full((1, 1, 16, 16), 1.5))


# ---------------------------------------------------------------------------- every baseline


@pytest.mark.parametrize("variant", ["cfgpp", "zsampling", "seg", "scfg", "asyndm+cfgpp"])
def test_baselines_differ_from_dm_at_their_defaults(tiny_backend, dm, variant):
    ours = sample(tiny_backend, variant)
    assert torch.isfinite(ours).all()
    assert (ours - dm).abs().max() > 1e-2  # attend_excite: in its diffusers test


def test_asyndm_schedule_with_cfgpp_rule(tiny_backend):
    """asyndm+cfgpp = asyndm's per-pixel schedule with CFG++'s rule: with every pixel on the linear
    curve (all background) it is cfgpp itself; with dynamic masks its timestep maps are asyndm's."""
    background = torch.full((len(SEEDS), SIZE // 2, SIZE // 2), -1)
    linear = sample(tiny_backend, "asyndm+cfgpp", steps=4, masks=background)
    torch.testing.assert_close(linear, sample(tiny_backend, "cfgpp", steps=4), rtol=1e-5, atol=1e-5)
    maps = RecordTimesteps()
    sample(tiny_backend, "asyndm+cfgpp", steps=4, callbacks=[maps])
    sample(tiny_backend, "asyndm", steps=4, callbacks=[maps])
    first_two = [m for m in maps.maps["asyndm+cfgpp"][:2]]
    assert all(torch.equal(a, b) for a, b in zip(first_two, maps.maps["asyndm"][:2]))  # the initial mask's
    assert maps.maps["asyndm+cfgpp"][2].unique().numel() > 1, "per-pixel timesteps from its own masks"


def test_item_tokens_know_the_prompt_length(tiny_backend):
    assert tokens(tiny_backend) == ItemTokens([[2], [5]], length=7)  # <start> a cat eating a sandwich <end>
