"""Item maps from joint attention (SD3, Flux): the image-query × item-token block of the softmax (METHOD.md §9).

In an MMDiT, text and image tokens share one attention. An item's map is the probability each image
query gives the item's text tokens, the softmax taken over *all* keys (image and text), averaged over
the heads, the item's tokens (per text segment, then over segments) and the captured blocks.

The capturing processor wraps a block's own processor: the block's output is the wrapped processor's,
untouched. For the capture rows (the conditional half) it takes the queries and keys the block
attends with, and gets the item block of the probabilities from one ``scaled_dot_product_attention``
whose values are the item weights: softmax(q·kᵀ/√d)·W is exactly Σ_keys p·W, without materialising
the (queries × keys) matrix where a fused kernel serves.

Where a family's processor hands its final queries and keys to a module-level attention function
(Flux: diffusers' ``dispatch_attention_fn``, after projections, qk-norms and the rotary embedding),
the capture records them during the block's own call (``RecordedAttention``) instead of computing
them again; otherwise, and if a processor does not make that call, it recomputes them the way the
family's processor does (``query_keys``).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F

#: item columns of a capture traced in compiled blocks: one shape for prompts of up to this many items
COMPILED_ITEM_COLUMNS = 8

# Largest (rows × heads × queries × keys) a capture handles at once, should SDPA fall back to its
# materialising math kernel: heads are taken in groups that stay below it.
_MAX_SCORES = 2**28


class JointAttentionStore:
    """Item maps of one model call, averaged over the captured blocks: (B_cond, n_items, N_image).

    ``weights`` (L_text, n_items): how much each text token counts for each item. ``rows``: the batch
    rows whose maps count, None between calls. ``text_length``: the text tokens in a single-stream
    block's sequence (set by the backend per call).

    ``columns`` (compiled blocks, asyndm/compilation.py): the weights get zero columns up to a multiple
    of it, so the capture traced inside the blocks has one shape for prompts of 1 to ``columns`` items;
    the extra maps are dropped in ``item_maps``, after the call. Each block's maps are only recorded
    during the call (a running sum would differ between the first captured block and the others).
    """

    def __init__(self, weights: torch.Tensor, columns: int | None = None):
        self.items = weights.shape[1]
        if columns:
            weights = F.pad(weights, (0, -(-self.items // columns) * columns - self.items))
        self.weights = weights
        self.rows: slice | None = None
        self.text_length = 0
        self._recorded: list[torch.Tensor] = []

    @property
    def enabled(self) -> bool:
        return self.rows is not None

    def reset(self) -> None:
        self._recorded = []

    def add(self, item_maps: torch.Tensor) -> None:
        self._recorded.append(item_maps)

    def item_maps(self) -> torch.Tensor:
        if not self._recorded:
            raise RuntimeError("no joint attention was captured in the last transformer call")
        total = self._recorded[0]
        for item_maps in self._recorded[1:]:  # in call order, as they were summed when captured
            total = total + item_maps
        return (total / len(self._recorded))[:, : self.items]


def item_probabilities(query: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor, text_start: int) -> torch.Tensor:
    """(B, n_items, N) item maps from image queries (B, H, N, d) and all keys (B, H, S, d).

    ``weights`` (L, n_items) weigh the text keys ``text_start … text_start + L``; the softmax is over all S keys.
    """
    batch, heads, queries, head_dim = query.shape
    keys_total = keys.shape[2]
    length, items = weights.shape
    # values as wide as the heads: the fused (flash) kernels want equal widths, and fall back to a far
    # slower path otherwise (measured on the CPU: 18 ms for width 8 against 5 ms for width 16 = head_dim)
    width = -(-items // head_dim) * head_dim
    values = query.new_zeros(keys_total, width)
    values[text_start : text_start + length, :items] = weights.to(query.dtype)
    group = max(1, _MAX_SCORES // max(1, batch * queries * keys_total))
    parts = []
    for column in range(0, width, head_dim):
        total = None
        for start in range(0, heads, group):
            q, k = query[:, start : start + group], keys[:, start : start + group]
            # materialised, not a stride-0 expand: the fused CUDA kernels want ordinary strides
            v = values[:, column : column + head_dim].expand(batch, q.shape[1], keys_total, head_dim).contiguous()
            part = F.scaled_dot_product_attention(q, k, v).float().sum(dim=1)  # (B, N, head_dim)
            total = part if total is None else total + part
        parts.append(total)
    return (torch.cat(parts, dim=-1)[..., :items] / heads).transpose(1, 2)


def sd3_query_keys(attn, hidden_states, encoder_hidden_states, text_length, **_):
    """Image queries and joint keys as ``JointAttnProcessor2_0`` makes them: image tokens first."""
    if encoder_hidden_states is None:
        raise ValueError("this attention layer sees no text tokens; capture joint (text-image) attention layers only")
    batch = hidden_states.shape[0]
    head_dim = attn.to_k.out_features // attn.heads

    def heads(x):
        return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

    query, key = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    text_key = heads(attn.add_k_proj(encoder_hidden_states))
    if attn.norm_added_k is not None:
        text_key = attn.norm_added_k(text_key)
    return query, torch.cat([key, text_key], dim=2), hidden_states.shape[1]


def flux_query_keys(attn, hidden_states, encoder_hidden_states, text_length, image_rotary_emb=None, **_):
    """Image queries and joint keys as ``FluxAttnProcessor`` makes them: text first, rotary embedding on all.

    Double-stream blocks get the text as ``encoder_hidden_states``; single-stream blocks get one
    sequence whose first ``text_length`` tokens are the text.
    """
    from diffusers.models.embeddings import apply_rotary_emb

    if getattr(attn, "fused_projections", False):
        raise NotImplementedError("fused QKV projections: unfuse them (transformer.unfuse_qkv_projections())")

    def heads(x):
        return x.unflatten(-1, (-1, attn.head_dim))

    if encoder_hidden_states is None:  # single-stream: [text; image] in one sequence
        text = text_length
        query = attn.norm_q(heads(attn.to_q(hidden_states[:, text:])))  # the image queries only
        key = attn.norm_k(heads(attn.to_k(hidden_states)))
    else:
        text = encoder_hidden_states.shape[1]
        query = attn.norm_q(heads(attn.to_q(hidden_states)))
        text_key = attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states)))
        key = torch.cat([text_key, attn.norm_k(heads(attn.to_k(hidden_states)))], dim=1)
    if image_rotary_emb is not None:
        cos, sin = image_rotary_emb
        query = apply_rotary_emb(query, (cos[text:], sin[text:]), sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    return query.transpose(1, 2), key.transpose(1, 2), 0


@dataclass(frozen=True)
class RecordedAttention:
    """The module-level attention function a family's processor calls with its final (B, S, heads, d)
    queries and keys, text first (Flux: ``dispatch_attention_fn`` of diffusers' Flux module)."""

    module: ModuleType
    name: str

    @contextmanager
    def recording(self, seen: list):
        """Within the block, every call of the function also appends its (query, key) to ``seen``."""
        original = getattr(self.module, self.name)

        def recorded(query, key, value, *args, **kwargs):
            seen.append((query, key))
            return original(query, key, value, *args, **kwargs)

        setattr(self.module, self.name, recorded)
        try:
            yield
        finally:
            setattr(self.module, self.name, original)


def flux_recorded_attention() -> RecordedAttention:
    from diffusers.models.transformers import transformer_flux

    return RecordedAttention(transformer_flux, "dispatch_attention_fn")


class CapturingJointProcessor:
    """Wraps a joint-attention processor: same output, plus the capture rows' item maps to a store."""

    def __init__(self, inner, store: JointAttentionStore, query_keys: Callable,
                 recorded: RecordedAttention | None = None):
        self.inner = inner
        self.store = store
        self.query_keys = query_keys
        self.recorded = recorded

    # traced inside compiled blocks (asyndm/compilation.py): a store of padded weights, recomputed
    # queries and keys (no recording), so every prompt and variant runs the same graph
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None, **kwargs):
        rotary = {} if image_rotary_emb is None else {"image_rotary_emb": image_rotary_emb}
        store = self.store
        if not store.enabled:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **rotary, **kwargs)
        if attention_mask is not None:
            raise NotImplementedError("a joint attention with an attention mask: asyndm's masks read the unmasked "
                                      "softmax; call the transformer without attention_mask")
        seen: list = []
        with self.recorded.recording(seen) if self.recorded is not None else nullcontext():
            out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **rotary, **kwargs)
        rows = store.rows
        text_length = store.text_length if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        if len(seen) == 1:  # the block's own queries and keys: (B, text + image, heads, d)
            query, key = seen[0]
            query, keys, text_start = query[rows, text_length:].transpose(1, 2), key[rows].transpose(1, 2), 0
        else:
            text = None if encoder_hidden_states is None else encoder_hidden_states[rows]
            query, keys, text_start = self.query_keys(attn, hidden_states[rows], text, store.text_length, **rotary)
        store.add(item_probabilities(query, keys, store.weights, text_start))
        return out


@contextmanager
def capture_joint_attention(attention_layers: list, store: JointAttentionStore, query_keys: Callable,
                            recorded: RecordedAttention | None = None):
    """Capturing processors on ``attention_layers``; every original processor restored on exit."""
    originals = [layer.processor for layer in attention_layers]
    for layer, processor in zip(attention_layers, originals):
        layer.set_processor(CapturingJointProcessor(processor, store, query_keys, recorded))
    try:
        yield store
    finally:
        for layer, processor in zip(attention_layers, originals):
            layer.set_processor(processor)
