"""Flow matching (METHOD.md §9) against diffusers' FlowMatchEulerDiscreteScheduler: the background's linear
curve in unshifted time gives the scheduler's own sigmas (static shift, dynamic shift with the pipeline's
mu), and the element-wise Euler step with a constant map is the scheduler's step."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from asyndm.curves import Curves
from asyndm.flow import FlowShift, euler_step, flow_timeline, flux_timesteps, scheduler_timesteps

TOKENS = 1024  # 32×32 image tokens (a 512 px FLUX.1 image)


def scheduler(**config):
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **config)


def background_states(timeline, steps: int) -> torch.Tensor:
    """The linear curve's state at every model call, from Y + o, in the curves' own float32 arithmetic."""
    curves = Curves("bin", steps, timeline.num_train_timesteps, timeline.offset)
    state = curves.start((1,), "cpu")
    states = []
    for i in range(steps):
        state = curves.linear(state, steps - i)
        states.append(state)
    return torch.cat(states)


SD3_CASES = [(steps, shift) for steps in (4, 10, 28, 50) for shift in (1.0, 3.0, 6.0)]


@pytest.mark.parametrize("steps,shift", SD3_CASES)
def test_background_sigmas_equal_sd3_scheduler(steps, shift):
    sched = scheduler(shift=shift)
    timeline = flow_timeline(scheduler_timesteps(sched, steps), "cpu")
    sched.set_timesteps(steps)
    flow = FlowShift.from_scheduler(sched)
    # dm: the scheduler's own τ, bit for bit
    assert torch.equal(flow.sigmas(timeline.sync_states, TOKENS), sched.sigmas[:-1])
    assert torch.equal(flow.model_timesteps(timeline.sync_states, TOKENS), sched.timesteps)
    # the background's linear curve from Y + o (float32 states) reaches the same sigmas, then 0
    background = background_states(timeline, steps)
    torch.testing.assert_close(flow.sigmas(background, TOKENS), sched.sigmas[:-1], rtol=0, atol=2e-7)
    assert flow.sigmas(torch.zeros(1), TOKENS).item() == 0.0 == sched.sigmas[-1].item()


@pytest.mark.parametrize("steps", [4, 10, 28, 50])
@pytest.mark.parametrize("tokens", [256, 1024, 4096])
def test_background_sigmas_equal_flux_scheduler_with_the_pipelines_mu(steps, tokens):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = scheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    timeline = flow_timeline(flux_timesteps(sched, steps), "cpu")
    mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
    sched.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    flow = FlowShift.from_scheduler(sched, precision=torch.float32)  # it shifts the pipeline's float32 sigmas
    assert flow.mu(tokens) == pytest.approx(mu, abs=1e-12)
    assert torch.equal(flow.sigmas(timeline.sync_states, tokens), sched.sigmas[:-1])
    assert torch.equal(flow.model_timesteps(timeline.sync_states, tokens), sched.timesteps)
    background = background_states(timeline, steps)
    torch.testing.assert_close(flow.sigmas(background, tokens), sched.sigmas[:-1], rtol=0, atol=3e-7)


def test_timeline_offsets_follow_section_9():
    sched = scheduler(shift=3.0)
    timeline = flow_timeline(scheduler_timesteps(sched, 28), "cpu")
    assert timeline.sync_states[0].item() == 1000.0
    assert timeline.offset == pytest.approx(1000 * 3 * 0.001 / (1 + 2 * 0.001))  # σ_min·1000 = 2.994
    assert timeline.num_train_timesteps == pytest.approx((1000 - timeline.offset) * 28 / 27)
    assert timeline.sync_next[-1].item() == 0.0
    assert torch.equal(timeline.sync_next[:-1], timeline.sync_states[1:])


def test_euler_step_with_a_constant_map_is_the_schedulers_step():
    sched = scheduler(shift=3.0)
    sched.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 16, 8, 8, generator=generator)
    velocity = torch.randn(2, 16, 8, 8, generator=generator)
    for i in (0, 5, 9):
        sigma = sched.sigmas[i].expand(2, 4, 4)  # a 4×4 token grid, patch 2
        sigma_next = sched.sigmas[i + 1].expand(2, 4, 4)
        sched._step_index = i
        expected = sched.step(velocity, sched.timesteps[i], latents, return_dict=False)[0]
        assert torch.equal(euler_step(velocity, latents, sigma, sigma_next), expected)


def test_euler_step_is_per_token():
    latents = torch.zeros(1, 2, 4, 4)
    velocity = torch.ones(1, 2, 4, 4)
    sigma = torch.tensor([[[1.0, 0.5], [0.5, 0.5]]])
    sigma_next = torch.tensor([[[0.5, 0.5], [0.5, 0.0]]])
    out = euler_step(velocity, latents, sigma, sigma_next)
    assert torch.equal(out[0, 0], torch.tensor([[-0.5, -0.5, 0, 0], [-0.5, -0.5, 0, 0],
                                                [0, 0, -0.5, -0.5], [0, 0, -0.5, -0.5]]))
