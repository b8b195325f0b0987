"""SDXL (``StableDiffusionXLPipeline`` folders): the SD backend plus SDXL's added conditioning.

What differs from SD 1.x/2.x (METHOD.md §9, SDXL):
- Two CLIP text encoders: the cross-attention context is both encoders' penultimate hidden states
  side by side (one token sequence), and the second encoder's pooled projection conditions the
  time embedding. Item words must sit at the same positions in both tokenizers' sequences.
- Added conditioning: the UNet adds a per-sample embedding of the pooled text and six size/crop ids
  (original size, crop top-left, target size) to the time embedding. Per pixel the embedding is
  time-embedding(t_pixel) + that sample's embedding; the negative half of the guidance batch has
  its own (asyndm/pixel_timesteps.py tabulates it per sample).
- The negative prompt is the pipeline's default: an empty ``negative_prompt`` is diffusers'
  ``negative_prompt=None``, zero embeddings where the folder sets ``force_zeros_for_empty_prompt``.
- Decoding as the pipeline decodes: an fp16 VAE with ``force_upcast`` decodes in fp32.
- The step and the curves follow diffusers rather than a release (METHOD.md §9: SDXL has none): the
  DDIM step in ``DDIMScheduler.step``'s arithmetic, so fp16 ``dm`` equals the pipeline, and the
  curves' Y and o from §9's formula, so the linear curve is DDIM's own grid at any step count (30:
  958, 925, …, 1).
The per-pixel DDIM step and the mask layers (latent/4, from the config) are the SD backend's.
"""

from __future__ import annotations

import torch

from .. import sources
from ..errors import ModelError, PromptError
from ..tokens import item_token_positions
from ..conditioning import PromptConditioning, TextConditioning
from .base import ItemTokens
from .sd import StableDiffusionBackend

TOKENIZERS = ("tokenizer", "tokenizer_2")


def _item_tokens(tokenizers: list, prompt: str, items: list[str], legacy_item_idx, mode: str) -> ItemTokens:
    """Token positions of the items, the same in every tokenizer (their sequences share the context)."""
    found = [item_token_positions(tokenizer, prompt, items, legacy_item_idx, mode) for tokenizer in tokenizers]
    for other in found[1:]:
        if other != found[0]:
            raise PromptError(f"items {items} of prompt '{prompt}' sit at token positions {found[0]} for the first "
                              f"tokenizer but {other} for the second; SDXL's context needs them to agree")
    return ItemTokens(found[0])


class StableDiffusionXLBackend(StableDiffusionBackend):
    """``StableDiffusionXLPipeline`` folders: SDXL-base checkpoints and ``model=tiny_sdxl``."""

    family = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    step_arithmetic = "scheduler"
    release_timeline = ()  # no release to follow: §9's formula under every curve semantics

    def __init__(self, pipe, device: torch.device, dtype: torch.dtype):
        super().__init__(pipe, device, dtype)
        self._time_ids: tuple[tuple, torch.Tensor] | None = None  # (batch, size, dtype), (B, 6): the last ones

    @classmethod
    def load_pipeline(cls, source: str, **kwargs):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline.from_pretrained(source, **kwargs)

    # --------------------------------------------------------------- prompts

    @classmethod
    def item_resolver(cls, source: str):
        """Both tokenizers alone (no weights), so a prompt set is checked before loading."""
        index = sources.model_index(source)
        names = [name for name in TOKENIZERS if index.get(name) not in (None, [None, None])]
        if not names:
            raise ModelError(f"model.path={source}: its model_index.json lists no tokenizer")
        tokenizers = [sources.load_tokenizer(source, name) for name in names]
        return lambda prompt, items, legacy, mode: _item_tokens(tokenizers, prompt, items, legacy, mode)

    def item_tokens(self, prompt: str, items: list[str], legacy_item_idx: list[int] | None, mode: str) -> ItemTokens:
        tokenizers = [t for t in (self.pipe.tokenizer, self.pipe.tokenizer_2) if t is not None]
        return _item_tokens(tokenizers, prompt, items, legacy_item_idx, mode)

    def encode(self, prompt: str, batch: int, negative_prompt: str, guided: bool) -> PromptConditioning:
        """As ``StableDiffusionXLPipeline.encode_prompt``: the context (B, L, D1 + D2) and the pooled
        embedding (B, P). An empty negative prompt is the pipeline's default (``None``)."""
        context, negative_context, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt, device=self.device, num_images_per_prompt=batch, do_classifier_free_guidance=guided,
            negative_prompt=negative_prompt or None,
        )

        def wrap(states, pooled_embeds):
            return TextConditioning({"encoder_hidden_states": states, "text_embeds": pooled_embeds})

        return PromptConditioning(wrap(context, pooled), wrap(negative_context, negative_pooled) if guided else None)

    # --------------------------------------------------------------- sampling

    def size_ids(self, latents: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """(B, 6) original size, crop top-left and target size, as the pipeline's defaults set them:
        the image size, (0, 0), the image size. Kept for the last shape, so every step passes the
        same tensor (the per-sample tables are cached by it) and no step copies from the host."""
        height, width = (side * self.vae_scale_factor for side in latents.shape[-2:])
        key = (batch, height, width, dtype, latents.device)
        if self._time_ids is None or self._time_ids[0] != key:
            ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=latents.device)
            self._time_ids = (key, ids.repeat(batch, 1))
        return self._time_ids[1]

    def unet_kwargs(self, latents: torch.Tensor, text: TextConditioning) -> dict:
        pooled = text.tensors["text_embeds"]
        return {
            "encoder_hidden_states": text.tensors["encoder_hidden_states"],
            "added_cond_kwargs": {"text_embeds": pooled, "time_ids": self.size_ids(latents, len(pooled), pooled.dtype)},
        }

    def decode(self, latents: torch.Tensor, output_type: str = "pil"):
        """As the pipeline decodes: an fp16 VAE asking for it (``force_upcast``, SDXL's VAE overflows
        in fp16 to NaN, i.e. black images) decodes in fp32 and is cast back; latents are un-normalised
        with the VAE's mean/std where its config has them; the pipeline's watermark where it has one."""
        pipe, vae = self.pipe, self.pipe.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.to(torch.float32)
        try:
            latents = latents.to(vae.dtype)
            mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
            if mean is not None and std is not None:
                mean, std = (torch.tensor(v, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
                             for v in (mean, std))
                latents = latents * std / vae.config.scaling_factor + mean
            else:
                latents = latents / vae.config.scaling_factor
            images = vae.decode(latents, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
        if getattr(pipe, "watermark", None) is not None:
            images = pipe.watermark.apply_watermark(images)
        return pipe.image_processor.postprocess(images, output_type=output_type, do_denormalize=[True] * len(images))
