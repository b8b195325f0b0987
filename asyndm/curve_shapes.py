"""The curves' closed forms (METHOD.md §3), for plots and checks: numpy, no torch.

The sampler steps the curves one transition at a time (asyndm/curves.py); started at Y + o, those
transitions land on these closed forms (tests/test_curves.py checks it), which the report's timestep
panel draws beside the measured traces.
"""

from __future__ import annotations

import math

import numpy as np

from .settings import CURVES


def closed_form(curve: str, x, k: float, num_steps: int, num_train_timesteps: float, offset: float) -> np.ndarray:
    """The state after ``x`` steps (float64) when started at ``Y + o``.

    ``curve='linear'`` gives the background curve; the concave ones are §3's closed forms plus ``o``.
    """
    x = np.asarray(x, dtype=np.float64)
    Y, N, o = float(num_train_timesteps), float(num_steps), float(offset)
    linear = o + Y - Y * x / N
    if curve == "linear":
        return linear
    if curve == "bin":
        return o + k * (Y - Y * x**2 / N**2) + (1 - k) * (Y - Y * x / N)
    if curve == "lin":
        early = o + Y - (1 - k) * Y * x / N
        late = o + Y - (1 - k) * Y / 2 - (1 + k) * Y * (x - N / 2) / N
        return np.where(x <= N / 2, early, late)
    if curve == "exp":
        a = -k * Y / (math.e - 1)
        return a * np.exp(x / N) - (1 - k) * Y / N * x + (Y + o - a)
    raise ValueError(f"unknown curve '{curve}': choose linear or one of {', '.join(CURVES)}")
