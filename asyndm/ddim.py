"""The element-wise DDIM step (METHOD.md §4): every pixel moves from its own ᾱ_t to its own ᾱ_t'.

With a constant timestep map this is exactly diffusers' ``DDIMScheduler.step``; the tests check it.

Two arithmetics (METHOD.md §9, "Arithmetic of the update step"), the same formula in the same
operation order, differing only in where products are rounded:

- ``release`` (SD 1.x/2.x): the reference release's. Its coefficients are full per-pixel float32
  tensors, so the step runs in float32 whatever the model's dtype; the caller passes float32 inputs.
- ``scheduler`` (SDXL): ``DDIMScheduler.step``'s. Its coefficients are 0-dim float32 tensors, which
  do not promote a half-precision model output: ``coefficient * x`` rounds the coefficient to x's
  dtype first and keeps the product in that dtype, ``x / coefficient`` divides in float32 and rounds
  once. ``_Arithmetic`` does exactly that with per-pixel coefficients, so a constant map gives the
  scheduler's result bit for bit in fp16 and bf16 too (tests/test_ddim.py). In fp32 the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
ARITHMETICS = ("release", "scheduler")


@dataclass(frozen=True)
class _Arithmetic:
    """How a (broadcast) float32 coefficient multiplies and divides a tensor of the model's dtype."""

    times: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # coefficient · x
    over: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # x / coefficient


_RELEASE = _Arithmetic(times=lambda c, x: c * x, over=lambda x, c: x / c)
_SCHEDULER = _Arithmetic(
    times=lambda c, x: c.to(x.dtype) * x,  # a 0-dim float32 first operand is cast to x's dtype
    over=lambda x, c: (x.float() / c).to(x.dtype),  # a 0-dim divisor keeps float32: one rounding
)
_ARITHMETIC = {"release": _RELEASE, "scheduler": _SCHEDULER}


def split_prediction(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_t: torch.Tensor, prediction_type: str,
    arithmetic: str = "release",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from the model output, as DDIM converts each prediction type (its operation order)."""
    a = _ARITHMETIC[arithmetic]
    beta_t = 1 - alpha_t
    if prediction_type == "epsilon":
        eps = model_output
        x0 = a.over(sample - a.times(beta_t**0.5, eps), alpha_t**0.5)
    elif prediction_type == "v_prediction":
        x0 = a.times(alpha_t**0.5, sample) - a.times(beta_t**0.5, model_output)
        eps = a.times(alpha_t**0.5, model_output) + a.times(beta_t**0.5, sample)
    elif prediction_type == "sample":
        x0 = model_output
        eps = a.over(sample - a.times(alpha_t**0.5, x0), beta_t**0.5)
    else:
        raise ValueError(
            f"unknown prediction_type '{prediction_type}' in the scheduler config: "
            f"expected one of {', '.join(PREDICTION_TYPES)}"
        )
    return x0, eps


def ddim_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_t: torch.Tensor,
    alpha_prev: torch.Tensor,
    eta: float,
    noise: torch.Tensor | None,
    prediction_type: str = "epsilon",
    renoise_output: torch.Tensor | None = None,
    arithmetic: str = "release",
) -> torch.Tensor:
    """x_t → x_t' with per-pixel ᾱ (float32 alpha_t, alpha_prev broadcast against ``sample``).

    x' = √ᾱ_t'·x̂0 + √(1-ᾱ_t'-σ²)·ε̂ + σ·z,  σ = η·√((1-ᾱ_t')/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_t')).
    ``renoise_output``: where a guidance rule points the direction term along another output than
    the one x̂0 comes from (CFG++), ε̂ of the direction is taken from it. ``arithmetic``: where the
    products are rounded (module docstring); the result has the dtype of ``model_output``.
    """
    a = _ARITHMETIC[arithmetic]
    x0, eps = split_prediction(model_output, sample, alpha_t, prediction_type, arithmetic)
    if renoise_output is not None:
        eps = split_prediction(renoise_output, sample, alpha_t, prediction_type, arithmetic)[1]
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    sigma = eta * variance.clamp(min=0) ** 0.5  # a step up in noise (an inversion, ᾱ_t' < ᾱ_t) has none
    # clamp: rounding can leave -1e-9 where the exact value is 0 (t' = t), which would give NaN
    direction = a.times((1 - alpha_prev - sigma**2).clamp(min=0) ** 0.5, eps)
    prev = a.times(alpha_prev**0.5, x0) + direction
    if eta > 0:
        if noise is None:
            raise ValueError("eta > 0 needs a noise tensor")
        prev = prev + a.times(sigma, noise)
    return prev
