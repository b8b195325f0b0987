"""The Python API in diffusers' conventions (asyndm/pipeline.py), ``from_pipe`` on every family, and its
refusals in Python terms.

Equalities are with diffusers' own pipelines, built from the same tiny folders and called the
diffusers way (an independent computation), at 7 steps (7 does not divide 1000), in fp32 and in the
presets' half precision.
"""

import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, EulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline,
                       StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel)

from asyndm import AsyncPipeline
from asyndm.errors import AsyndmError
from asyndm.sampler import SamplingSettings

PROMPT, ITEMS = "a cat eating a sandwich", ["cat", "sandwich"]
STEPS = 7
SIDE = {"sd": 64, "sdxl": None, "sd3": None, "flux": 128}  # small images keep the CPU quick
GUIDANCE = {"sd": 5.0, "sdxl": 5.0, "sd3": 5.0, "flux": 3.5}
HALF = {"sd": torch.float16, "sdxl": torch.float16, "sd3": torch.bfloat16, "flux": torch.bfloat16}
CLASSES = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline, "sd3": StableDiffusion3Pipeline,
           "flux": FluxPipeline}


def gens(n, seed=1234):
    return [torch.Generator("cpu").manual_seed(seed + j) for j in range(n)]


def size(family):
    side = SIDE[family]
    return {"height": side, "width": side} if side else {}


# ---------------------------------------------------------------------------- the toy model (done-when)


@pytest.fixture(scope="module")
def toy():
    return AsyncPipeline.from_pretrained("toy", device="cpu")


def test_a_diffusers_style_call_on_the_toy_model(toy):
    """(2, H, W, 3) images, the callback at every step, the same generators the same images, and the
    model's own step count (25) without num_inference_steps."""
    seen = []

    def cb(pipe, step, timestep, callback_kwargs):
        seen.append((step, float(timestep), callback_kwargs["latents"].shape))
        return callback_kwargs

    call = dict(items=["circle", "square"], k=0.5, num_images_per_prompt=2, callback_on_step_end=cb, output_type="np")
    prompt = "a red circle above a blue square"
    first = toy(prompt, generator=gens(2), **call).images
    assert isinstance(first, np.ndarray) and first.shape == (2, 32, 32, 3) and first.dtype == np.float32
    assert [s for s, _, _ in seen] == list(range(25))  # the toy model's own 25 steps, each seen once
    assert seen[0][1] > seen[-1][1] and all(shape == (2, 3, 32, 32) for _, _, shape in seen)
    again = toy(prompt, generator=gens(2), **call).images
    assert np.array_equal(first, again)
    other = toy(prompt, generator=gens(2, seed=99), **call).images
    assert not np.allclose(first, other)


def test_generators_seeded_seed_plus_j_give_the_cli_images(toy):
    """The CLI's path (generate with seeds, the run's settings) and the diffusers-style call agree exactly."""
    spec_prompt, items = "a red circle", ["circle"]
    from asyndm.prompts import PromptSpec

    settings = SamplingSettings(steps=25, guidance_scale=3.0, mask_resolution=16)  # model=toy's sampling defaults
    cli = toy.generate(PromptSpec(0, spec_prompt, items, [0.5]), [1234, 1235], settings, ["asyndm"],
                       output_type="latent")["asyndm"].latents
    ours = toy(spec_prompt, items=items, k=0.5, generator=gens(2), num_images_per_prompt=2, output_type="latent")
    assert torch.equal(ours.latents, cli) and torch.equal(ours.images, cli)
    seeded = toy(spec_prompt, items=items, k=0.5, seed=1234, num_images=2, output_type="latent")
    assert torch.equal(seeded.latents, cli) and seeded.seeds == [1234, 1235]


def test_output_types_paired_variants_and_return_dict(toy):
    common = dict(items=["circle"], k=0.5, num_inference_steps=4, generator=gens(2), num_images_per_prompt=2)
    paired = toy("a red circle", variants=["dm", "asyndm"], output_type="pt", **common)
    assert set(paired) == {"dm", "asyndm"}
    assert paired["asyndm"].images.shape == (2, 3, 32, 32) and paired["asyndm"].masks.shape == (2, 32, 32)
    assert paired["dm"].masks is None and 0 <= paired["dm"].images.min() and paired["dm"].images.max() <= 1
    pil = toy("a red circle", variant="dm", **common)
    assert [im.size for im in pil.images] == [(32, 32)] * 2 and pil["images"] is pil.images  # a diffusers output
    as_np = np.stack([np.asarray(im) for im in pil.images]).astype(int)
    assert np.abs(as_np - np.round(paired["dm"].images.permute(0, 2, 3, 1).numpy() * 255)).max() <= 1
    (images,) = toy("a red circle", variant="dm", return_dict=False, **common)
    assert len(images) == 2


