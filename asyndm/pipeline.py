"""The Python API, in diffusers' style; the ``asyndm`` CLI is built on it.

    from asyndm import AsyncPipeline
    pipe = AsyncPipeline.from_pretrained("path/or/hub-id", torch_dtype=torch.float16, device="cuda")
    out = pipe("a cat eating a sandwich", items=["cat", "sandwich"], k=[0.7, 0.7],
               variants=["dm", "asyndm"], num_images=2, seed=1234)
    out["asyndm"].images    # PIL images
    out["asyndm"].latents   # (B, C, h, w) before decoding
    out["asyndm"].masks     # (B, h, w) item index per latent pixel, -1 background

Image j uses the generator seeded ``seed + j`` (METHOD.md §7), exactly as the CLI does, so both
give identical latents for identical settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .backends.base import Backend, ItemTokens
from .errors import AsyndmError
from .models import load_backend, resolve_device, resolve_dtype
from .sources import built_in_names, built_in_source, check_source
from .oracle import OracleFunction, load_oracle
from .oracle import oracle_masks as read_oracle_masks
from .prompts import PromptSpec, check_spec
from .sampler import AsyncSampler, Callback, SamplingSettings
from .variants import get_variant


@dataclass
class VariantOutput:
    """One variant's batch: images (None with ``output_type='latent'``), latents and masks."""

    images: list | None
    latents: torch.Tensor  # (B, C, h, w)
    masks: torch.Tensor | None  # (B, h, w) item per cell, -1 background; None for variants without masks
    seeds: list[int]


class AsyncPipeline:
    """Paired sampling of dm, dm_concave, asyndm and the baselines (any registered variant) with one model."""

    def __init__(self, backend: Backend, source: str | None = None):
        self.backend = backend
        self.source = source

    @classmethod
    def from_pretrained(
        cls, source: str, torch_dtype: torch.dtype | str = torch.float32, device: str | torch.device = "auto",
        **options,
    ) -> "AsyncPipeline":
        """A diffusers folder, a hub id, or a built-in name (``"tiny"``, ``"toy"``, ``"tiny_sd3"``, ``"tiny_flux"``).

        ``options``: ``skip_components`` (e.g. SD3's ``["text_encoder_3", "tokenizer_3"]``) and family
        settings (``text_timestep`` for SD3 and Flux), as the ``model.*`` config keys.
        """
        resolved = _built_in(source) or check_source(str(source))
        device = device if isinstance(device, torch.device) else resolve_device(str(device))
        return cls(load_backend(resolved, device, resolve_dtype(torch_dtype), **options), resolved)

    def item_tokens(self, spec: PromptSpec, mode: str = "word") -> ItemTokens:
        return self.backend.item_tokens(spec.prompt, spec.items, spec.legacy_item_idx, mode)

    def generate(
        self,
        spec: PromptSpec,
        seeds: Sequence[int],
        settings: SamplingSettings,
        variants: Sequence[str] = ("dm", "dm_concave", "asyndm"),
        item_tokens: str = "word",
        masks: torch.Tensor | None = None,
        callbacks: Sequence[Callback] = (),
        output_type: str = "pil",
        oracle_masks: OracleFunction | str | None = None,
    ) -> dict[str, VariantOutput]:
        """Paired samples of ``variants`` for one prompt spec and explicit seeds (what the CLI calls).

        ``oracle_masks``: for ``asyndm_oracle``, the function (or ``"module:function"``) that reads
        the item cells off a finished dm image (asyndm/oracle.py).
        """
        if output_type not in ("pil", "latent"):
            raise AsyndmError(f"output_type={output_type!r}: choose 'pil' or 'latent'")
        sampler = AsyncSampler(self.backend, settings)
        seeds = [int(s) for s in seeds]
        tokens = self.item_tokens(spec, item_tokens)
        decoded: dict[int, list] = {}  # the oracle's dm images are dm's output too: decode them once

        def decode(latents: torch.Tensor) -> list:
            if id(latents) not in decoded:
                decoded[id(latents)] = sampler.decode(latents)
            return decoded[id(latents)]

        oracle = None
        if oracle_masks is not None:
            function = load_oracle(oracle_masks)
            oracle = lambda latents: read_oracle_masks(  # noqa: E731
                function, decode(latents), spec, self.backend.map_shape(latents))
        results = sampler.sample(spec.prompt, tokens, list(spec.k), seeds, list(variants), masks, callbacks, oracle)
        return {
            name: VariantOutput(
                images=decode(result.latents) if output_type == "pil" else None,
                latents=result.latents,
                masks=result.assignment,
                seeds=seeds,
            )
            for name, result in results.items()
        }

    def __call__(
        self,
        prompt: str,
        items: Sequence[str],
        k: float | Sequence[float],
        variants: Sequence[str] = ("dm", "dm_concave", "asyndm"),
        num_images: int = 1,
        seed: int = 1234,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        eta: float = 1.0,
        negative_prompt: str = "",
        curve: str = "bin",
        mask: str | torch.Tensor = "dynamic",
        mask_threshold: float = 1.0,
        mask_resolution: int | None = None,
        mask_blocks: Sequence[int] | None = None,
        height: int | None = None,
        width: int | None = None,
        true_cfg_scale: float = 1.0,
        item_tokens: str = "word",
        legacy_item_idx: Sequence[int] | None = None,
        curve_semantics: str = "reference",
        callbacks: Sequence[Callback] = (),
        output_type: str = "pil",
        show_progress: bool = False,
        variant_options: dict[str, dict] | None = None,
        compile: bool = False,
    ) -> dict[str, VariantOutput]:
        """Sample ``num_images`` paired images per variant (image j: seed ``seed + j``).

        ``mask``: ``"dynamic"`` (recomputed after every call), ``"static"`` (from the dm pass), or a
        (num_images, h, w) tensor of item indices (-1 background) that fixes asyndm's masks.
        ``variant_options``: the baselines' options by variant, e.g. ``{"cfgpp": {"scale": 0.4}}``
        (unset ones keep their defaults, asyndm/baselines/). ``compile``: torch.compile the model call,
        in place and for the model's lifetime (the first call compiles; docs/performance.md).
        """
        values = [float(k)] * len(items) if isinstance(k, (int, float)) else [float(v) for v in k]
        spec = PromptSpec(0, prompt, [str(i) for i in items], values,
                          list(legacy_item_idx) if legacy_item_idx is not None else None)
        check_spec(spec, "AsyncPipeline call")
        for name in variants:
            get_variant(name)  # raises with the list of variants
        given = mask if isinstance(mask, torch.Tensor) else None
        settings = SamplingSettings(
            steps=num_inference_steps, eta=eta, guidance_scale=guidance_scale, negative_prompt=negative_prompt,
            curve=curve, curve_semantics=curve_semantics, mask_mode="dynamic" if given is not None else mask,
            mask_threshold=mask_threshold, mask_resolution=mask_resolution,
            mask_blocks=tuple(mask_blocks) if mask_blocks is not None else None, height=height, width=width,
            true_cfg_scale=true_cfg_scale, variant_options=variant_options or {}, show_progress=show_progress,
            compile=compile,
        )
        seeds = [seed + j for j in range(num_images)]
        return self.generate(spec, seeds, settings, variants, item_tokens, given, callbacks, output_type)


def _built_in(source) -> str | None:
    """The folder of a built-in model name, or None for paths and hub ids."""
    return built_in_source(str(source)) if str(source) in built_in_names() else None
