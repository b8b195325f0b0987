"""Masks from hand-made attention maps (METHOD.md §6): threshold, priority by k, upsampling, k map."""

import pytest
import torch

from asyndm.backends import ItemTokens
from asyndm.masks import BACKGROUND, item_assignment, masks_from_attention, upsample_assignment

K = torch.tensor([0.3, 0.7])


def maps(*grids):
    """(1, n_items, g, g) from nested lists, one grid per item."""
    return torch.tensor([grids], dtype=torch.float32)


def test_threshold_is_mean_times_thr_inclusive():
    # mean 1.0: cells ≥ 1.0 are in, so the cell exactly at the mean counts (≥, not >)
    item = [[4.0, 0.0], [1.0, -1.0]]
    assert item_assignment(maps(item), K[:1], 1.0).tolist() == [[[0, -1], [0, -1]]]
    # thr 2.0: ≥ 2.0 keeps only the 4.0 cell; thr 4.0 keeps it too (equality); thr 4.01 keeps none
    assert item_assignment(maps(item), K[:1], 2.0).tolist() == [[[0, -1], [-1, -1]]]
    assert item_assignment(maps(item), K[:1], 4.0).tolist() == [[[0, -1], [-1, -1]]]
    assert item_assignment(maps(item), K[:1], 4.01).tolist() == [[[-1, -1], [-1, -1]]]


def test_uniform_map_covers_every_cell():
    assert item_assignment(maps([[0.25, 0.25], [0.25, 0.25]]), K[:1], 1.0).tolist() == [[[0, 0], [0, 0]]]


def test_overlaps_go_to_the_item_with_the_larger_k():
    # item 0 (k 0.3) on the top row and the left column; item 1 (k 0.7) on the left column and bottom row
    first = [[2.0, 2.0, 2.0], [2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]
    second = [[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 2.0, 2.0]]
    expected = [[1, 0, 0], [1, -1, -1], [1, 1, 1]]
    assert item_assignment(maps(first, second), K, 1.0).tolist() == [expected]
    # swap the k: the overlap (left column) goes to item 0 now
    swapped = [[0, 0, 0], [0, -1, -1], [0, 1, 1]]
    assert item_assignment(maps(first, second), torch.tensor([0.7, 0.3]), 1.0).tolist() == [swapped]


def test_ties_in_k_go_to_the_first_item():
    both = [[1.0, 0.0], [0.0, 0.0]]
    assert item_assignment(maps(both, both), torch.tensor([0.5, 0.5]), 1.0).tolist() == [[[0, -1], [-1, -1]]]
    three = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]]])
    assert item_assignment(three, torch.tensor([0.3, 0.5, 0.5]), 1.0).tolist() == [[[1, 1], [-1, -1]]]


def test_batch_items_are_independent():
    batch = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 1.0]]]])  # (2, 1, 2, 2)
    assert item_assignment(batch, K[:1], 1.0).tolist() == [[[0, -1], [-1, -1]], [[-1, -1], [-1, 0]]]


def test_nearest_upsampling_repeats_each_cell():
    cells = torch.tensor([[[0, -1], [1, 0]]])
    up = upsample_assignment(cells, 4, 6)  # non-square: 2×3 blocks
    assert up.tolist() == [
        [[0, 0, 0, -1, -1, -1], [0, 0, 0, -1, -1, -1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]]
    ]
    torch.testing.assert_close(
        up.float(), torch.nn.functional.interpolate(cells[:, None].float(), size=(4, 6), mode="nearest")[:, 0]
    )
    with pytest.raises(ValueError, match="does not divide"):
        upsample_assignment(cells, 5, 6)


def test_background_is_minus_one():
    assert BACKGROUND == -1


def test_masks_from_flat_captured_maps_end_to_end():
    # (B, n_items, g*g) in row-major order → threshold, priority, upsample to the latent grid
    item0 = torch.tensor([[3.0, 1.0], [0.0, 0.0]]).flatten()  # mean 1: cells (0,0), (0,1)
    item1 = torch.tensor([[0.0, 2.0], [2.0, 0.0]]).flatten()  # mean 1: cells (0,1), (1,0)
    flat = torch.stack([item0, item1])[None]
    assignment = masks_from_attention(flat, torch.tensor([0.5, 0.7]), 1.0, (2, 2), (4, 4))
    expected = torch.tensor([[0, 1], [1, -1]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(assignment[0], expected)


@pytest.mark.parametrize(
    "positions,expected",
    [([[2], [5]], 1), ([[5], [2]], 0), ([[2], [3, 4], [4]], 1), ([[7, 8], [3]], 0), ([[4]], 0)],
)
def test_initial_mask_is_the_item_with_the_largest_token_index(positions, expected):
    assert ItemTokens(positions).last_item == expected