def test_a_list_of_prompts_and_dm_without_items(toy):
    """dm needs no items; each prompt's images follow, as diffusers orders them."""
    both = toy(["a red circle", "a blue square"], variant="dm", num_inference_steps=4, num_images_per_prompt=2,
               generator=gens(4), output_type="latent")
    assert both.images.shape[0] == 4
    second = toy("a blue square", variant="dm", num_inference_steps=4, num_images_per_prompt=2,
                 generator=gens(2, seed=1236), output_type="latent")
    assert torch.equal(both.images[2:], second.images)


def test_one_generator_is_one_stream_for_the_batch(toy):
    """As diffusers: a single generator draws the whole batch's noise at once (dm equals diffusers' own
    call with that generator); every variant starts from its state at the call, and the caller's
    generator is left as it was."""
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    call = dict(num_inference_steps=3, guidance_scale=3.0, eta=1.0, num_images_per_prompt=2, output_type="latent")
    out = toy("a red circle", items=["circle"], k=0.5, variants=["dm", "dm_concave"], generator=g, **call)
    assert torch.equal(g.get_state(), state)
    expected = toy.pipe("a red circle", generator=torch.Generator().manual_seed(7), **call).images  # diffusers' call
    torch.testing.assert_close(out["dm"].latents, expected, rtol=1e-4, atol=1e-4)
    per_image = toy("a red circle", variant="dm", generator=gens(2, seed=7), **call).latents
    assert not torch.allclose(per_image, expected, atol=1e-2)  # one stream is not one generator per image


