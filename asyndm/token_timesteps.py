"""Per-token timesteps in MMDiT transformers (SD3, Flux): every AdaLN modulation of the image tokens (METHOD.md §9).

The timestep reaches an MMDiT only through its time(-text) embedding ``temb``, one vector per sample,
which each block's AdaLN turns into shift, scale and gate vectors for the image stream, the text
stream and the final norm. Within ``TokenTimesteps.active`` a call differs from a plain one in three
places, nothing else in the model changes:

1. **One embedding pass for every distinct timestep.** The transformer is called with an *extended*
   timestep vector: the B text-stream timesteps first, then one entry per (sample, distinct timestep)
   pair. A wrapper on the embedder (``time_text_embed``) runs the model's own embedding on all rows at
   once, the model's own preprocessing included (Flux's ``× 1000``), and hands the model the first B
   rows: the text stream and everything else see exactly a plain call's ``temb``.
2. **A modulation table per AdaLN, gathered per token.** Each image-stream AdaLN applies its linear
   layer to those rows (a few rows per sample instead of one per token: §9's "embed distinct
   timesteps once and gather") and each token gathers its row, chunk by chunk when it is used.
3. **Per-token modulations where they act.** The blocks apply the AdaLN outputs as (B, D) vectors
   (``gate.unsqueeze(1) * x``), so the wrapped AdaLN returns the per-token normalised input and
   neutral (B, D) placeholders (gate 1, shift 0, scale 0), and forward hooks apply the per-token gate
   to the attention and feed-forward outputs and the per-token shift and scale after ``norm2``.
   ``1·y`` and ``y·(1 + 0) + 0`` are exact, so each token gets the plain call's arithmetic.

Text tokens that share a sequence with image tokens (Flux's single-stream blocks, text first) gather
their sample's text-stream row. Everything is restored on exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.models.normalization import (
    AdaLayerNormContinuous,
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
    SD35AdaLayerNormZeroX,
)


@dataclass
class TokenRows:
    """Where each token's modulation comes from, for one call with per-token timesteps.

    ``sample_of_row``: (B + P,) the sample each embedding row belongs to (rows 0..B-1: the text
    stream). ``image_rows``: (B, N) the embedding row of each image token. ``temb`` is filled in by the
    embedder wrapper during the call.
    """

    sample_of_row: torch.Tensor
    image_rows: torch.Tensor
    temb: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.image_rows.shape[0]

    def sequence_rows(self, length: int) -> torch.Tensor:
        """(B, length) rows of a sequence that ends with the image tokens (text first, if any)."""
        text = length - self.image_rows.shape[1]
        if text < 0:
            raise ValueError(f"a sequence of {length} tokens is shorter than the {self.image_rows.shape[1]} image tokens")
        if text == 0:
            return self.image_rows
        own = torch.arange(self.batch, device=self.image_rows.device)[:, None].expand(self.batch, text)
        return torch.cat([own, self.image_rows], dim=1)


def distinct_rows(timesteps: torch.Tensor, text_timesteps: torch.Tensor) -> tuple[torch.Tensor, TokenRows]:
    """The extended timestep vector and the token rows for a (B, N) map of model timesteps.

    Returns ``extended`` (B + P,): the text-stream timesteps, then the P distinct (sample, timestep)
    pairs of the map, sample by sample (each sample's own distinct timesteps: a sample's modulation
    also depends on its pooled text); and the ``TokenRows`` that index it. ``torch.unique`` needs P on
    the host: one small synchronisation per call (docs/mmdit.md, "Cost").
    """
    batch, tokens = timesteps.shape
    samples = torch.arange(batch, device=timesteps.device)
    pairs = torch.stack([samples.repeat_interleave(tokens).to(timesteps.dtype), timesteps.reshape(-1)], dim=1)
    distinct, inverse = torch.unique(pairs, dim=0, return_inverse=True)  # (P, 2) by sample, then timestep
    extended = torch.cat([text_timesteps.to(timesteps.dtype), distinct[:, 1]])
    sample_of_row = torch.cat([samples, distinct[:, 0].long()])
    return extended, TokenRows(sample_of_row, batch + inverse.view(batch, tokens))


class _Modulation:
    """One AdaLN's per-token modulation in one call: a (rows, chunks, D) table, gathered on demand."""

    def __init__(self, table: torch.Tensor, chunks: int, token_rows: torch.Tensor):
        self.table = table.view(table.shape[0], chunks, -1)
        self.token_rows = token_rows  # (B, L)

    def chunk(self, index: int, plus_one: bool = False) -> torch.Tensor:
        """(B, L, D) chunk ``index`` of every token's row; ``plus_one``: 1 + the chunk (a scale), added
        on the table's few rows before the gather: the same sums as the model's ``1 + scale``."""
        rows = self.token_rows
        column = self.table[:, index]
        if plus_one:
            column = 1 + column
        return column.index_select(0, rows.reshape(-1)).view(*rows.shape, -1)


