"""Item maps from a video transformer's text cross-attention (Wan): image queries × item tokens (METHOD.md §6, §9).

In Wan the text reaches the video tokens only through each block's cross-attention (``attn2``), whose
keys are the 512 UMT5 positions of the prompt (padding included: the pipeline passes no attention
mask). An item's map is the probability each video token's query gives the item's tokens, the
softmax over all text keys, averaged over the heads, the item's tokens and the captured blocks: the
same quantity as the SD UNets' cross-attention maps, on the (frames × rows × columns) token grid.

The capturing processor wraps the block's own processor, whose output is returned untouched; for the
capture rows it recomputes the queries and keys as ``WanAttnProcessor`` makes them (projections and
RMS norms across heads, no rotary embedding on cross-attention) and reads the item block of the
probabilities with one ``scaled_dot_product_attention`` (asyndm/joint_attention.py).
"""

from __future__ import annotations

from contextlib import contextmanager

from .joint_attention import JointAttentionStore, item_probabilities


def wan_query_keys(attn, hidden_states, encoder_hidden_states):
    """(B, heads, N, d) queries and (B, heads, L, d) text keys, as ``WanAttnProcessor`` makes them."""
    if getattr(attn, "fused_projections", False):
        raise NotImplementedError("fused projections: unfuse them (transformer.unfuse_qkv_projections())")
    if attn.add_k_proj is not None:
        raise NotImplementedError("an image-conditioned Wan (added image keys): asyndm samples text-to-video only")
    query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
    key = attn.norm_k(attn.to_k(encoder_hidden_states)).unflatten(2, (attn.heads, -1))
    return query.transpose(1, 2), key.transpose(1, 2)


class CapturingCrossAttention:
    """Wraps a cross-attention processor: the same output, plus the capture rows' item maps to a store."""

    def __init__(self, inner, store: JointAttentionStore):
        self.inner = inner
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)
        store = self.store
        if store.enabled:
            if attention_mask is not None:
                raise NotImplementedError("a cross-attention with an attention mask: asyndm's masks read the "
                                          "unmasked softmax, as the pipeline calls it")
            rows = store.rows
            query, keys = wan_query_keys(attn, hidden_states[rows], encoder_hidden_states[rows])
            store.add(item_probabilities(query, keys, store.weights, 0))
        return out


@contextmanager
def capture_cross_attention(attention_layers: list, store: JointAttentionStore):
    """Capturing processors on ``attention_layers``; every original processor restored on exit."""
    originals = [layer.processor for layer in attention_layers]
    for layer, processor in zip(attention_layers, originals):
        layer.set_processor(CapturingCrossAttention(processor, store))
    try:
        yield store
    finally:
        for layer, processor in zip(attention_layers, originals):
            layer.set_processor(processor)
