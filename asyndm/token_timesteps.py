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
3. **Per-token modulations where they act.** The wrapped AdaLN returns the per-token normalised
   input itself, and in place of each (B, D) gate, shift and scale vector a ``TokenVector``: the
   blocks only ever broadcast those over the tokens (``gate.unsqueeze(1) * y``,
   ``y * (1 + scale[:, None]) + shift[:, None]``), and a ``TokenVector`` answers exactly those
   expressions with the (B, L, D) per-token tensor, so the block's own multiply and add apply it:
   each token gets the plain call's arithmetic, with no extra pass over the tokens but the gathers.
   Any other use raises (a diffusers version that uses them otherwise is refused, not mis-sampled).

Text tokens that share a sequence with image tokens (Flux's single-stream blocks, text first) gather
their sample's text-stream row. Everything is restored on exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

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
    _sequences: dict = field(default_factory=dict, repr=False)  # length → rows, made once per call

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
        if length not in self._sequences:
            own = torch.arange(self.batch, device=self.image_rows.device)[:, None].expand(self.batch, text)
            self._sequences[length] = torch.cat([own, self.image_rows], dim=1)
        return self._sequences[length]


class DistinctTimesteps:
    """Each sample's distinct timesteps in a (B, N) map, found on the device without waiting for it.

    Sorting each row and ranking where its value changes gives every token the index of its timestep
    among its sample's distinct ones (ascending). Only the B counts must reach the host, to size the
    embedding table; they travel in a non-blocking copy started here. The sampling loop names each
    call's states one call ahead (``Backend.announce``), so by the time the call reads the counts the
    copy has finished long ago: the device never waits for the host (docs/mmdit.md, "Cost").
    """

    def __init__(self, timesteps: torch.Tensor):
        ordered, order = timesteps.sort(dim=1)
        changes = torch.ones_like(ordered, dtype=torch.bool)
        changes[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        ordered_rank = changes.cumsum(dim=1) - 1  # (B, N) index of each sorted token's distinct value
        counts = ordered_rank[:, -1] + 1
        self.timesteps = timesteps
        self._ordered, self._ordered_rank = ordered, ordered_rank
        self._rank = torch.empty_like(ordered_rank).scatter_(1, order, ordered_rank)  # in token order
        self._offsets = counts.cumsum(0) - counts  # each sample's first row in the table
        self._ready = None
        if counts.is_cuda:  # a pinned buffer and an event: the copy runs behind the work already queued
            self._counts = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
            self._counts.copy_(counts, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._counts = counts

    @property
    def counts(self) -> list[int]:
        """Distinct timesteps per sample, on the host."""
        if self._ready is not None and not self._ready.query():
            self._ready.synchronize()  # only when read right after the map was made (an unannounced call)
        return self._counts.tolist()

    def rows(self, text_timesteps: torch.Tensor, repeats: int = 1) -> tuple[torch.Tensor, "TokenRows"]:
        """The extended timestep vector and the token rows of a call on ``repeats`` copies of the map
        (a batched pass of several conditionings, [negative; positive]).

        ``extended`` (R + P,), R = repeats·B rows: the text-stream timesteps (R,), then for each row its
        sample's distinct timesteps, ascending; the ``TokenRows`` index it.
        """
        batch, tokens = self.timesteps.shape
        total = sum(self.counts)
        device = self.timesteps.device
        table_index = (self._offsets[:, None] + self._ordered_rank).flatten()
        values = self._ordered.new_empty(total).scatter_(0, table_index, self._ordered.flatten())
        samples = torch.arange(batch, device=device)
        sample_rows = samples.new_empty(total).scatter_(0, table_index, samples.repeat_interleave(tokens))
        copies = torch.arange(repeats, device=device)
        rows = repeats * batch
        extended = torch.cat([text_timesteps.to(values.dtype), values.repeat(repeats)])
        sample_of_row = torch.cat([torch.arange(rows, device=device),
                                   (sample_rows[None] + batch * copies[:, None]).flatten()])
        image_rows = rows + (self._offsets[:, None] + self._rank)[None] + total * copies[:, None, None]
        return extended, TokenRows(sample_of_row, image_rows.view(rows, tokens))


class _Modulation:
    """One AdaLN's per-token modulation in one call: a (rows, chunks, D) table, gathered on demand."""

    def __init__(self, table: torch.Tensor, chunks: int, token_rows: torch.Tensor, fused: bool = False):
        self.table = table.view(table.shape[0], chunks, -1)
        self.token_rows = token_rows  # (B, L)
        self.fused = fused

    def chunk(self, index: int, plus_one: bool = False) -> torch.Tensor:
        """(B, L, D) chunk ``index`` of every token's row; ``plus_one``: 1 + the chunk (a scale), added
        on the table's few rows before the gather: the same sums as the model's ``1 + scale``."""
        column = self.table[:, index]
        return _gather(1 + column if plus_one else column, self.token_rows)

    def vector(self, index: int) -> "TokenVector":
        return TokenVector(self.table[:, index], self.token_rows, self.fused)


def _gather(column: torch.Tensor, token_rows: torch.Tensor) -> torch.Tensor:
    """(B, L, D): each token's row of a (rows, D) table column."""
    return column.index_select(0, token_rows.reshape(-1)).view(*token_rows.shape, -1)


class TokenVector:
    """An AdaLN output chunk per token, where the block expects a (B, D) vector to broadcast.

    ``v.unsqueeze(1)`` and ``v[:, None]`` (then ``1 + ·``, ``y * ·``, ``y + ·``) give the (B, L, D)
    per-token tensor, gathered from the table's few rows; ``1 + v[:, None]`` adds on the table first
    (the same sums as the model's). Nothing else is supported: it raises, naming the expression.
    """

    def __init__(self, column: torch.Tensor, token_rows: torch.Tensor, fused: bool = False):
        self.column = column  # (rows, D)
        self.token_rows = token_rows  # (B, L)
        self.fused = fused  # compiled blocks: v[:, None] is the gathered tensor itself

    def unsqueeze(self, dim: int) -> torch.Tensor:
        if dim != 1:
            raise NotImplementedError(f"a per-token AdaLN vector was unsqueezed at dim {dim}; asyndm supports "
                                      f"the blocks' gate.unsqueeze(1)")
        return _gather(self.column, self.token_rows)

    def __getitem__(self, index):
        if index != (slice(None), None):
            raise NotImplementedError(f"a per-token AdaLN vector was indexed with {index!r}; asyndm supports the "
                                      f"blocks' v[:, None]")
        return _gather(self.column, self.token_rows) if self.fused else _Broadcast(self)

    def __getattr__(self, name):
        raise NotImplementedError(f"the block used .{name} of an AdaLN output that asyndm makes per token; "
                                  f"this diffusers version's MMDiT blocks are not supported")


class _Broadcast:
    """``v[:, None]`` of a ``TokenVector``: combines with a number (on the table) or a token tensor."""

    def __init__(self, vector: TokenVector):
        self.vector = vector

    def __radd__(self, other):
        if isinstance(other, (int, float)):  # 1 + scale: on the table's rows, then gathered
            return _gather(other + self.vector.column, self.vector.token_rows)
        return other + self.vector.unsqueeze(1)

    def __rmul__(self, other):
        return other * self.vector.unsqueeze(1)

    __add__, __mul__ = __radd__, __rmul__


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
        self._switch: _TokenSwitch | None = None  # installed wrappers (``install``), for compiled blocks

    def install(self) -> None:
        """Install the per-token wrappers for good, switched on only inside ``active``.

        For compiled blocks (asyndm/compilation.py): wrappers assigned and removed on every call would
        change what the compiler traced, and recompile each call. Installed wrappers read the call's
        ``TokenRows`` from one switch: a block compiles a plain graph and a per-token one, whose only
        dynamic size is the number of embedding rows (distinct timesteps vary per call and sample).
        Outside ``active`` they call the module's own forward.
        """
        if self._switch is not None:
            return
        switch = _TokenSwitch()
        self._wrap_switched(self.embedder, _dynamic_rows(self._embed), switch)
        for block in self.blocks:
            norm = _image_norm(block)
            self._wrap_switched(norm, self._adaln(_kind(norm), fused=True), switch)
        self._wrap_switched(self.transformer.norm_out, self._final, switch)
        self._switch = switch

    @contextmanager
    def active(self, rows: TokenRows):
        """Within the block, calls made with the extended timestep vector of ``rows`` are per token."""
        if self._switch is not None:  # installed (compiled): switched on for the call
            self._switch.rows = rows
            try:
                yield
            finally:
                self._switch.rows = None
            return
        patched: list = []  # (module, the forward it had as an attribute: an accelerate hook's, or None)
        try:
            self._wrap(self.embedder, self._bind(self._embed, self.embedder, rows), patched)
            for block in self.blocks:
                norm = _image_norm(block)
                self._wrap(norm, self._bind(self._adaln(_kind(norm)), norm, rows), patched)
            self._wrap(self.transformer.norm_out, self._bind(self._final, self.transformer.norm_out, rows), patched)
            yield
        finally:
            for module, before in reversed(patched):
                if before is None:
                    del module.forward  # the class's forward again
                else:
                    module.forward = before  # an offloading hook's wrapper, kept

    # --------------------------------------------------------------- pieces

    @staticmethod
    def _wrap(module, forward, patched: list) -> None:
        patched.append((module, module.__dict__.get("forward")))
        module.forward = forward

    @staticmethod
    def _bind(per_token, module, rows: TokenRows):
        """A forward for one call: ``per_token(module, rows, ...)``."""
        return lambda *args, **kwargs: per_token(module, rows, *args, **kwargs)

    @staticmethod
    def _wrap_switched(module, per_token, switch: "_TokenSwitch") -> None:
        """A forward for good: the module's own (an accelerate hook's wrapper, if any) while the switch
        is off, ``per_token(module, rows, ...)`` while it holds a call's rows."""
        plain = module.__dict__.get("forward") or type(module).forward.__get__(module)

        def forward(*args, **kwargs):
            rows = switch.rows
            if rows is None:
                return plain(*args, **kwargs)
            return per_token(module, rows, *args, **kwargs)

        module.forward = forward

    @staticmethod
    def _embed(embedder, rows: TokenRows, timestep, *per_sample, **named):
        # per-sample inputs (pooled text, Flux's guidance) repeated for every extended row
        expand = lambda x: x.index_select(0, rows.sample_of_row) if torch.is_tensor(x) else x  # noqa: E731
        temb = type(embedder).forward(embedder, timestep, *map(expand, per_sample),
                                      **{k: expand(v) for k, v in named.items()})
        rows.temb = temb
        return temb[: rows.batch]  # the text stream's: a plain call's temb

    @staticmethod
    def _adaln(kind: str, fused: bool = False):
        """The per-token forward of an image-stream AdaLN. ``fused`` (compiled blocks): ``v[:, None]``
        gathers at once (the same values), as the compiler cannot trace a tensor combined with a
        ``_Broadcast``; it fuses the gather into the multiply-add."""
        chunks = _CHUNKS[kind]

        def forward(norm, rows: TokenRows, x, *args, emb=None, **kwargs):
            table = norm.linear(norm.silu(rows.temb))  # (rows, chunks·D): the distinct timesteps only
            modulation = _Modulation(table, chunks, rows.sequence_rows(x.shape[1]), fused)
            normed = norm.norm(x)
            out = normed * modulation.chunk(1, plus_one=True) + modulation.chunk(0)
            if kind == "single":
                return out, modulation.vector(2)
            rest = [modulation.vector(i) for i in (2, 3, 4, 5)]  # gate_msa, shift_mlp, scale_mlp, gate_mlp
            if kind == "zero":
                return (out, *rest)
            out2 = normed * modulation.chunk(7, plus_one=True) + modulation.chunk(6)
            return (out, *rest, out2, modulation.vector(8))

        return forward

    @staticmethod
    def _final(norm, rows: TokenRows, x, conditioning_embedding):
        table = norm.linear(norm.silu(rows.temb).to(x.dtype))
        modulation = _Modulation(table, 2, rows.sequence_rows(x.shape[1]))
        return norm.norm(x) * modulation.chunk(0, plus_one=True) + modulation.chunk(1)


def _dynamic_rows(embed):
    """``embed``, then the table's rows marked dynamic: the distinct timesteps vary per call, and the
    compiled blocks that read them serve every count with one graph."""

    def per_token(embedder, rows: TokenRows, *args, **kwargs):
        out = embed(embedder, rows, *args, **kwargs)
        if not torch.compiler.is_compiling():  # the embedder runs before the compiled blocks, eagerly
            torch._dynamo.maybe_mark_dynamic(rows.temb, 0)
        return out

    return per_token


class _TokenSwitch:
    """What the installed wrappers read: the call's ``TokenRows`` during a per-token call, else None."""

    def __init__(self):
        self.rows: TokenRows | None = None
