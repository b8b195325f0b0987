"""Timestep curves: how each pixel's real-valued timestep state moves from one step to the next.

Pure tensor functions (METHOD.md §3). A *transition* maps the current state ``s`` and the number of
steps still to go ``r`` to the next state. It depends on nothing else, so a pixel whose mask changes
mid-way simply continues from where it is (the paper's "translated curve", Proposition 1). Every
concave curve is a family member picked anew at each step: it passes through the current state and
reaches ``offset`` after ``r`` more steps. Started at ``Y + offset`` it traces the closed forms below.

Notation: ``Y`` = num_train_timesteps, ``N`` = sampling steps, ``o`` = steps_offset, ``x`` = steps done.
"""

from __future__ import annotations

import math

import torch

CURVES = ("bin", "lin", "exp")


def linear_step(state: torch.Tensor, steps_left: int, offset: float) -> torch.Tensor:
    """One step along the straight line from ``state`` to ``offset`` in ``steps_left`` steps (§3)."""
    if steps_left == 0:
        return torch.zeros_like(state)
    return state * (1.0 - 1.0 / steps_left) + offset / steps_left


def _concave_bin(state, steps_left, k, num_steps, num_train_timesteps, offset):
    # Parabola with leading coefficient a = -k·Y/N² through (0, s) and (r, o), evaluated at 1:
    # p(1) = s + a + b with b = (o - s - a·r²)/r, i.e. the linear step plus a·(1 - r).
    a = -k * num_train_timesteps / num_steps**2
    return linear_step(state, steps_left, offset) + a * (1 - steps_left)


def _concave_lin(state, steps_left, k, num_steps, num_train_timesteps, offset):
    # Two slopes, gentle (1-k)·Y/N then steep (1+k)·Y/N; the kink sits p steps ahead, where p makes
    # the curve reach o exactly r steps ahead. Where no kink position can (a state far off every
    # curve of this k), the pixel takes the straight line instead.
    gentle = (1 - k) * num_train_timesteps / num_steps
    steep = (1 + k) * num_train_timesteps / num_steps
    drop_to_go = state - offset
    slope_gap = torch.where(k > 0, steep - gentle, torch.ones_like(steep))
    kink = (steep * steps_left - drop_to_go) / slope_gap  # steps until the kink
    feasible = (k > 0) & (kink >= 0) & (kink <= steps_left)
    first_drop = torch.where(kink >= 1, gentle, gentle * kink + steep * (1 - kink))
    return torch.where(feasible, state - first_drop, linear_step(state, steps_left, offset))


def _concave_exp(state, steps_left, k, num_steps, num_train_timesteps, offset):
    # y(x) = a·e^{x/N} + b·x + c with a = -k·Y/(e-1) fixed; b and c through (x0, s) and (N, o),
    # where x0 = N - r is the number of steps done. Evaluated at x0 + 1.
    a = -k * num_train_timesteps / (math.e - 1)
    x0 = num_steps - steps_left
    e_now, e_next = math.exp(x0 / num_steps), math.exp((x0 + 1) / num_steps)
    b = -((state - offset) + a * (math.e - e_now)) / steps_left
    return state + a * (e_next - e_now) + b


_CONCAVE = {"bin": _concave_bin, "lin": _concave_lin, "exp": _concave_exp}


def concave_step(
    curve: str,
    state: torch.Tensor,
    steps_left: int,
    k: torch.Tensor | float,
    num_steps: int,
    num_train_timesteps: int,
    offset: float,
) -> torch.Tensor:
    """One step along the concave ``curve`` with weight ``k`` (per pixel or scalar); k = 0 is linear."""
    if curve not in _CONCAVE:
        raise ValueError(f"unknown curve '{curve}': choose one of {', '.join(CURVES)} (curve=bin)")
    if steps_left == 0:
        return torch.zeros_like(state)
    k = torch.as_tensor(k, dtype=state.dtype, device=state.device).expand_as(state)
    nxt = _CONCAVE[curve](state, steps_left, k, num_steps, num_train_timesteps, offset)
    return torch.where(k > 0, nxt, linear_step(state, steps_left, offset))


def closed_form(
    curve: str, x: torch.Tensor, k: float, num_steps: int, num_train_timesteps: int, offset: float
) -> torch.Tensor:
    """The state after ``x`` steps when started at ``Y + o`` (for tests and plots).

    ``curve='linear'`` gives the background curve; the concave ones are §3's closed forms plus ``o``.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    Y, N, o = float(num_train_timesteps), float(num_steps), float(offset)
    linear = o + Y - Y * x / N
    if curve == "linear":
        return linear
    if curve == "bin":
        return o + k * (Y - Y * x**2 / N**2) + (1 - k) * (Y - Y * x / N)
    if curve == "lin":
        early = o + Y - (1 - k) * Y * x / N
        late = o + Y - (1 - k) * Y / 2 - (1 + k) * Y * (x - N / 2) / N
        return torch.where(x <= N / 2, early, late)
    if curve == "exp":
        a = -k * Y / (math.e - 1)
        return a * torch.exp(x / N) - (1 - k) * Y / N * x + (Y + o - a)
    raise ValueError(f"unknown curve '{curve}': choose linear or one of {', '.join(CURVES)}")


def timesteps_from_state(state: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Integer timesteps the model and the noise schedule see: round() (half to even), clamped (§3)."""
    return torch.round(state).clamp_(0, num_train_timesteps - 1).long()
