"""Every family exact in the precision and step count users run (METHOD.md §9).

Against diffusers' own pipelines, loaded from the same folders (an independent computation: no
asyndm code runs in the reference):
- ``dm`` equals ``StableDiffusionXLPipeline`` (DDIM), ``StableDiffusion3Pipeline`` and ``FluxPipeline`` bit
  for bit in fp32 and in the presets' half precision (SDXL fp16; SD3.5 and FLUX.1 bf16), at step counts
  that divide 1000 and ones that do not (4, 10, 28, 30). A positive control shows the float32 step
  that SDXL used before would not pass in fp16.
- SDXL's curves run through DDIM's own grid at any N: the linear curve against ``DDIMScheduler``'s
  timesteps, all-linear ``asyndm`` against ``dm``, and ``asyndm`` with k = 1e-6 against the pipeline.
- Flow matching: no model call sees σ above 1 (the transformer's own timestep input, recorded by a hook),
  a state above τ₀ does not move, and the text stream is given the scheduler's own timestep at every call.
"""

import pytest
import torch
from diffusers import DDIMScheduler

from asyndm.curves import Curves
from asyndm.flow import FlowShift, euler_step
from asyndm.models import load_backend
from asyndm.sampler import AsyncSampler, SamplingSettings

PROMPT, ITEMS, K = "a cat eating a sandwich", ["cat", "sandwich"], [0.7, 0.5]
STEPS = (4, 10, 28, 30)
HALF = {"sdxl": torch.float16, "sd3": torch.bfloat16, "flux": torch.bfloat16}  # the presets' precision
GUIDANCE = {"sdxl": 5.0, "sd3": 5.0, "flux": 3.5}
FLUX_SIDE = 128  # px: 8×8 image tokens keep bf16 Flux quick on the CPU


@pytest.fixture(scope="module")
def paths(tiny_sdxl_path, tiny_sd3_path, tiny_flux_path):
    return {"sdxl": str(tiny_sdxl_path), "sd3": str(tiny_sd3_path), "flux": str(tiny_flux_path)}


@pytest.fixture(scope="module")
def backends(paths):
    """(family, dtype) → our backend, loaded once per module."""
    loaded = {}

    def get(family, dtype):
        if (family, dtype) not in loaded:
            loaded[family, dtype] = load_backend(paths[family], torch.device("cpu"), dtype)
        return loaded[family, dtype]

    return get


@pytest.fixture(scope="module")
def pipelines(paths):
    """(family, dtype) → diffusers' own pipeline from the same folder (SDXL with DDIM, as the presets)."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionXLPipeline

    classes = {"sdxl": StableDiffusionXLPipeline, "sd3": StableDiffusion3Pipeline, "flux": FluxPipeline}
    loaded = {}

    def get(family, dtype):
        if (family, dtype) not in loaded:
            pipe = classes[family].from_pretrained(paths[family], torch_dtype=dtype)
            if family == "sdxl":
                pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
            pipe.set_progress_bar_config(disable=True)
            loaded[family, dtype] = pipe
        return loaded[family, dtype]

    return get


def size(family):
    return {"height": FLUX_SIDE, "width": FLUX_SIDE} if family == "flux" else {}


def ours(backend, family, variant, steps, seeds, masks=None, k=K, **settings):
    settings = {"guidance_scale": GUIDANCE[family], **size(family), **settings}
    sampler = AsyncSampler(backend, SamplingSettings(steps=steps, **settings))
    tokens = backend.item_tokens(PROMPT, ITEMS, None, "word")
    return sampler.sample_variant(variant, sampler.encode(PROMPT, len(seeds)), seeds, tokens, k, masks).latents


def reference(pipe, family, steps, seeds, device="cpu", **kwargs):
    generators = [torch.Generator(device).manual_seed(s) for s in seeds]
    latents = pipe(PROMPT, num_images_per_prompt=len(seeds), generator=generators, num_inference_steps=steps,
                   guidance_scale=GUIDANCE[family], output_type="latent", **size(family), **kwargs).images
    if family == "flux":
        latents = pipe._unpack_latents(latents, FLUX_SIDE, FLUX_SIDE, pipe.vae_scale_factor)
    return latents


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The share of elements within 1e-3 relative (the done-when criterion)."""
    a, b = a.float(), b.float()
    return ((a - b).abs() <= 1e-3 * b.abs() + 1e-6).float().mean().item()