class _BlockSlot:
    """The modulation of the block being run, set by its AdaLN and read by its hooks."""

    modulation: _Modulation | None = None

    def take(self) -> _Modulation:
        if self.modulation is None:
            raise RuntimeError("a per-token hook ran before its block's AdaLN")
        return self.modulation


# Chunk layouts of the AdaLN outputs (diffusers.models.normalization), and where each chunk acts.
# zero:   shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
# zero_x: the six of zero, then shift_msa2, scale_msa2, gate_msa2 (SD3.5's dual attention)
# single: shift, scale, gate (Flux's single-stream blocks; the gate acts on proj_out)
# final:  scale, shift (AdaLayerNormContinuous: the final norm)
_CHUNKS = {"zero": 6, "zero_x": 9, "single": 3, "final": 2}


def _kind(norm) -> str | None:
    if isinstance(norm, SD35AdaLayerNormZeroX):
        return "zero_x"
    if isinstance(norm, AdaLayerNormZero):
        if norm.emb is not None:
            raise NotImplementedError("AdaLayerNormZero with its own label embedding is not an MMDiT image-stream norm")
        return "zero"
    if isinstance(norm, AdaLayerNormZeroSingle):
        return "single"
    return None


def _image_norm(block):
    """The AdaLN of a block's image tokens: ``norm1`` (joint / double-stream), ``norm`` (single-stream)."""
    return block.norm1 if hasattr(block, "norm1") else getattr(block, "norm", None)


