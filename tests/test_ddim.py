"""The element-wise DDIM step (METHOD.md §4) against diffusers' own ``DDIMScheduler.step``."""

import pytest
import torch

from asyndm.ddim import ddim_step, split_prediction
from asyndm.offline.sd import sd_ddim_scheduler

SHAPE = (2, 4, 8, 8)


def sd_scheduler(prediction_type, num_steps):
    scheduler = sd_ddim_scheduler(prediction_type)
    scheduler.set_timesteps(num_steps)
    return scheduler


def alpha_at(scheduler, t):
    return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod


def tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g) for _ in range(3)]  # float32, as the sampler steps


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("step_index", [0, 17, 48, 49])  # 49: t = 1, prev = -19 → final_alpha_cumprod
def test_constant_map_equals_diffusers_ddim_step(prediction_type, eta, step_index):
    scheduler = sd_scheduler(prediction_type, 50)
    t = int(scheduler.timesteps[step_index])
    prev = t - 1000 // 50
    model_output, sample, noise = tensors(step_index)
    reference = scheduler.step(model_output, t, sample, eta=eta, variance_noise=noise).prev_sample

    alpha_t = alpha_at(scheduler, t).expand(SHAPE[0], 1, *SHAPE[2:])  # (B, 1, h, w): a constant map
    alpha_prev = torch.as_tensor(alpha_at(scheduler, prev)).expand(SHAPE[0], 1, *SHAPE[2:])
    ours = ddim_step(model_output, sample, alpha_t, alpha_prev, eta, noise, prediction_type)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_last_step_uses_final_alpha_cumprod():
    # The SD configs keep set_alpha_to_one=False: ᾱ after the last step is alphas_cumprod[0], not 1.
    scheduler = sd_scheduler("epsilon", 50)
    assert float(scheduler.final_alpha_cumprod) == float(scheduler.alphas_cumprod[0]) < 1.0
    model_output, sample, _ = tensors(3)
    a_t, a_prev = scheduler.alphas_cumprod[1], scheduler.final_alpha_cumprod
    x0 = (sample - (1 - a_t).sqrt() * model_output) / a_t.sqrt()
    expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * model_output  # eta = 0: hand-written DDIM
    torch.testing.assert_close(ddim_step(model_output, sample, a_t, a_prev, 0.0, None), expected)


def test_per_pixel_step_equals_diffusers_per_region():
    """Left half t=981→961 (N=50), right half t=501→401 (N=10): each half is diffusers' own step."""
    fine, coarse = sd_scheduler("epsilon", 50), sd_scheduler("epsilon", 10)
    model_output, sample, noise = tensors(7)
    t = torch.full(SHAPE[:1] + SHAPE[2:], 981)
    t[..., 4:] = 501
    t_prev = torch.where(t == 981, 961, 401)
    alphas = fine.alphas_cumprod
    ours = ddim_step(model_output, sample, alphas[t][:, None], alphas[t_prev][:, None], 1.0, noise)
    left = fine.step(model_output, 981, sample, eta=1.0, variance_noise=noise).prev_sample
    right = coarse.step(model_output, 501, sample, eta=1.0, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours[..., :4], left[..., :4], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[..., 4:], right[..., 4:], rtol=1e-5, atol=1e-6)


def test_same_timestep_before_and_after_is_the_identity_without_nan():
    # A pixel that does not move (t' = t, possible after rounding) keeps its sample: σ = 0, no NaN.
    scheduler = sd_scheduler("epsilon", 50)
    model_output, sample, noise = tensors(11)
    a = scheduler.alphas_cumprod[500]
    out = ddim_step(model_output, sample, a, a, 1.0, noise)
    assert not out.isnan().any()
    torch.testing.assert_close(out, sample, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_split_prediction_round_trips(prediction_type):
    # Build x_t from known (x0, ε) and the model output each parameterisation would predict.
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(SHAPE, generator=g, dtype=torch.float64), torch.randn(SHAPE, generator=g, dtype=torch.float64)
    a = torch.tensor(0.3, dtype=torch.float64)
    sample = a.sqrt() * x0 + (1 - a).sqrt() * eps
    output = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[prediction_type]
    got_x0, got_eps = split_prediction(output, sample, a, prediction_type)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)


def test_unknown_prediction_type_and_missing_noise_raise():
    model_output, sample, _ = tensors(1)
    a = torch.tensor(0.5)
    with pytest.raises(ValueError, match="unknown prediction_type 'flow'"):
        split_prediction(model_output, sample, a, "flow")
    with pytest.raises(ValueError, match="noise"):
        ddim_step(model_output, sample, a, torch.tensor(0.6), 1.0, None)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_scheduler_arithmetic_equals_diffusers_bit_for_bit_in_every_precision(dtype, prediction_type, eta):
    """SDXL's step (METHOD.md §9): a constant float32 map in the scheduler's arithmetic gives
    ``DDIMScheduler.step``'s result exactly, in half precision too (30 steps: t = 925 → 892)."""
    scheduler = sd_scheduler(prediction_type, 30)
    t = int(scheduler.timesteps[1])
    model_output, sample, noise = (x.to(dtype) for x in tensors(5))
    expected = scheduler.step(model_output, t, sample, eta=eta, variance_noise=noise).prev_sample
    alpha_t = alpha_at(scheduler, t).expand(SHAPE[0], 1, *SHAPE[2:])
    alpha_prev = alpha_at(scheduler, t - 1000 // 30).expand(SHAPE[0], 1, *SHAPE[2:])
    ours = ddim_step(model_output, sample, alpha_t, alpha_prev, eta, noise, prediction_type, arithmetic="scheduler")
    assert ours.dtype == expected.dtype == dtype
    assert torch.equal(ours, expected)
    if dtype != torch.float32:  # the release's float32 step is the same formula with other roundings
        release = ddim_step(model_output.float(), sample.float(), alpha_t, alpha_prev, eta, noise.float(),
                            prediction_type).to(dtype)
        assert not torch.equal(release, expected)
