"""The element-wise DDIM step (METHOD.md §4): every pixel moves from its own ᾱ_t to its own ᾱ_t'.

With a constant timestep map this is exactly diffusers' ``DDIMScheduler.step``; the tests check it.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def split_prediction(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_t: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from the model output, as DDIM converts each prediction type."""
    beta_t = 1 - alpha_t
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (sample - beta_t.sqrt() * eps) / alpha_t.sqrt()
    elif prediction_type == "v_prediction":
        x0 = alpha_t.sqrt() * sample - beta_t.sqrt() * model_output
        eps = alpha_t.sqrt() * model_output + beta_t.sqrt() * sample
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - alpha_t.sqrt() * x0) / beta_t.sqrt()
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
) -> torch.Tensor:
    """x_t → x_t' with per-pixel ᾱ (alpha_t, alpha_prev broadcast against ``sample``).

    x' = √ᾱ_t'·x̂0 + √(1-ᾱ_t'-σ²)·ε̂ + σ·z,  σ = η·√((1-ᾱ_t')/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_t')).
    ``renoise_output``: where a guidance rule points the direction term along another output than
    the one x̂0 comes from (CFG++), ε̂ of the direction is taken from it.
    """
    x0, eps = split_prediction(model_output, sample, alpha_t, prediction_type)
    if renoise_output is not None:
        eps = split_prediction(renoise_output, sample, alpha_t, prediction_type)[1]
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    sigma = eta * variance.clamp(min=0).sqrt()  # a step up in noise (an inversion, ᾱ_t' < ᾱ_t) has none
    # clamp: rounding can leave -1e-9 where the exact value is 0 (t' = t), which would give NaN
    prev = alpha_prev.sqrt() * x0 + (1 - alpha_prev - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError("eta > 0 needs a noise tensor")
        prev = prev + sigma * noise
    return prev