def test_callback_latents_replace_the_loop_latents_and_tensor_inputs_are_checked(toy):
    def zero(pipe, step, timestep, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])} if step == 1 else kwargs

    out = toy("a red circle", variant="dm", num_inference_steps=2, eta=0.0, callback_on_step_end=zero,
              output_type="latent")
    assert torch.count_nonzero(out.latents) == 0
    with pytest.raises(AsyndmError, match=r"^callback_on_step_end_tensor_inputs=\['prompt_embeds'\]"):
        toy("a red circle", variant="dm", callback_on_step_end=zero, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_device_dtype_to_and_progress_bar(toy):
    assert toy.device == torch.device("cpu") and toy.dtype == torch.float32
    assert toy.to("cpu") is toy
    toy.set_progress_bar_config(disable=False)
    assert toy.progress_bar_config["disable"] is False
    toy.set_progress_bar_config(disable=True)


# ---------------------------------------------------------------------------- refusals in Python terms


@pytest.mark.parametrize("call, message", [
    (dict(variant="dm", num_inference_steps=0), r"^num_inference_steps=0: needs at least 2 steps"),
    (dict(variant="dm", num_inference_steps=2.5), r"^num_inference_steps=2.5: not a valid int"),
    (dict(variant="dm", num_images_per_prompt=0), r"^num_images_per_prompt=0: must be a whole number, at least 1"),
    (dict(variant="dm", eta=-1.0), r"^eta=-1.0: must be >= 0"),
    (dict(variant="dm", mask_threshold=0.0), r"^mask_threshold=0.0: must be positive"),
    (dict(variant="dm", curve="square"), r"^unknown curve 'square'"),
    (dict(variant="nope"), r"^unknown variant 'nope'"),
    (dict(variants=["dm"], variant_options={"cfgpp": {"nope": 1}}), r"^variant_options\['cfgpp'\]\['nope'\]"),
    (dict(variant="dm", output_type="latents"), r"^output_type='latents': choose one of"),
    (dict(variant="dm", height=33), r"^height=33: this model needs a multiple of \d+ pixels"),
    (dict(items=["circle"], k=0.5, mask_resolution=5), r"^mask_resolution=5: this model has no attention layer"),
    (dict(variant="dm", generator=gens(3), num_images_per_prompt=2), r"^generator: a list of 3 generators for 2 images"),
    (dict(), r"^variant 'asyndm' needs the prompt's items: pass items=\[\.\.\.\]"),
    (dict(items=["circle"], k=0.5, variants=["dm", "asyndm_oracle"]), r"^variant 'asyndm_oracle' reads its masks off dm's"),
    (dict(items=["dog"], k=0.5), r"^prompt: item 'dog' is not a word of prompt"),
    (dict(items=["circle"]), r"^items=\['circle'\] need k"),
    (dict(items=["circle"], k=1.5), r"^prompt: k=1.5 for prompt 'a red circle' is outside \(0, 1\]"),
])
def test_the_api_refuses_as_the_cli_does_in_python_terms(toy, call, message):
    with pytest.raises(AsyndmError, match=message) as err:
        toy("a red circle", **call)
    assert "\n" not in str(err.value) and "sample." not in str(err.value)


def test_from_pretrained_refuses_in_python_terms():
    with pytest.raises(AsyndmError, match=r"^from_pretrained\('nonexistent'\): no such folder"):
        AsyncPipeline.from_pretrained("nonexistent")
    with pytest.raises(AsyndmError, match=r"^from_pretrained\('org/absent'\): is not in the local Hugging Face cache"):
        AsyncPipeline.from_pretrained("org/absent")


def test_defaults_are_the_models_own():
    from asyndm.presets import sampling_defaults

    assert sampling_defaults("toy") == {"steps": 25, "guidance_scale": 3.0, "mask_resolution": 16}
    assert sampling_defaults("stabilityai/stable-diffusion-3.5-medium")["steps"] == 40  # model=sd35_medium's
    assert sampling_defaults("/any/folder") == {"steps": 50, "guidance_scale": 5.0, "mask_resolution": None}


# ---------------------------------------------------------------------------- from_pipe on every family


@pytest.fixture(scope="module")
def folders(tiny_path, tiny_sdxl_path, tiny_sd3_path, tiny_flux_path):
    return {"sd": tiny_path, "sdxl": tiny_sdxl_path, "sd3": tiny_sd3_path, "flux": tiny_flux_path}


def load(folders, family, dtype):
    extra = {"safety_checker": None, "requires_safety_checker": False} if family == "sd" else {}
    pipe = CLASSES[family].from_pretrained(str(folders[family]), torch_dtype=dtype, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference(user, family, n, **kwargs):
    """diffusers' own call on the user's modules, with DDIM for SD/SDXL (asyndm's dm), latents out."""
    pipe = user
    if family in ("sd", "sdxl"):
        pipe = type(user).from_pipe(user, scheduler=DDIMScheduler.from_config(user.scheduler.config),
                                    torch_dtype=user.dtype)  # from_pipe would cast the shared modules to fp32
        kwargs["eta"] = 1.0
    latents = pipe(PROMPT, num_images_per_prompt=n, generator=gens(n), num_inference_steps=STEPS,
                   guidance_scale=GUIDANCE[family], output_type="latent", **size(family), **kwargs).images
    if family == "flux":
        latents = pipe._unpack_latents(latents, SIDE["flux"], SIDE["flux"], pipe.vae_scale_factor)
    return latents


def dm(pipe, family, n):
    return pipe(PROMPT, variant="dm", num_inference_steps=STEPS, guidance_scale=GUIDANCE[family], eta=1.0,
                generator=gens(n), num_images_per_prompt=n, output_type="latent", **size(family)).latents


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
@pytest.mark.parametrize("half", [False, True], ids=["fp32", "half"])
def test_from_pipe_dm_equals_the_wrapped_pipeline(folders, family, half):
    """Bit for bit, except SD 1.x/2.x, whose DDIM step is the reference release's float32 arithmetic
    (docs/numerics.md): within 1e-4 in fp32, and in fp16 within the fp16 rounding of the model calls."""
    dtype = HALF[family] if half else torch.float32
    user = load(folders, family, dtype)
    n = 1 if half else 2
    pipe = AsyncPipeline.from_pipe(user)
    assert pipe.dtype == dtype and pipe.pipe is not user
    got, expected = dm(pipe, family, n), reference(user, family, n)
    assert got.dtype == expected.dtype == dtype
    if family != "sd":
        assert torch.equal(got, expected)
    elif not half:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    else:  # fp16 model outputs stepped in float32 (asyndm, the release) or in fp16 (diffusers): a few fp16 ulps
        diff = (got.float() - expected.float()).abs()
        assert diff.mean() <= 2e-3 * expected.float().abs().mean() and diff.max() <= 0.1


def test_from_pipe_shares_the_modules_and_leaves_the_users_pipeline_working(folders):
    """A swapped UNet (random weights, in memory) is what dm samples with; no weight is copied; the user's
    pipeline keeps its own scheduler and gives the same images after asyndm sampled with its modules."""
    user = load(folders, "sd", torch.float32)
    torch.manual_seed(12345)  # the folder's weights are seeded 0
    swapped = UNet2DConditionModel.from_config(user.unet.config)
    original = reference(user, "sd", 1)
    user.unet = swapped
    user.scheduler = EulerDiscreteScheduler.from_config(user.scheduler.config)
    before = user(PROMPT, generator=gens(1), num_inference_steps=3, output_type="latent", **size("sd")).images
    pipe = AsyncPipeline.from_pipe(user)
    assert pipe.pipe.unet is swapped and pipe.pipe.vae is user.vae and pipe.pipe.text_encoder is user.text_encoder
    got = dm(pipe, "sd", 1)
    torch.testing.assert_close(got, reference(user, "sd", 1), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, original, atol=1e-2)  # the swapped UNet, not the folder's
    pipe(PROMPT, items=ITEMS, k=0.7, num_inference_steps=3, output_type="latent", height=128, width=128)  # hooks come and go
    assert isinstance(user.scheduler, EulerDiscreteScheduler)
    after = user(PROMPT, generator=gens(1), num_inference_steps=3, output_type="latent", **size("sd")).images
    assert torch.equal(before, after)


def test_from_pipe_keeps_offloading_hooks(folders):
    """accelerate's model offloading (set up here with the CPU as the execution device: this machine has no
    GPU) stays attached, asyndm does not move the modules, dm still equals the pipeline, and asyndm's
    per-pixel path gives what it gives without the hooks."""
    user = load(folders, "sd", torch.float32)
    expected = reference(user, "sd", 1)
    asyndm = dict(items=ITEMS, k=0.7, num_inference_steps=3, generator=gens(1), output_type="latent", height=128, width=128)
    plain = AsyncPipeline.from_pipe(user)(PROMPT, **asyndm).latents
    user.enable_model_cpu_offload(device="cpu")
    hooks = {name: module._hf_hook for name, module in user.components.items() if hasattr(module, "_hf_hook")}
    assert "unet" in hooks
    pipe = AsyncPipeline.from_pipe(user)
    got = dm(pipe, "sd", 1)
    assert all(getattr(user.components[name], "_hf_hook", None) is hook for name, hook in hooks.items())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    asyndm["generator"] = gens(1)
    assert torch.equal(pipe(PROMPT, **asyndm).latents, plain)  # per-pixel timesteps through the hooked UNet


def test_from_pipe_refuses_a_pipeline_it_cannot_drive(folders):
    user = load(folders, "sd", torch.float32)
    from diffusers import StableDiffusionImg2ImgPipeline

    with pytest.raises(AsyndmError, match=r"^from_pipe\(StableDiffusionImg2ImgPipeline\): .*text-to-image only"):
        AsyncPipeline.from_pipe(StableDiffusionImg2ImgPipeline.from_pipe(user))


def test_from_pipe_samples_with_a_lora_loaded_through_diffusers(folders, tmp_path):
    """A LoRA saved to a file and loaded with diffusers' load_lora_weights (its PEFT backend): dm equals
    the LoRA-loaded pipeline bit for bit, and the LoRA changes the images (so it is in what dm samples)."""
    peft = pytest.importorskip("peft")
    plain = load(folders, "sdxl", torch.float32)
    torch.manual_seed(3)  # non-zero LoRA weights (peft's default init leaves lora_B at zero: no effect)
    plain.unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                           target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionXLPipeline.save_lora_weights(tmp_path, unet_lora_layers=peft.get_peft_model_state_dict(plain.unet))
    user = load(folders, "sdxl", torch.float32)
    without = reference(user, "sdxl", 1)
    user.load_lora_weights(tmp_path, weight_name="pytorch_lora_weights.safetensors")  # offline: name the file
    pipe = AsyncPipeline.from_pipe(user)
    got = dm(pipe, "sdxl", 1)
    assert torch.equal(got, reference(user, "sdxl", 1))
    assert (got - without).abs().max() > 1.0


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_asyndm_runs_on_a_wrapped_pipeline_of_each_family(folders, family):
    """asyndm's own path (per-pixel or per-token timesteps, masks from attention) on the wrapped modules."""
    pipe = AsyncPipeline.from_pipe(load(folders, family, torch.float32))
    out = pipe(PROMPT, items=ITEMS, k=0.7, variants=["dm", "asyndm"], num_inference_steps=3, generator=gens(1),
               guidance_scale=GUIDANCE[family], output_type="latent", **size(family))
    masks = out["asyndm"].masks
    assert masks.shape[0] == 1 and set(masks.unique().tolist()) <= {-1, 0, 1}
    assert not torch.equal(out["asyndm"].latents, out["dm"].latents)
