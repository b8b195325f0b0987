"""Step callbacks: observers of the sampling loop, in the style of diffusers' ``callback_on_step_end``.

A callback is called after every update with a ``StepInfo`` and returns nothing the loop depends
on. One that reads attention sets ``needs_item_maps = True``, and the loop then captures the item
maps of every call (capturing never changes the model's output). Recording timestep maps, item
maps or masks for analyses is a callback, never a flag of the loop.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class StepInfo:
    """What one step of one variant did."""

    variant: str
    step: int
    latents: torch.Tensor  # (B, C, h, w) after the update
    states: torch.Tensor  # (B, h, w) curve states of this model call
    next_states: torch.Tensor  # (B, h, w) states the update went to
    item_maps: torch.Tensor | None  # (B, n_items, g_h*g_w) of this call, where captured
    assignment: torch.Tensor | None  # (B, h, w) item per cell after this call, -1 background
    grid: tuple[int, int] | None  # (g_h, g_w) of the item maps
    backend: object

    def timesteps(self) -> torch.Tensor:
        """(B, h, w) what the model saw in this call (SD: integer timesteps)."""
        return self.backend.model_timesteps(self.states)


class ProgressBar:
    """A progress bar over one variant's model calls (``progress=true``)."""

    needs_item_maps = False

    def __init__(self, variant: str, num_steps: int):
        self.bar = tqdm(total=num_steps, desc=variant, leave=False)

    def __call__(self, info: StepInfo) -> None:
        self.bar.update(1)
        if self.bar.n >= self.bar.total:
            self.bar.close()


class RecordTimesteps:
    """``maps[variant]``: the model's timestep map of every call, (B, h, w) each."""

    needs_item_maps = False

    def __init__(self):
        self.maps: dict[str, list[torch.Tensor]] = defaultdict(list)

    def __call__(self, info: StepInfo) -> None:
        self.maps[info.variant].append(info.timesteps().clone())


class RecordItemMaps:
    """``maps[variant]``: the captured item maps of every call, (B, n_items, g_h*g_w) each."""

    needs_item_maps = True

    def __init__(self):
        self.maps: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.grid: tuple[int, int] | None = None

    def __call__(self, info: StepInfo) -> None:
        self.maps[info.variant].append(info.item_maps.clone())
        self.grid = info.grid


class RecordMasks:
    """``masks[variant]``: the item assignment after every call, (B, h, w) each (None without masks)."""

    needs_item_maps = False

    def __init__(self):
        self.masks: dict[str, list[torch.Tensor | None]] = defaultdict(list)

    def __call__(self, info: StepInfo) -> None:
        self.masks[info.variant].append(None if info.assignment is None else info.assignment.clone())


class MeanItemMaps:
    """The item maps averaged over every call of one pass: what static masks are made from (§6).

    Stacked, then averaged, as the reference averages them (the same float sums).
    """

    needs_item_maps = True

    def __init__(self):
        self._maps: list[torch.Tensor] = []
        self.grid: tuple[int, int] | None = None

    def __call__(self, info: StepInfo) -> None:
        self._maps.append(info.item_maps.clone())
        self.grid = info.grid

    def mean(self) -> torch.Tensor:
        if not self._maps:
            raise RuntimeError("no item maps were captured")
        return torch.stack(self._maps).mean(dim=0)


class TimestepTrace:
    """Per step, each image's mean model timestep over its item pixels and over the rest.

    Pixels are classed by the variant's final mask (where it has one; otherwise every pixel is
    background), so the trace shows how the objects' and the background's timesteps moved: what
    ``timesteps.csv`` of a run folder holds and the report plots beside the theoretical curves.
    """

    needs_item_maps = False

    def __init__(self):
        self._maps: dict[str, list[torch.Tensor]] = defaultdict(list)

    def __call__(self, info: StepInfo) -> None:
        self._maps[info.variant].append(info.timesteps().float().cpu())

    def rows(self, variant: str, final_masks: torch.Tensor | None) -> list[dict]:
        """One row per (image position in the batch, step): item_mean (NaN without item pixels),
        background_mean (NaN without background pixels)."""
        rows = []
        for step, maps in enumerate(self._maps[variant]):  # (B, h, w)
            items = (final_masks.cpu() >= 0) if final_masks is not None else torch.zeros_like(maps, dtype=torch.bool)
            for position in range(len(maps)):
                inside, outside = maps[position][items[position]], maps[position][~items[position]]
                rows.append({"position": position, "step": step,
                             "item_mean": float(inside.mean()) if inside.numel() else float("nan"),
                             "background_mean": float(outside.mean()) if outside.numel() else float("nan")})
        return rows
