"""Distinct timesteps per sample: each token's embedding row holds its own sample and timestep, a
sample's distinct timesteps are embedded once (the table grows with the distinct pairs, not the
tokens), and a batched pass of several conditionings repeats the layout."""

import torch

from asyndm.token_timesteps import DistinctTimesteps, TokenRows


def one_row_per_token(distinct: DistinctTimesteps, text_timesteps: torch.Tensor, repeats: int = 1):
    """The full-cost layout, for comparisons: every token its own embedding row (a stand-in for
    ``DistinctTimesteps.rows``)."""
    timesteps = distinct.timesteps.repeat(repeats, 1)
    batch, tokens = timesteps.shape
    samples = torch.arange(batch, device=timesteps.device)
    extended = torch.cat([text_timesteps, timesteps.reshape(-1)])
    rows = TokenRows(torch.cat([samples, samples.repeat_interleave(tokens)]),
                     batch + torch.arange(batch * tokens, device=timesteps.device).view(batch, tokens))
    return extended, rows


def _map(seed=0):
    generator = torch.Generator().manual_seed(seed)
    timesteps = torch.tensor([912.5, 600.0, 300.25, 17.0])[torch.randint(0, 4, (3, 50), generator=generator)]
    timesteps[2] = 600.0  # one sample with a single timestep
    return timesteps


def test_every_token_points_at_a_row_with_its_sample_and_timestep():
    timesteps = _map()
    text = torch.tensor([17.0, 300.25, 600.0])
    extended, rows = DistinctTimesteps(timesteps).rows(text)
    pairs = {(b, float(t)) for b in range(3) for t in timesteps[b].unique()}
    assert len(extended) == 3 + len(pairs)  # text rows, then each sample's distinct timesteps once
    assert torch.equal(extended[:3], text) and torch.equal(rows.sample_of_row[:3], torch.arange(3))
    assert torch.equal(extended[rows.image_rows], timesteps)
    assert torch.equal(rows.sample_of_row[rows.image_rows], torch.arange(3)[:, None].expand(3, 50))
    # a sequence with the text first (Flux's single-stream blocks): text tokens read their sample's row
    sequence = rows.sequence_rows(5 + 50)
    assert torch.equal(sequence[:, :5], torch.arange(3)[:, None].expand(3, 5))
    assert torch.equal(sequence[:, 5:], rows.image_rows)


def test_the_layout_is_torch_unique_of_the_sample_timestep_pairs_and_repeats_for_batched_passes():
    """Sample by sample, ascending: what ``torch.unique`` of the (row, timestep) pairs of the map
    repeated for [negative; positive] gives, so the sort-based form changes no result."""
    timesteps = _map(1)
    doubled = timesteps.repeat(2, 1)
    text = torch.arange(6.0)
    rows_index = torch.arange(6).repeat_interleave(50)
    pairs = torch.stack([rows_index.to(doubled.dtype), doubled.flatten()], dim=1)
    unique, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    extended, rows = DistinctTimesteps(timesteps).rows(text, repeats=2)
    assert torch.equal(extended, torch.cat([text, unique[:, 1]]))
    assert torch.equal(rows.sample_of_row, torch.cat([torch.arange(6), unique[:, 0].long()]))
    assert torch.equal(rows.image_rows, 6 + inverse.view(6, 50))


def test_counts_per_sample():
    distinct = DistinctTimesteps(_map())
    assert distinct.counts == [len(row.unique()) for row in _map()]


def test_a_token_vector_answers_the_blocks_broadcasts_and_refuses_anything_else():
    import pytest

    from asyndm.token_timesteps import TokenVector

    column = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # 3 table rows, D = 2
    rows = torch.tensor([[0, 2, 2], [1, 1, 0]])  # (B, L) = (2, 3)
    vector, y = TokenVector(column, rows), torch.full((2, 3, 2), 2.0)
    per_token = column[rows]
    assert torch.equal(vector.unsqueeze(1) * y, per_token * y)
    assert torch.equal(y * (1 + vector[:, None]) + vector[:, None], y * (1 + per_token) + per_token)
    for misuse in (lambda: vector.unsqueeze(0), lambda: vector[0], lambda: vector.dtype):
        with pytest.raises(NotImplementedError):
            misuse()
