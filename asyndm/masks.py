"""Item masks from attention maps (METHOD.md §6): binarise, resolve overlaps by k, upsample.

Pure tensor functions. A mask is an item index per latent pixel (-1 = background, which follows
the linear curve); the schedule gives each item's pixels that item's concave curve.
"""

from __future__ import annotations

import torch

BACKGROUND = -1


def item_assignment(item_maps: torch.Tensor, item_k: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, n_items, g, g) attention maps → (B, g, g) item index per cell, -1 where no item.

    Each map is binarised at ``threshold`` × its spatial mean (≥). Where masks overlap, the cell goes
    to the item with the largest k (ties to the first item); the others drop it.
    """
    mean = item_maps.flatten(2).mean(dim=2)[..., None, None]
    return prioritise(item_maps >= threshold * mean, item_k)


def prioritise(binary: torch.Tensor, item_k: torch.Tensor) -> torch.Tensor:
    """(B, n_items, ...) binary masks → (B, ...) item index per cell: where masks overlap, the item with
    the largest k (ties to the first item); -1 where no mask covers the cell."""
    shape = (1, -1) + (1,) * (binary.dim() - 2)
    weighted = binary.to(item_k.dtype) * item_k.view(shape)
    best_value, best_item = weighted.max(dim=1)  # max returns the first maximal index on ties
    return torch.where(best_value > 0, best_item, torch.full_like(best_item, BACKGROUND))


def frame_assignment(item_maps: torch.Tensor, item_k: torch.Tensor, threshold: float, frames: int,
                     union: bool = False) -> torch.Tensor:
    """(B, n_items, F·h, w) maps on a video's token grid (frames stacked top to bottom) → (B, F·h, w).

    Each frame's map is binarised at ``threshold`` × that frame's mean, so an item is found in every
    frame whatever its size elsewhere; ``union``: an item's mask is the union of its frames' masks,
    the same in every frame. Overlaps are then resolved by k as for images.
    """
    batch, items, rows, width = item_maps.shape
    if rows % frames:
        raise ValueError(f"a {rows}-row token grid is not {frames} frames high")
    maps = item_maps.reshape(batch, items, frames, rows // frames, width)
    binary = maps >= threshold * maps.mean(dim=(3, 4), keepdim=True)
    if union:
        binary = binary.any(dim=2, keepdim=True).expand_as(binary)
    return prioritise(binary, item_k).reshape(batch, rows, width)


def upsample_assignment(assignment: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest-neighbour upsampling of a (B, g, g) assignment to the latent grid (B, height, width)."""
    grid_h, grid_w = assignment.shape[1:]
    if height % grid_h or width % grid_w:
        raise ValueError(f"mask grid {grid_h}x{grid_w} does not divide the latent grid {height}x{width}")
    return assignment.repeat_interleave(height // grid_h, dim=1).repeat_interleave(width // grid_w, dim=2)


def masks_from_attention(
    item_maps: torch.Tensor, item_k: torch.Tensor, threshold: float, grid: tuple[int, int], latent: tuple[int, int]
) -> torch.Tensor:
    """(B, n_items, grid_h*grid_w) captured maps → (B, latent_h, latent_w) item assignment."""
    batch, n_items, _ = item_maps.shape
    cells = item_assignment(item_maps.view(batch, n_items, *grid), item_k, threshold)
    return upsample_assignment(cells, *latent)
