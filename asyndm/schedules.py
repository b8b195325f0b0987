"""Schedules: which pixel follows which curve, step by step (METHOD.md §2, §3, §6).

A schedule holds every cell's state and hands the loop two maps per model call, in one call of
``states(step)``: the states of this call and the states the update goes to; after the model call,
``observe`` reads its item maps. ``dm`` follows the scheduler's own timesteps
(``SynchronousSchedule``); ``dm_concave`` and ``asyndm`` follow curves (``CurveSchedule``), the
latter with item masks that are fixed (static, or given) or recomputed after every call (dynamic).

Dynamic-mask timing is the reference's (§6): the transition t_i → t_{i+1} is computed *before*
call i, with the mask of call i-1 (the initial mask for i = 0), so the mask of call i first changes
the timesteps of call i+2.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from .timeline import Timeline
from .curves import Curves


class Schedule(Protocol):
    num_steps: int  # model calls
    uniform: bool  # every cell of every image shares one state: the plain model call serves
    needs_item_maps: bool  # it reads each call's item maps (dynamic masks)
    assignment: torch.Tensor | None  # (B, h, w) item per cell, -1 background; None without masks

    def first_states(self) -> torch.Tensor:
        """(B, h, w) states of the first model call, before the loop runs (to announce them)."""

    def states(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, h, w) states of model call ``step`` and the states its update goes to, computed from
        the masks known now (§6). Calls go ``step`` 0, 1, … in order with ``observe`` between them;
        the second map is the next call's first."""

    def sync_state(self, step: int) -> torch.Tensor:
        """τ_step, the scheduler's own timestep at call ``step`` (dm's state, the linear curve's): what
        a stream with one timestep per sample sees (the MMDiT text stream, METHOD.md §9)."""

    def observe(self, step: int, item_maps: torch.Tensor | None) -> None:
        """After call ``step``: its item maps (B, n_items, g_h*g_w) may update the masks."""


class SynchronousSchedule:
    """``dm``: the scheduler's own timesteps, as the family's diffusers pipeline uses them."""

    uniform = True
    needs_item_maps = False
    assignment = None

    def __init__(self, timeline: Timeline, map_shape: tuple[int, int, int]):
        self.timeline = timeline
        self.map_shape = map_shape  # (B, h, w)
        self.num_steps = len(timeline.sync_states)

    def first_states(self) -> torch.Tensor:
        return self.timeline.sync_states[0].expand(self.map_shape)

    def states(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.timeline.sync_states[step].expand(self.map_shape),
                self.timeline.sync_next[step].expand(self.map_shape))

    def sync_state(self, step: int) -> torch.Tensor:
        return self.timeline.sync_states[step]

    def observe(self, step: int, item_maps) -> None:
        pass


class CurveSchedule:
    """Cells on curves: item j's concave curve where the mask says j, the linear one elsewhere (§3).

    ``assignment`` None puts every cell on ``background_k``'s curve (``dm_concave``: the largest k).
    ``update_masks`` (dynamic masks) turns a call's item maps into the next assignment. ``timeline``:
    the scheduler's own timesteps, whose τᵢ ``sync_state`` gives.
    """

    def __init__(
        self,
        curves: Curves,
        timeline: Timeline,
        map_shape: tuple[int, int, int],
        device,
        item_k: list[float],
        assignment: torch.Tensor | None = None,
        background_k: float = 0.0,
        update_masks: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.curves = curves
        self.timeline = timeline
        self.num_steps = curves.num_steps
        self.item_k = [float(k) for k in item_k]
        self.assignment = assignment
        self.background_k = float(background_k)
        self.update_masks = update_masks
        self.uniform = assignment is None and update_masks is None
        self.needs_item_maps = update_masks is not None
        # the transition before the loop (r = N), with the initial mask (§3, §6)
        self._state = self._transition(curves.start(map_shape, device), curves.num_steps)
        self._next: torch.Tensor | None = None

    def _transition(self, state: torch.Tensor, steps_left: int) -> torch.Tensor:
        if self.assignment is None:
            return self.curves.concave(state, steps_left, self.background_k)
        return self.curves.transition(state, steps_left, self.assignment, self.item_k)

    def first_states(self) -> torch.Tensor:
        return self._state

    def states(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._next = self._transition(self._state, self.curves.num_steps - step - 1)
        return self._state, self._next

    def sync_state(self, step: int) -> torch.Tensor:
        return self.timeline.sync_states[step]

    def observe(self, step: int, item_maps: torch.Tensor | None) -> None:
        if self.update_masks is not None and item_maps is not None:
            self.assignment = self.update_masks(item_maps)  # M_step: first used by the next transition
        self._state = self._next
