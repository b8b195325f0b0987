"""Capture item attention maps from the cross-attention layers a mask needs (METHOD.md §6).

Only the ``attn2`` layers whose query grid matches the mask resolution get a capturing processor;
every other layer keeps its own (SDPA) processor. The capturing processor leaves the layer's output
to the original processor and only adds the cross-attention probabilities of the conditional half,
averaged over heads and reduced to one map per item, so outputs are unchanged by capturing.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def attention_grids(unet) -> dict[str, int]:
    """Name of every attention module (``...attn1`` and ``...attn2``) → downsampling factor of its grid.

    Derived from the block structure (each down block with a downsampler halves the grid, each up
    block with an upsampler doubles it), so it holds for any SD-shaped UNet config.
    """
    factors: dict[str, int] = {}
    factor = 1

    def record(prefix: str, block, f: int):
        for name, _ in block.named_modules():
            if name.endswith(("attn1", "attn2")):
                factors[f"{prefix}.{name}"] = f

    for i, block in enumerate(unet.down_blocks):
        record(f"down_blocks.{i}", block, factor)
        if getattr(block, "downsamplers", None):
            factor *= 2
    record("mid_block", unet.mid_block, factor)
    for i, block in enumerate(unet.up_blocks):
        record(f"up_blocks.{i}", block, factor)
        if getattr(block, "upsamplers", None):
            factor //= 2
    return factors


def cross_attention_grids(unet) -> dict[str, int]:
    """Name of each cross-attention processor → downsampling factor of its query grid."""
    return {f"{name}.processor": f for name, f in attention_grids(unet).items() if name.endswith("attn2")}


def capture_layer_names(unet, latent_side: int, mask_resolution: int) -> list[str]:
    """The cross-attention layers whose query grid side equals ``mask_resolution``."""
    grids = cross_attention_grids(unet)
    names = [name for name, f in grids.items() if latent_side // f == mask_resolution]
    if not names:
        available = sorted({latent_side // f for f in grids.values()})
        raise ValueError(
            f"mask.resolution={mask_resolution}: no cross-attention layer has a {mask_resolution}x"
            f"{mask_resolution} query grid for a {latent_side}x{latent_side} latent; "
            f"choose one of {available}"
        )
    return names


class AttentionStore:
    """Item maps of one UNet call, averaged over the captured layers: (B_cond, n_items, h*w).

    ``rows`` selects the batch rows whose maps count (the conditional half under guidance); None
    between calls, so a call made without it (an extra guidance pass) captures nothing.
    """

    def __init__(self, token_positions: list[list[int]]):
        self.token_positions = token_positions
        self.rows: slice | None = None
        self._weights: torch.Tensor | None = None
        self._recorded: list[torch.Tensor] = []  # per captured layer: (B_cond, h*w, L) head-averaged probabilities

    @property
    def enabled(self) -> bool:
        return self.rows is not None

    def reset(self) -> None:
        self._recorded = []

    def _token_weights(self, length: int, device) -> torch.Tensor:
        """(L, n_items): column i averages the tokens of item i (built once per sequence length)."""
        if self._weights is None or self._weights.shape[0] != length or self._weights.device != device:
            weights = torch.zeros(length, len(self.token_positions))
            for item, positions in enumerate(self.token_positions):
                weights[positions, item] = 1.0 / len(positions)
            self._weights = weights.to(device)
        return self._weights

    def add(self, probs: torch.Tensor) -> None:
        """probs: (B_cond, heads, h*w, L) attention probabilities of one layer. Only recorded here: the
        items are weighed in ``item_maps``, so what runs inside a compiled model is the same for every
        prompt (asyndm/compilation.py)."""
        self._recorded.append(probs.float().mean(dim=1))

    def item_maps(self) -> torch.Tensor:
        if not self._recorded:
            raise RuntimeError("no cross-attention was captured in the last UNet call")
        total = None
        for probs in self._recorded:  # the layers in call order, as they were summed when captured
            item_maps = (probs @ self._token_weights(probs.shape[-1], probs.device)).transpose(1, 2)
            total = item_maps if total is None else total + item_maps
        return total / len(self._recorded)


class CapturingProcessor:
    """Wraps a layer's processor: same output, plus the conditional half's probabilities to a store.

    The query and key come from the layer's own ``to_q`` / ``to_k`` calls inside the wrapped
    processor (``projected``, filled by the hooks ``capture_cross_attention`` installs), so capturing
    adds no projection of its own (SDXL: 60 layers at 32×32, where recomputing the query cost ~1.5 %
    of a guided step's FLOPs); an inner processor that does not call them gets them recomputed.
    """

    def __init__(self, inner, store: AttentionStore):
        self.inner = inner
        self.store = store
        self.projected: dict[str, torch.Tensor] = {}  # "to_q" / "to_k" outputs of the current call

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        query, key = self.projected.pop("to_q", None), self.projected.pop("to_k", None)
        if self.store.enabled:
            rows = self.store.rows
            if query is None or key is None:
                context = encoder_hidden_states
                if attn.norm_cross:
                    context = attn.norm_encoder_hidden_states(context)
                query, key = attn.to_q(hidden_states), attn.to_k(context)
            query, key = query[rows], key[rows]
            probs = attn.get_attention_scores(attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), None)
            batch = query.shape[0]
            self.store.add(probs.view(batch, attn.heads, *probs.shape[1:]))
        return out


@contextmanager
def capture_cross_attention(unet, layer_names: list[str], store: AttentionStore, reuse_projections: bool = True):
    """Install capturing processors on ``layer_names``; restore every original processor on exit.

    ``reuse_projections=False`` (a compiled UNet): no hooks on the layers' projections, which the
    compiler would see change with every capture; the query and key are projected again."""
    original = dict(unet.attn_processors)
    missing = [name for name in layer_names if name not in original]
    if missing:
        raise KeyError(f"no attention processors named {missing}")
    patched = {
        name: CapturingProcessor(proc, store) if name in layer_names else proc for name, proc in original.items()
    }
    modules = dict(unet.named_modules())
    handles = []
    for name in layer_names if reuse_projections else ():  # the layer's own projections, kept while captured
        layer, processor = modules[name.removesuffix(".processor")], patched[name]
        for projection in ("to_q", "to_k"):
            handles.append(getattr(layer, projection).register_forward_hook(_keep(processor, projection)))
    unet.set_attn_processor(patched)
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()
        unet.set_attn_processor(original)


def _keep(processor: CapturingProcessor, projection: str):
    def hook(module, inputs, output):
        if processor.store.enabled:
            processor.projected[projection] = output

    return hook