class TokenTimesteps:
    """Calls an MMDiT (``SD3Transformer2DModel``, ``FluxTransformer2DModel``) with per-token timesteps.

    The image-stream AdaLN of every block (``norm1``; ``norm`` of single-stream blocks) and the final
    ``norm_out`` become per token; the text stream (``norm1_context``) keeps the plain call's.
    """

    def __init__(self, transformer):
        self.transformer = transformer
        self.embedder = transformer.time_text_embed
        self.blocks = [*transformer.transformer_blocks, *getattr(transformer, "single_transformer_blocks", [])]
        for block in self.blocks:
            if _kind(_image_norm(block)) is None:
                raise NotImplementedError(f"{type(block).__name__}: no AdaLN-zero image norm asyndm knows")
            if getattr(block, "_chunk_size", None) is not None:
                raise NotImplementedError("feed-forward chunking is on (enable_forward_chunking): turn it off")
        if not isinstance(transformer.norm_out, AdaLayerNormContinuous):
            raise NotImplementedError(f"final norm {type(transformer.norm_out).__name__} is not AdaLayerNormContinuous")

    @contextmanager
    def active(self, rows: TokenRows):
        """Within the block, calls made with the extended timestep vector of ``rows`` are per token."""
        patched: list = []  # modules whose forward is wrapped
        handles = []
        try:
            self._wrap(self.embedder, self._embed(self.embedder, rows), patched)
            for block in self.blocks:
                handles += self._patch_block(block, rows, patched)
            self._wrap(self.transformer.norm_out, self._final(self.transformer.norm_out, rows), patched)
            yield
        finally:
            for handle in handles:
                handle.remove()
            for module in patched:
                del module.forward  # the class's forward again

    # --------------------------------------------------------------- pieces

    @staticmethod
    def _wrap(module, forward, patched: list) -> None:
        module.forward = forward
        patched.append(module)

    @staticmethod
    def _embed(embedder, rows: TokenRows):
        original = type(embedder).forward

        def forward(timestep, *per_sample, **named):
            # per-sample inputs (pooled text, Flux's guidance) repeated for every extended row
            expand = lambda x: x.index_select(0, rows.sample_of_row) if torch.is_tensor(x) else x  # noqa: E731
            temb = original(embedder, timestep, *map(expand, per_sample), **{k: expand(v) for k, v in named.items()})
            rows.temb = temb
            return temb[: rows.batch]  # the text stream's: a plain call's temb

        return forward

    def _patch_block(self, block, rows: TokenRows, patched: list) -> list:
        slot = _BlockSlot()
        norm = _image_norm(block)
        kind = _kind(norm)
        self._wrap(norm, self._adaln(norm, kind, rows, slot), patched)
        if kind == "single":
            return [block.proj_out.register_forward_hook(_gate(slot, 2))]
        handles = [
            block.attn.register_forward_hook(_gate(slot, 2)),
            block.norm2.register_forward_hook(_shift_scale(slot, shift=3, scale=4)),
            block.ff.register_forward_hook(_gate(slot, 5)),
        ]
        if kind == "zero_x":
            handles.append(block.attn2.register_forward_hook(_gate(slot, 8)))
        return handles

    @staticmethod
    def _adaln(norm, kind: str, rows: TokenRows, slot: _BlockSlot):
        chunks = _CHUNKS[kind]

        def forward(x, *args, emb=None, **kwargs):
            table = norm.linear(norm.silu(rows.temb))  # (rows, chunks·D): the distinct timesteps only
            modulation = _Modulation(table, chunks, rows.sequence_rows(x.shape[1]))
            slot.modulation = modulation
            normed = norm.norm(x)
            out = normed * modulation.chunk(1, plus_one=True) + modulation.chunk(0)
            one = x.new_ones(x.shape[0], x.shape[-1])
            zero = x.new_zeros(x.shape[0], x.shape[-1])
            if kind == "single":
                return out, one
            if kind == "zero":
                return out, one, zero, zero, one
            out2 = normed * modulation.chunk(7, plus_one=True) + modulation.chunk(6)
            return out, one, zero, zero, one, out2, one

        return forward

    @staticmethod
    def _final(norm, rows: TokenRows):
        def forward(x, conditioning_embedding):
            table = norm.linear(norm.silu(rows.temb).to(x.dtype))
            modulation = _Modulation(table, 2, rows.sequence_rows(x.shape[1]))
            return norm.norm(x) * modulation.chunk(0, plus_one=True) + modulation.chunk(1)

        return forward


def _gate(slot: _BlockSlot, chunk: int):
    """Forward hook: the module's (first) output times the per-token gate ``chunk``."""

    def hook(module, inputs, output):
        gate = slot.take().chunk(chunk)
        if isinstance(output, tuple):
            return (gate * output[0], *output[1:])
        return gate * output

    return hook


def _shift_scale(slot: _BlockSlot, shift: int, scale: int):
    """Forward hook on ``norm2``: the per-token shift and scale the block then applies as (1 + 0, + 0)."""

    def hook(module, inputs, output):
        modulation = slot.take()
        return output * modulation.chunk(scale, plus_one=True) + modulation.chunk(shift)

    return hook
