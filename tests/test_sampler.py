"""The sampler against diffusers' own StableDiffusionPipeline with DDIM (METHOD.md §4, §7), and the
loop's reference semantics: mask timing (§6), static masks from the dm pass, callbacks."""

import pytest
import torch

from asyndm.backends import ItemTokens
from asyndm.callbacks import RecordItemMaps, RecordMasks, RecordTimesteps, StepInfo
from asyndm.curves import Curves
from asyndm.masks import masks_from_attention
from asyndm.sampler import AsyncSampler, SamplingSettings

PROMPT = "a cat eating a sandwich"
SEEDS = [1234, 1235]
TOKENS = ItemTokens([[2], [5]])
K = [0.7, 0.5]


def pipeline_latents(backend, steps, eta, guidance, seeds=SEEDS):
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    out = backend.pipe(
        PROMPT,
        num_images_per_prompt=len(seeds),
        generator=generators,
        eta=eta,
        guidance_scale=guidance,
        num_inference_steps=steps,
        output_type="latent",
    )
    return out.images


def sample(backend, variant, steps=10, masks=None, callbacks=(), **settings):
    sampler = AsyncSampler(backend, SamplingSettings(steps=steps, **settings))
    return sampler.sample_variant(variant, sampler.encode(PROMPT, len(SEEDS)), SEEDS, TOKENS, K, masks, callbacks)


@pytest.mark.parametrize("eta,guidance", [(1.0, 5.0), (0.0, 1.0)])
def test_dm_reproduces_diffusers_pipeline(tiny_backend, eta, guidance):
    ours = sample(tiny_backend, "dm", eta=eta, guidance_scale=guidance).latents
    reference = pipeline_latents(tiny_backend, 10, eta, guidance)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_asyndm_with_every_pixel_linear_reproduces_pipeline(tiny_backend):
    """Per-pixel UNet + per-pixel step + linear curve == diffusers DDIM when N divides 1000."""
    recorder = RecordTimesteps()
    background = torch.full((len(SEEDS), *tiny_backend.latent_size), -1)
    result = sample(tiny_backend, "asyndm", masks=background, callbacks=[recorder])
    assert [int(m.unique()) for m in recorder.maps["asyndm"]] == list(range(901, 0, -100))
    torch.testing.assert_close(result.latents, pipeline_latents(tiny_backend, 10, 1.0, 5.0), rtol=1e-5, atol=1e-5)


def test_images_do_not_depend_on_batch_composition(tiny_backend):
    sampler = AsyncSampler(tiny_backend, SamplingSettings(steps=4))
    together = sampler.sample_variant("asyndm", sampler.encode(PROMPT, 2), SEEDS, TOKENS, K).latents
    alone = sampler.sample_variant("asyndm", sampler.encode(PROMPT, 1), SEEDS[1:], TOKENS, K).latents
    torch.testing.assert_close(together[1:], alone, rtol=1e-5, atol=1e-5)


def test_variants_start_from_identical_noise_and_differ_after(tiny_backend):
    generators = tiny_backend.generators(SEEDS)
    first = tiny_backend.initial_latents(generators, 128, 128)
    again = tiny_backend.initial_latents(tiny_backend.generators(SEEDS), 128, 128)
    assert torch.equal(first, again)
    dm = sample(tiny_backend, "dm", steps=4).latents
    concave = sample(tiny_backend, "dm_concave", steps=4).latents
    assert not torch.allclose(dm, concave)


class RecordStates:
    """The curve states and masks each call of asyndm saw (what the timing tests compare)."""

    needs_item_maps = False

    def __init__(self):
        self.states, self.next_states, self.masks = [], [], []

    def __call__(self, info: StepInfo):
        self.states.append(info.states.clone())
        self.next_states.append(info.next_states.clone())
        self.masks.append(None if info.assignment is None else info.assignment.clone())


def test_dynamic_masks_first_change_the_timesteps_two_calls_later(tiny_backend):
    """§6: transition t_i → t_i+1 is computed before call i with mask M_(i-1) (M_-1 the initial mask)."""
    steps = 10
    recorder = RecordStates()
    sample(tiny_backend, "asyndm", steps=steps, callbacks=[recorder])
    masks = recorder.masks
    initial = torch.full_like(masks[0], TOKENS.last_item)
    curves = Curves("bin", steps, 1000.0, 1.0)
    # call 0 and call 1 run entirely on the initial mask's curve: item 1 (the largest token index, k 0.5)
    start = curves.start(tuple(initial.shape), "cpu")
    first = curves.concave(start, steps, K[1])
    assert torch.equal(recorder.states[0], first)
    assert torch.equal(recorder.states[1], curves.concave(first, steps - 1, K[1]))
    assert recorder.states[1].unique().numel() == 1, "call 1 runs on the initial mask alone"
    assert not torch.equal(masks[0], initial), "call 0's attention gives a mask of its own"
    # in general: the state of call i + 1 is the transition of call i's state with M_(i-1)
    for i in range(steps - 1):
        previous_mask = initial if i == 0 else masks[i - 1]
        expected = curves.transition(recorder.states[i], steps - i - 1, previous_mask, K)
        assert torch.equal(recorder.states[i + 1], expected), f"call {i + 1}"
    # and not with M_i (the order of the earlier sampler): the test tells the two apart
    assert any(
        not torch.equal(recorder.states[i + 1], curves.transition(recorder.states[i], steps - i - 1, masks[i], K))
        for i in range(steps - 1)
    )