# ---------------------------------------------------------------------------- dm = the family's pipeline


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
@pytest.mark.parametrize("half", [False, True], ids=["fp32", "half"])
def test_dm_equals_the_pipeline_bit_for_bit(backends, pipelines, family, steps, half):
    """SDXL samples with η = 1 (the paper's), so the step's noise is drawn and scaled too."""
    dtype = HALF[family] if half else torch.float32
    seeds = [1234] if half else [1234, 1235]  # one image keeps half precision (slow on a CPU) quick
    eta = {"eta": 1.0} if family == "sdxl" else {}
    got = ours(backends(family, dtype), family, "dm", steps, seeds, **eta)
    expected = reference(pipelines(family, dtype), family, steps, seeds, **eta)
    assert got.dtype == expected.dtype == dtype
    assert torch.equal(got, expected), f"{agreement(got, expected):.4f} of the elements agree within 1e-3"


def test_the_release_float32_step_would_not_reproduce_sdxl_in_fp16(backends, pipelines, monkeypatch):
    """Positive control: SDXL's step in the SD release's float32 arithmetic misses the fp16 pipeline."""
    backend = backends("sdxl", torch.float16)
    monkeypatch.setattr(backend, "step_arithmetic", "release")
    got = ours(backend, "sdxl", "dm", 10, [1234], eta=1.0)
    expected = reference(pipelines("sdxl", torch.float16), "sdxl", 10, [1234], eta=1.0)
    assert agreement(got, expected) < 0.995


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_dm_reproduces_the_pipeline_in_half_precision_on_cuda(paths, family):
    """On CUDA, kernels may treat the scheduler's 0-dim coefficients otherwise than the CPU's (a CPU scalar
    can stay float32 there): the done-when level, 99.5 % of the elements within 1e-3, at 30 steps."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionXLPipeline

    dtype, cuda = HALF[family], torch.device("cuda")
    backend = load_backend(paths[family], cuda, dtype)
    pipe = {"sdxl": StableDiffusionXLPipeline, "sd3": StableDiffusion3Pipeline,
            "flux": FluxPipeline}[family].from_pretrained(paths[family], torch_dtype=dtype).to(cuda)
    if family == "sdxl":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    eta = {"eta": 1.0} if family == "sdxl" else {}
    got = ours(backend, family, "dm", 30, [1234, 1235], **eta)
    expected = reference(pipe, family, 30, [1234, 1235], device="cuda", **eta)
    assert agreement(got, expected) >= 0.995


# ---------------------------------------------------------------------------- SDXL's curves on DDIM's grid


@pytest.mark.parametrize("steps", [4, 10, 28, 30, 50, 60])
def test_sdxl_linear_curve_is_ddim_grid_at_any_step_count(backends, steps):
    """The linear curve from Y + o, rounded, against DDIMScheduler's own timesteps ("leading", offset 1)."""
    scheduler = DDIMScheduler.from_config(backends("sdxl", torch.float32).pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    timeline = backends("sdxl", torch.float32).timeline(steps)
    for semantics in ("reference", "refit"):
        curves = Curves("bin", steps, timeline.num_train_timesteps, timeline.offset, semantics)
        state, seen = curves.start((1,), "cpu"), []
        for left in range(steps, 0, -1):
            state = curves.linear(state, left)
            seen.append(int(torch.round(state)))
        assert seen == scheduler.timesteps.tolist(), semantics


def test_sd_keeps_the_release_timeline_under_reference_semantics_and_the_grid_under_refit(tiny_backend):
    """SD 1.x/2.x: at N = 30 the release's Y = 1000, o = 1 put the background off DDIM's grid (§3, §9)."""
    reference, refit = tiny_backend.timeline(30, "reference"), tiny_backend.timeline(30, "refit")
    assert (reference.num_train_timesteps, reference.offset) == (1000.0, 1.0)
    assert (refit.num_train_timesteps, refit.offset) == (990.0, 1.0)  # (958 - 1)·30/29
    assert reference.sync_states[:2].tolist() == refit.sync_states[:2].tolist() == [958.0, 925.0]
    first = Curves("bin", 30, 1000.0, 1.0, "reference").linear(torch.tensor([1001.0]), 30)
    assert round(float(first)) == 968  # the release's background, not DDIM's 958


@pytest.mark.parametrize("steps", [28, 30])
def test_sdxl_all_linear_asyndm_equals_dm_at_steps_that_do_not_divide_1000(backends, steps):
    backend = backends("sdxl", torch.float32)
    background = torch.full((2, *backend.latent_size), -1)
    linear = ours(backend, "sdxl", "asyndm", steps, [1234, 1235], masks=background, eta=1.0)
    dm = ours(backend, "sdxl", "dm", steps, [1234, 1235], eta=1.0)
    torch.testing.assert_close(linear, dm, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("curve,semantics", [("lin", "reference"), ("exp", "reference"), ("bin", "refit")])
def test_sdxl_asyndm_with_vanishing_k_reproduces_the_pipeline_at_30_steps(backends, pipelines, curve, semantics):
    """k = 1e-6: every concave curve is the linear one to rounding, so asyndm is the pipeline's DDIM.

    Not ``bin`` under the reference semantics: the release's bin formula divides by a = -k·Y/N², which
    in float32 at k = 1e-6 puts the first call at 944 instead of 958 (docs/numerics.md)."""
    got = ours(backends("sdxl", torch.float32), "sdxl", "asyndm", 30, [1234, 1235], k=[1e-6, 1e-6], eta=1.0,
               curve=curve, curve_semantics=semantics)
    expected = reference(pipelines("sdxl", torch.float32), "sdxl", 30, [1234, 1235], eta=1.0)
    assert agreement(got, expected) >= 0.995


# ---------------------------------------------------------------------------- flow matching: σ ≤ 1, the text stream


class TransformerTimesteps:
    """The timestep input of every transformer call (Flux: σ, the pipeline divides by 1000)."""

    def __init__(self, transformer):
        self.seen = []
        self.handle = transformer.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.seen.append(kwargs["timestep"].detach().clone())

    def remove(self):
        self.handle.remove()


def test_no_model_call_sees_sigma_above_one_over_a_4_step_flux_run(backends):
    backend = backends("flux", torch.float32)
    states = []
    hook = TransformerTimesteps(backend.transformer)
    try:
        sampler = AsyncSampler(backend, SamplingSettings(steps=4, guidance_scale=3.5, **size("flux")))
        tokens = backend.item_tokens(PROMPT, ITEMS, None, "word")
        sampler.sample_variant("asyndm", sampler.encode(PROMPT, 2), [1234, 1235], tokens, [0.7, 0.7],
                               callbacks=[lambda info: states.append(info.states.clone())])
    finally:
        hook.remove()
    assert len(hook.seen) == 4
    assert max(float(s.max()) for s in states) > backend.timeline(4).sync_states[0]  # concave tokens start above τ₀
    assert max(float(t.max()) for t in hook.seen) <= 1.0  # σ: Flux's transformer takes timestep / 1000


def test_a_state_above_tau0_is_pure_noise_and_does_not_move():
    shift = FlowShift(num_train_timesteps=1000.0, shift=3.0, ceiling=1000.0)
    states = torch.tensor([[[1150.0, 1000.0], [1030.0, 500.0]]])
    sigma = shift.sigmas(states, 4)
    assert sigma[0, 0].tolist() == [1.0, 1.0] and sigma[0, 1, 0] == 1.0 and sigma[0, 1, 1] < 1.0
    latents, velocity = torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2)
    moved = euler_step(velocity, latents, sigma, shift.sigmas(torch.tensor([[[1080.0, 900.0], [1010.0, 400.0]]]), 4))
    assert torch.equal(moved[..., 0, 0], latents[..., 0, 0]) and torch.equal(moved[..., 1, 0], latents[..., 1, 0])
    assert not torch.equal(moved[..., 0, 1], latents[..., 0, 1])


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_text_stream_is_given_the_schedulers_own_timestep_at_every_call(backends, pipelines, family, monkeypatch):
    """Under dynamic masks and CFG, each call's text-stream timestep is the one diffusers' pipeline gives
    its transformer at that call (recorded by a hook on the pipeline's own run);
    tests/test_mmdit_oracle.py shows predict gives the text stream exactly this timestep."""
    backend = backends(family, torch.float32)
    given = []
    predict = backend.predict
    monkeypatch.setattr(backend, "predict", lambda *a, **kw: (given.append(kw["sync_state"]), predict(*a, **kw))[1])
    ours(backend, family, "asyndm", 6, [1234])
    pipe = pipelines(family, torch.float32)
    hook = TransformerTimesteps(pipe.transformer)
    try:
        reference(pipe, family, 6, [1234])
    finally:
        hook.remove()
    height, width = (FLUX_SIDE, FLUX_SIDE) if family == "flux" else backend.default_size
    _, latent_h, latent_w = backend.latent_shape(height, width)
    tokens = (latent_h // backend.patch) * (latent_w // backend.patch)
    scale = 1000.0 if family == "flux" else 1.0  # FluxPipeline gives its transformer timestep / 1000
    seen = torch.stack([backend.shift.model_timesteps(torch.as_tensor(t).reshape(1), tokens)[0] / scale
                        for t in given])
    assert len(given) == len(hook.seen) == 6
    torch.testing.assert_close(seen, torch.stack([t[0].float() for t in hook.seen]), rtol=1e-6, atol=1e-6)
