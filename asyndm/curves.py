"""Timestep curves: how each pixel's real-valued timestep state moves from one step to the next.

Pure tensor functions (METHOD.md §3). A *transition* maps the current state ``s`` and the number of
steps still to go ``r`` to the next state. It depends on nothing else, so a pixel whose mask changes
mid-way simply continues from where it is (the paper's "translated curve", Proposition 1).

Two semantics:

- ``reference`` (default): exactly the reference release. The state is float32 and every formula is
  evaluated with Python-float coefficients in the reference's own operation order (METHOD.md §3,
  "Numerics"): states often land on x.5, so an algebraically equal rewrite flips roundings and
  moves pixels to other timesteps. ``lin`` clamps onto its steep line and ``exp`` translates its
  fixed-shape curve along x after a mask change.
- ``refit``: the smoother alternative, kept for comparison. The state is float64, ``lin`` takes the
  straight line to ``o`` where no two-slope curve of its k passes through the state, and ``exp``
  refits its linear coefficient instead of translating. On a pixel that never changes curve both
  give the same curve up to float rounding.

Notation: ``Y`` = num_train_timesteps, ``N`` = sampling steps, ``o`` = steps_offset, ``x`` = steps done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .settings import CURVE_SEMANTICS as SEMANTICS
from .settings import CURVES

STATE_DTYPES = {"reference": torch.float32, "refit": torch.float64}


# ------------------------------------------------------------------ reference semantics (§3 Numerics)


def linear_step(state: torch.Tensor, steps_left: int, offset: float) -> torch.Tensor:
    """One step along the straight line from ``state`` to ``offset`` in ``steps_left`` steps (§3).

    As the reference computes it: s·(1 - 1/r) + o/r with o a tensor of the state's dtype, so o/r is
    a division in that dtype (done here on the host: the same number, without a device tensor).
    """
    if steps_left == 0:
        return torch.zeros_like(state)
    precision = np.float32 if state.dtype == torch.float32 else np.float64
    return state * (1 - 1 / steps_left) + float(precision(offset) / precision(steps_left))


def _bin(state, steps_left, k, num_steps, num_train_timesteps, offset):
    # The parabola of leading coefficient a = -k·Y/N² through the state that reaches o in r steps,
    # evaluated one step on, in the reference's order: t0 is the parabola's vertex, y0 its value.
    a = -k * (num_train_timesteps / (num_steps * num_steps))
    t0 = (a * steps_left**2 - (offset - state)) / (2 * a * steps_left)
    y0 = state - a * t0**2
    return a * (1 - t0) ** 2 + y0


def _lin(state, steps_left, k, num_steps, num_train_timesteps, offset):
    # One gentle step, clamped onto the steep line that reaches o in r steps (§3): a state above
    # that line jumps down onto it.
    gentle = -(1 - k) * num_train_timesteps / num_steps
    steep = -(1 + k) * num_train_timesteps / num_steps
    return (gentle + state).clamp(max=steep + (offset - steep * steps_left))


def _exp(state, steps_left, k, num_steps, num_train_timesteps, offset):
    # y(x) = a·e^{x/N} + b·x + c with the shape (a, b) fixed, translated along x through the state
    # so that it reaches o after r more steps: E = e^{-x0/N} of the translated curve.
    lam = 1 / num_steps
    a = -k * num_train_timesteps / (math.e - 1)
    b = -(1 - k) * num_train_timesteps / num_steps
    e_shift = (state - offset + b * steps_left) / (a * (1 - math.e ** (lam * steps_left)))
    return a * (math.e**lam - 1) * e_shift + b + state


# ------------------------------------------------------------------ refit semantics (float64)


def _bin_refit(state, steps_left, k, num_steps, num_train_timesteps, offset):
    # The same parabola, simplified: the linear step plus a·(1 - r).
    a = -k * num_train_timesteps / num_steps**2
    return state * (1.0 - 1.0 / steps_left) + offset / steps_left + a * (1 - steps_left)


def _lin_refit(state, steps_left, k, num_steps, num_train_timesteps, offset):
    # Two slopes with the kink p steps ahead, where p makes the curve reach o exactly r steps ahead;
    # where no kink position can (a state above the steep line or below the gentle one), the pixel
    # takes the straight line instead.
    gentle = (1 - k) * num_train_timesteps / num_steps
    steep = (1 + k) * num_train_timesteps / num_steps
    kink = (steep * steps_left - (state - offset)) / (steep - gentle)  # steps until the kink
    feasible = (kink >= 0) & (kink <= steps_left)
    first_drop = torch.where(kink >= 1, torch.full_like(kink, gentle), gentle * kink + steep * (1 - kink))
    straight = state * (1.0 - 1.0 / steps_left) + offset / steps_left
    return torch.where(feasible, state - first_drop, straight)


def _exp_refit(state, steps_left, k, num_steps, num_train_timesteps, offset):
    # a fixed; b and c refitted through (x0, s) and (N, o), x0 = N - r the steps done.
    a = -k * num_train_timesteps / (math.e - 1)
    x0 = num_steps - steps_left
    e_now, e_next = math.exp(x0 / num_steps), math.exp((x0 + 1) / num_steps)
    b = -((state - offset) + a * (math.e - e_now)) / steps_left
    return state + a * (e_next - e_now) + b


_CONCAVE = {
    "reference": {"bin": _bin, "lin": _lin, "exp": _exp},
    "refit": {"bin": _bin_refit, "lin": _lin_refit, "exp": _exp_refit},
}


def concave_step(
    curve: str,
    state: torch.Tensor,
    steps_left: int,
    k: float,
    num_steps: int,
    num_train_timesteps: float,
    offset: float,
    semantics: str = "reference",
) -> torch.Tensor:
    """One step along the concave ``curve`` with the scalar weight ``k`` (one item's curve, §3).

    ``k`` is a Python float: each item's curve is evaluated with its own scalar k, as the reference
    does, so no per-pixel k tensor (and no host-device sync) is needed. k = 0 is the linear curve.
    """
    if curve not in CURVES:
        raise ValueError(f"unknown curve '{curve}': choose one of {', '.join(CURVES)} (curve=bin)")
    if semantics not in SEMANTICS:
        raise ValueError(f"unknown curve semantics '{semantics}': choose one of {', '.join(SEMANTICS)}")
    if steps_left == 0:
        return torch.zeros_like(state)
    if k == 0:
        return linear_step(state, steps_left, offset)
    return _CONCAVE[semantics][curve](state, steps_left, float(k), num_steps, num_train_timesteps, offset)


@dataclass(frozen=True)
class Curves:
    """The curve family of one run: the background's line and the items' concave ``curve`` (§3, §9).

    ``num_train_timesteps`` (Y) and ``offset`` (o) are in the scheduler's own timestep space; the
    backend decides them (SD: ``num_train_timesteps`` and ``steps_offset``, the reference's).
    """

    curve: str
    num_steps: int
    num_train_timesteps: float
    offset: float
    semantics: str = "reference"

    def __post_init__(self):
        if self.curve not in CURVES:
            raise ValueError(f"unknown curve '{self.curve}': choose one of {', '.join(CURVES)} (curve=bin)")
        if self.semantics not in SEMANTICS:
            raise ValueError(f"unknown curve semantics '{self.semantics}': choose one of {', '.join(SEMANTICS)}")

    @property
    def state_dtype(self) -> torch.dtype:
        return STATE_DTYPES[self.semantics]

    def start(self, shape: tuple[int, ...], device) -> torch.Tensor:
        """Every pixel's state before the first transition: Y + o (1001 for SD)."""
        return torch.full(shape, self.num_train_timesteps + self.offset, dtype=self.state_dtype, device=device)

    def linear(self, state: torch.Tensor, steps_left: int) -> torch.Tensor:
        return linear_step(state, steps_left, self.offset)

    def concave(self, state: torch.Tensor, steps_left: int, k: float) -> torch.Tensor:
        if k == 0:
            return self.linear(state, steps_left)
        return concave_step(
            self.curve, state, steps_left, k, self.num_steps, self.num_train_timesteps, self.offset, self.semantics
        )

    def transition(
        self, state: torch.Tensor, steps_left: int, assignment: torch.Tensor | None, item_k: list[float]
    ) -> torch.Tensor:
        """Next state per pixel: item j's concave curve where ``assignment`` is j, linear where -1.

        ``assignment`` None means every pixel is background. Combined by selection, which equals the
        reference's sum of mask-weighted curves (every curve is finite, the masks are 0/1).
        """
        nxt = self.linear(state, steps_left)
        if assignment is None:
            return nxt
        for item, k in enumerate(item_k):
            nxt = torch.where(assignment == item, self.concave(state, steps_left, k), nxt)
        return nxt


def timesteps_from_state(state: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Integer timesteps the model and the noise schedule see: round() (half to even), clamped (§3)."""
    return torch.round(state).clamp_(0, num_train_timesteps - 1).long()