def test_dynamic_asyndm_moves_items_slower_than_background(tiny_backend):
    recorder = RecordTimesteps()
    result = sample(tiny_backend, "asyndm", callbacks=[recorder])
    first = recorder.maps["asyndm"][0]
    # before the first call every pixel belongs to the item with the largest token index (k = 0.5)
    assert int(first.unique()) == round(1001 * 9 / 10 + 1 / 10 + 0.5 * 1000 * 9 / 100)
    assert recorder.maps["asyndm"][5].unique().numel() > 1, "later the mask splits items from background"
    item_pixels = result.assignment >= 0
    assert item_pixels.any() and (~item_pixels).any()


def _follows_its_curves(states: list[torch.Tensor], mask: torch.Tensor, steps: int) -> None:
    """Every pixel's states are those of its item's curve (background: linear), started at Y + o."""
    curves = Curves("bin", steps, 1000.0, 1.0)
    state = curves.start(tuple(mask.shape), "cpu")
    for i, recorded in enumerate(states):
        state = curves.transition(state, steps - i, mask, K)
        assert torch.equal(recorded, state), f"call {i}"


def test_static_masks_are_the_dm_pass_mask_and_asyndm_follows_them(tiny_backend):
    steps = 6
    sampler = AsyncSampler(tiny_backend, SamplingSettings(steps=steps, mask_mode="static"))
    maps, states = RecordItemMaps(), RecordStates()
    results = sampler.sample(PROMPT, TOKENS, K, SEEDS, ["dm", "asyndm"], callbacks=[maps, states])
    # the mask, computed here from the dm pass's recorded maps: averaged over steps, then §6
    mean = torch.stack(maps.maps["dm"]).mean(dim=0)
    expected = masks_from_attention(mean, torch.tensor(K), 1.0, maps.grid, tiny_backend.latent_size)
    assert torch.equal(results["asyndm"].assignment, expected)
    assert (expected >= 0).any() and (expected < 0).any()
    asyndm_states = states.states[steps:]  # the dm pass ran first
    _follows_its_curves(asyndm_states, expected, steps)
    assert all(torch.equal(m, expected) for m in states.masks[steps:]), "a static mask never changes"


def test_static_asyndm_alone_still_takes_its_mask_from_a_dm_pass(tiny_backend):
    sampler = AsyncSampler(tiny_backend, SamplingSettings(steps=4, mask_mode="static"))
    both = sampler.sample(PROMPT, TOKENS, K, SEEDS, ["dm", "asyndm"])
    alone = sampler.sample(PROMPT, TOKENS, K, SEEDS, ["asyndm"])
    assert list(alone) == ["asyndm"]
    assert torch.equal(alone["asyndm"].assignment, both["asyndm"].assignment)
    assert torch.equal(alone["asyndm"].latents, both["asyndm"].latents)


def test_static_mode_without_a_dm_pass_refuses_instead_of_running_dynamic(tiny_backend):
    sampler = AsyncSampler(tiny_backend, SamplingSettings(steps=2, mask_mode="static"))
    with pytest.raises(ValueError, match="static masks come from the dm pass"):
        sampler.sample_variant("asyndm", sampler.encode(PROMPT, 2), SEEDS, TOKENS, K)


def test_recording_item_maps_keeps_the_images_and_returns_one_map_per_step(tiny_backend):
    for variant in ("dm", "asyndm"):
        recorder = RecordItemMaps()
        plain = sample(tiny_backend, variant, steps=3)
        recorded = sample(tiny_backend, variant, steps=3, callbacks=[recorder])
        assert torch.equal(plain.latents, recorded.latents)
        assert len(recorder.maps[variant]) == 3
        grid_h, grid_w = recorder.grid
        assert recorder.maps[variant][0].shape == (len(SEEDS), len(K), grid_h * grid_w)


def test_record_masks_sees_every_dynamic_update(tiny_backend):
    recorder = RecordMasks()
    result = sample(tiny_backend, "asyndm", steps=4, callbacks=[recorder])
    assert len(recorder.masks["asyndm"]) == 4
    assert torch.equal(recorder.masks["asyndm"][-1], result.assignment)
