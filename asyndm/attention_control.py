"""What the baselines need of a UNet's attention: recorded probabilities and blurred queries.

Three small capabilities, each a context manager that restores the model on exit, used by the SD
backend (asyndm/backends/sd.py) and through it by the guidance rules of asyndm/baselines/:

- ``record_attention``: the head-averaged attention probabilities of chosen layers in each model
  call, kept per layer (S-CFG's self- and cross-attention maps, Attend-and-Excite's cross-attention
  maps, with gradients where autograd is on). A forward hook on each ``Attention`` module recomputes
  the probabilities from the layer's own inputs, so the layer's output is untouched. With
  ``explicit``, every layer on diffusers' default (fused) processor runs diffusers' ``AttnProcessor``
  meanwhile: the model then uses exactly the recorded probabilities, as S-CFG's released processor
  does, so maps and outputs are the released code's to the last bit.
- ``blur_queries``: a Gaussian blur of the query map of chosen self-attention layers (SEG, Hong
  2024: blurring the queries blurs the attention weights). A forward hook on ``to_q``.
- ``smoothing_kernel``: the 3×3 Gaussian smoothing both S-CFG and Attend-and-Excite apply to maps.

Layers are named as in ``unet.attn_processors`` without the ``.processor`` suffix
(``mid_block.attentions.0.transformer_blocks.0.attn1``); their query grids come from the block
structure, as for the item maps (asyndm/attention.py).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .attention import attention_grids

INFINITE_BLUR = 9999.0  # SEG: a larger sigma means the uniform query (its pipeline's threshold)


def layers_at(unet, latent_side: int, sides, kind: str) -> list[str]:
    """``kind`` ('attn1' self, 'attn2' cross) layers whose query grid side is one of ``sides``."""
    grids = attention_grids(unet)
    names = [n for n, f in grids.items() if n.endswith(kind) and latent_side // f in set(sides)]
    if not names:
        available = sorted({latent_side // f for n, f in grids.items() if n.endswith(kind)})
        raise ValueError(f"no {'self' if kind == 'attn1' else 'cross'}-attention layer has a grid side in "
                         f"{sorted(set(sides))} for a {latent_side}-sided latent; available: {available}")
    return names


def layers_in(unet, places, kind: str = "attn1") -> list[str]:
    """``kind`` layers of the UNet's ``down``, ``mid`` and/or ``up`` blocks (SEG's ``seg_applied_layers``)."""
    prefixes = {"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}
    unknown = [p for p in places if p not in prefixes]
    if unknown:
        raise ValueError(f"unknown UNet part(s) {unknown}: choose from down, mid, up")
    return [n for n in attention_grids(unet) if n.endswith(kind) and n.split(".")[0] in {prefixes[p] for p in places}]


@dataclass
class AttentionRecord:
    """One model call's head-averaged probabilities per layer: ``maps[name]`` is (B, queries, keys)."""

    grid_of: dict[str, int]  # name → query grid side
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)

    def clear(self) -> None:
        self.maps.clear()
        self.heads.clear()

    def layers(self, kind: str, side: int | None = None) -> list[str]:
        """Recorded ``kind`` layers (at one grid side), in the order the UNet runs them."""
        return [n for n in self.maps if n.endswith(kind) and (side is None or self.grid_of[n] == side)]

    def mean(self, names: list[str]) -> torch.Tensor:
        """The mean over every (layer, head) pair of ``names``: (B, queries, keys)."""
        total = sum(self.maps[n] * self.heads[n] for n in names)
        return total / sum(self.heads[n] for n in names)


def _probabilities(attn, hidden_states: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """(B, heads, queries, keys) probabilities as diffusers' ``Attention.get_attention_scores`` gives them."""
    query = attn.to_q(hidden_states)
    if context is None:
        context = hidden_states
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    key = attn.to_k(context)
    probs = attn.get_attention_scores(attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), None)
    return probs.view(len(hidden_states), attn.heads, *probs.shape[1:])


