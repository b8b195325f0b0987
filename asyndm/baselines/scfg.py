"""S-CFG: semantic-aware classifier-free guidance (Shen et al., CVPR 2024, arXiv 2404.05384).

Official code: github.com/SmilesDZgk/S-CFG, ``sd/sd.py`` (``MySDPipeline.__call__``) and
``sd/utils.py`` (``get_mask``, ``AttentionStore``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attention_control import smooth
from ..guidance import Prediction, guidance_passes
from ..options.scfg import SCFGOptions


@dataclass(frozen=True)
class SemanticCFG(SCFGOptions):
    """CFG with a per-region scale: ε̂ = ε_∅ + w·r(x)·(ε_c − ε_∅), r from the call's attention maps.

    Regions (``get_mask``), from the CFG call itself, at the grids latent/R, 2R, …, up to latent/8:
    per layer, the self-attention map S (head-averaged) smooths the cross-attention map A as
    ((S + 3·S²)/4)·A (the released loop adds S² three times where its name, SSGC, suggests
    S, S², S³, S⁴; kept as released), coarser grids are bilinearly upsampled to latent/R, every map
    is smoothed (3×3, σ = 0.5) and divided by its spatial mean, and the layers are averaged (a grid
    without attention layers, as SDXL's latent/8, is skipped; SD 1.x/2.x, the released code's, has each).
    Each cell of the latent/R grid belongs to the prompt token (of all 77) with the largest map
    (from the prompt's rows), to every one of them where several tie exactly (``regions``); the foreground is where the start token's map is not the larger of
    [start token, all other tokens summed] (from the *negative* prompt's rows, as released).
    Rates: r_k = mean‖δ‖ over the foreground / mean‖δ‖ over region k (δ = ε_c − ε_∅, norm over
    channels, regions upsampled to the latent by nearest neighbour), painted on region k, clamped
    to [0.8, 3.0] and to at most 15/w, then smoothed (3×3, σ = 0.5, reflect-padded).

    Defaults (``sd/sd.py``): ``use_rate`` = true (false is plain CFG: dm), ``mask_ratio`` R = 4,
    ``rate_min`` 0.8, ``rate_max`` 3.0, ``rate_cap`` 15.0 (r ≤ cap / w). w = the run's
    ``sample.guidance_scale`` (official 7.5; the paired comparison keeps dm's 5.0). Setting
    ``rate_min = rate_max = 1`` fixes every rate to 1, which is CFG again (the tests use it).
    The 3×3 smoothing kernel is the released ``GaussianSmoothing`` (asyndm/attention_control.py).

    Pairing: no extra noise and no extra model call; the attention maps of the CFG call are
    recorded (the backend's ``attention_probabilities``), which costs memory for the self-attention
    maps of the latent/4 and latent/8 grids, and the call computes every attention layer from
    explicit probabilities, as the released processor does (no fused attention kernel), so that
    the regions are the released code's bit for bit, ties included.
    """

    guidance_scale: float = 5.0  # w: the run's sample.guidance_scale

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1

    def __call__(self, model, latents, states, cond, context) -> Prediction:
        if not self.guided or not self.use_rate:
            uncond, positive = guidance_passes(model, latents, states, cond, negative=self.guided)
            return Prediction(positive if uncond is None else uncond + self.guidance_scale * (positive - uncond))
        latent_side = latents.shape[-2]
        ratios = [r for r in (self.mask_ratio * 2**i for i in range(4)) if r <= 8]  # R, 2R, ... ≤ 8, as released
        sides = [latent_side // r for r in ratios]
        with context.backend.attention_probabilities(latents, sides, explicit=True) as record:  # released arithmetic
            uncond, positive = guidance_passes(model, latents, states, cond)
        tokens, foreground = self.regions(record, ratios, latent_side)
        rate = self.rates(tokens, foreground, positive - uncond)
        return Prediction(uncond + self.guidance_scale * rate * (positive - uncond))

    @staticmethod
    def regions(record, ratios: list[int], latent_side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, g, g) token regions and (B, 1, g, g) foreground on the finest grid g (``get_mask``).

        A cell belongs to *every* token whose score equals the cell's maximum: a float32 tie marks
        all the tied tokens (``ca_mask = (new_ca == max_ca)``), and ``rates`` then counts the cell in
        each of their regions and adds their rates there, as the released loop does. Ties are exact
        equalities, so the scores are computed in the released order to the last bit: the layers of
        one grid stacked and summed (``.sum(1)``), S + S² + S² + S² added left to right, the released
        smoothing kernel, and (``__call__``) the model's attention from explicit probabilities.
        """
        token_sum = fore_sum = 0
        layers = 0
        for r in ratios:
            side = latent_side // r
            crosses = record.layers("attn2", side)
            count = len(crosses)
            if not count:  # a UNet without attention on this grid (SDXL has none at latent/8): the others decide
                continue
            stacked = lambda names: torch.stack([record.maps[n] for n in names], 1).flatten(0, 1).float()  # noqa: E731
            self_map = stacked([c[: -len("attn2")] + "attn1" for c in crosses])  # (2B·n, g², g²), as released
            square = self_map @ self_map
            smoothed = (self_map + square + square + square) / 4  # the released loop adds S² three times
            maps = smoothed @ stacked(crosses)  # (2B·n, g², L)
            maps = maps.transpose(1, 2).reshape(len(maps), -1, side, side)
            if r > ratios[0]:
                maps = F.interpolate(maps, scale_factor=r // ratios[0], mode="bilinear")
            rows, length = maps.shape[:2]
            maps = smooth(maps.flatten(0, 1)).view(rows, length, *maps.shape[-2:])
            normed = maps / (maps.mean(dim=(2, 3), keepdim=True) + 1e-8)
            token_sum = token_sum + normed.view(-1, count, *normed.shape[1:]).sum(1)
            fore = torch.stack([maps[:, 0], maps[:, 1:].sum(dim=1)], dim=1)
            fore = fore / fore.mean(dim=(2, 3), keepdim=True)
            fore_sum = fore_sum + fore.view(-1, count, *fore.shape[1:]).sum(1)
            layers += count
        _, token_maps = (token_sum / layers).chunk(2)  # the prompt's rows
        fore_maps, _ = (fore_sum / layers).chunk(2)  # the negative prompt's rows, as released
        token_regions = (token_maps == token_maps.max(dim=1, keepdim=True).values).float()
        foreground = 1.0 - (fore_maps == fore_maps.max(dim=1, keepdim=True).values).float()[:, :1]
        return token_regions, foreground

    def rates(self, token_regions: torch.Tensor, foreground: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) guidance rate per latent pixel from the regions and δ = ε_c − ε_∅."""
        size = delta.shape[-2:]
        regions = F.interpolate(token_regions, size=size, mode="nearest")  # (B, L, h, w)
        fore = F.interpolate(foreground, size=size, mode="nearest")  # (B, 1, h, w)
        norm = delta.float().norm(dim=1, keepdim=True)  # (B, 1, h, w)
        region_norm = (norm * regions).sum(dim=(2, 3)) / (regions.sum(dim=(2, 3)) + 1e-8)  # (B, L)
        fore_norm = (norm * fore).sum(dim=(2, 3)) / (fore.sum(dim=(2, 3)) + 1e-8)  # (B, 1)
        present = (regions.sum(dim=(2, 3)) > 0).float()
        rate = fore_norm * present / (region_norm + 1e-8)  # (B, L)
        rate = (rate[:, :, None, None] * regions).sum(dim=1, keepdim=True)  # (B, 1, h, w)
        rate = rate.clamp(min=self.rate_min, max=self.rate_max).clamp(max=self.rate_cap / self.guidance_scale)
        return smooth(rate[:, 0])[:, None].to(delta.dtype)


def scfg_guidance(backend, guidance_scale, options):
    return SemanticCFG(guidance_scale=guidance_scale, **options)
