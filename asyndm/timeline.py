"""Where a family's scheduler puts its N model calls, and the curves' Y and o (METHOD.md §3, §9)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timeline:
    """Where a family's scheduler puts its N model calls, in its own timestep space (METHOD.md §9).

    The curves start at ``num_train_timesteps + offset`` (Y + o). ``sync_states[i]`` is the state of
    the scheduler's own i-th call and ``sync_next[i]`` the state its update goes to: what ``dm``
    follows, exactly as the family's diffusers pipeline does.
    """

    num_train_timesteps: float
    offset: float
    sync_states: torch.Tensor  # (N,)
    sync_next: torch.Tensor  # (N,)

    @classmethod
    def through(cls, sync_states: torch.Tensor, sync_next: torch.Tensor) -> "Timeline":
        """§9's curves for the scheduler's own timesteps τ₀ > … > τ_{N-1}: o = τ_{N-1} and
        Y = (τ₀ - τ_{N-1})·N/(N-1), so that the linear curve from Y + o passes through every τᵢ and then
        0 for every N (evenly spaced τ: DDIM's "leading" grid, the flow-matching linspaces)."""
        steps = len(sync_states)
        if steps < 2:
            raise ValueError(f"{steps} sampling step: asyndm's curves need at least 2 (sample.steps)")
        offset = float(sync_states[-1])
        span = (float(sync_states[0]) - offset) * steps / (steps - 1)
        return cls(num_train_timesteps=span, offset=offset, sync_states=sync_states, sync_next=sync_next)
