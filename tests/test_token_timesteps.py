"""distinct_rows: each token's embedding row holds its own sample and timestep, and a sample's
distinct timesteps are embedded once (the table grows with the distinct pairs, not the tokens)."""

import torch

from asyndm.token_timesteps import distinct_rows


def test_every_token_points_at_a_row_with_its_sample_and_timestep():
    generator = torch.Generator().manual_seed(0)
    timesteps = torch.tensor([912.5, 600.0, 300.25, 17.0])[torch.randint(0, 4, (3, 50), generator=generator)]
    timesteps[2] = 600.0  # one sample with a single timestep
    text = torch.tensor([17.0, 300.25, 600.0])
    extended, rows = distinct_rows(timesteps, text)
    pairs = {(b, float(t)) for b in range(3) for t in timesteps[b].unique()}
    assert len(extended) == 3 + len(pairs)  # text rows, then each sample's distinct timesteps once
    assert torch.equal(extended[:3], text) and torch.equal(rows.sample_of_row[:3], torch.arange(3))
    assert torch.equal(extended[rows.image_rows], timesteps)
    assert torch.equal(rows.sample_of_row[rows.image_rows], torch.arange(3)[:, None].expand(3, 50))
    # a sequence with the text first (Flux's single-stream blocks): text tokens read their sample's row
    sequence = rows.sequence_rows(5 + 50)
    assert torch.equal(sequence[:, :5], torch.arange(3)[:, None].expand(3, 5))
    assert torch.equal(sequence[:, 5:], rows.image_rows)