@contextmanager
def explicit_attention(unet):
    """Inside the block, the layers on diffusers' default ``AttnProcessor2_0`` (fused attention) run
    ``AttnProcessor`` (softmax of ``get_attention_scores``, then ``bmm``), as S-CFG's released
    ``MyCrossAttnProcessor`` computes every layer (sd/utils.py, ``register_attention_control``).
    Other processors (the item-map capture) are kept; all are restored on exit."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    saved = unet.attn_processors
    unet.set_attn_processor({name: AttnProcessor() if type(p) is AttnProcessor2_0 else p for name, p in saved.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(saved)


@contextmanager
def record_attention(unet, layer_names: list[str], latent_side: int, explicit: bool = False):
    """Record the head-averaged probabilities of ``layer_names`` in every call; remove the hooks on exit.

    Each call overwrites the previous call's maps. The maps keep their autograd graph when the call
    runs with gradients (Attend-and-Excite differentiates them). ``explicit``: the model computes
    every layer from explicit probabilities meanwhile (``explicit_attention``), which are then
    exactly the recorded ones; otherwise the fused attention's output differs from them by rounding.
    """
    grids = attention_grids(unet)
    modules = dict(unet.named_modules())
    record = AttentionRecord({name: latent_side // grids[name] for name in layer_names})

    def hook(name):
        def store(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            context = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
            probs = _probabilities(module, hidden, context)
            record.maps[name] = probs.mean(dim=1)
            record.heads[name] = probs.shape[1]

        return store

    handles = [modules[name].register_forward_hook(hook(name), with_kwargs=True) for name in layer_names]
    try:
        with explicit_attention(unet) if explicit else nullcontext():
            yield record
    finally:
        for handle in handles:
            handle.remove()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """SEG's blur of (B, C, h, w) maps: a normalised exp(-x²/2σ²) kernel of odd size ⌈6σ⌉(+1), at most
    the map's side, reflect-padded; σ > 9999 is the infinite blur (every position gets the mean)."""
    if sigma > INFINITE_BLUR:
        return images.mean(dim=(-2, -1), keepdim=True).expand_as(images)
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    size = min(size, images.shape[-1] - (images.shape[-1] % 2 - 1))  # the released code's cap (width)
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.device, images.dtype)
    kernel2d = (kernel[:, None] * kernel[None, :]).expand(images.shape[1], 1, size, size)
    padded = F.pad(images, [size // 2] * 4, mode="reflect")
    return F.conv2d(padded, kernel2d, groups=images.shape[1])


@contextmanager
def blur_queries(unet, layer_names: list[str], latent_hw: tuple[int, int], sigma: float):
    """Blur the query map of ``layer_names`` (every batch row) in each call; remove the hooks on exit.

    The query (B, h·w, C) is laid out as (B, C, h, w) on the layer's grid and blurred per channel,
    which is SEG's query blurring (its ``SEGCFGSelfAttnProcessor``) done at the query projection.
    """
    modules = dict(unet.named_modules())
    latent_h, latent_w = latent_hw

    def blur(module, args, query):
        batch, tokens, channels = query.shape
        h = round(math.sqrt(tokens * latent_h / latent_w))
        w = tokens // h
        grid = query.transpose(1, 2).reshape(batch, channels, h, w)
        return gaussian_blur(grid, sigma).reshape(batch, channels, tokens).transpose(1, 2)

    handles = [modules[name].to_q.register_forward_hook(blur) for name in layer_names]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def smoothing_kernel(size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """The (size, size) kernel of the ``GaussianSmoothing`` that Attend-and-Excite and S-CFG release:
    per axis exp(-((x - m) / (2σ))²), normalised. (Note 2σ where a textbook Gaussian has √2·σ.)
    Built in the released order (each axis's factor with its 1/(σ√2π), multiplied on the meshgrid,
    then normalised), so that it is the released kernel to the last bit: S-CFG's regions are exact
    float32 ties of smoothed maps (scfg.py), which one rounding apart would break differently."""
    grid = torch.meshgrid([torch.arange(size, dtype=torch.float32)] * 2, indexing="ij")
    kernel = 1
    for axis in grid:
        factor = torch.exp(-(((axis - (size - 1) / 2) / (2 * sigma)) ** 2))
        kernel = kernel * (1 / (sigma * math.sqrt(2 * math.pi)) * factor)
    return kernel / torch.sum(kernel)


def smooth(maps: torch.Tensor, size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """(N, h, w) maps, reflect-padded by one and smoothed with ``smoothing_kernel`` (their 3×3 use)."""
    kernel = smoothing_kernel(size, sigma).to(maps.device, maps.dtype)[None, None]
    pad = (size - 1) // 2
    return F.conv2d(F.pad(maps[:, None], (pad,) * 4, mode="reflect"), kernel)[:, 0]


@contextmanager
def gradients_to_inputs(module: torch.nn.Module):
    """Autograd on, the module's parameters frozen (only the inputs get gradients); restored on exit."""
    frozen = [p for p in module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
