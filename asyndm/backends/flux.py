"""FLUX.1 (double- and single-stream MMDiT, flow matching): ``FluxPipeline`` folders (METHOD.md §9).

Where Flux differs from SD3, handled here and nowhere else:
- **Packed latents.** The transformer sees 2×2 patches of the (C, h, w) latents as tokens. The loop
  keeps the latents unpacked (so they are saved as (C, h, w) and the Euler step is element-wise on
  them); ``_forward`` packs on the way in and unpacks on the way out, with the pipeline's own helpers.
  A token is a 2×2 latent patch: the timestep grid is (h/2, w/2).
- **Text first.** The joint sequence is [T5 text (512); image]; the single-stream blocks run on it
  whole, so their text tokens keep the text stream's timestep (asyndm/token_timesteps.py) and a mask
  captured there reads the image queries after the text.
- **Guidance.** FLUX.1-dev is guidance-distilled: ``sample.guidance_scale`` is an input of the model
  (the pipeline's default 3.5), one pass per step, no unconditional pass unless
  ``sample.true_cfg_scale`` > 1 (then the negative prompt's pass too, combined as the pipeline does).
  FLUX.1-schnell embeds no guidance.
- **Resolution-dependent shift.** ``mu`` from the image's token count, as the pipeline computes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..flow import flux_timesteps
from ..joint_attention import flux_query_keys, flux_recorded_attention
from ..conditioning import PromptConditioning, TextConditioning
from ..guidance import Prediction
from .base import ItemTokens
from .mmdit import FlowTransformerBackend
from .sd3 import middle_blocks


@dataclass(frozen=True)
class EmbeddedGuidance:
    """A guidance-distilled model's own guidance: the scale enters the model (``guidance``), one pass.

    ``scale`` None: the model embeds no guidance (FLUX.1-schnell). ``true_cfg_scale`` > 1 adds
    classifier-free guidance with the negative prompt as ``FluxPipeline`` does it: the conditional pass,
    then the negative one, out = neg + true_cfg_scale·(cond - neg). Masks come from the conditional pass.
    """

    scale: float | None
    true_cfg_scale: float = 1.0

    @property
    def guided(self) -> bool:
        return self.true_cfg_scale > 1

    def _with_scale(self, text: TextConditioning, batch: int, device) -> TextConditioning:
        if self.scale is None:
            return text
        guidance = torch.full((batch,), float(self.scale), device=device, dtype=torch.float32)
        return TextConditioning({**text.tensors, "guidance": guidance})

    def __call__(self, model, latents, states, cond: PromptConditioning, context=None) -> Prediction:
        batch = len(latents)
        positive = model(latents, states, self._with_scale(cond.positive, batch, latents.device),
                         capture_rows=slice(0, batch))
        if not self.guided:
            return Prediction(positive)
        negative = model(latents, states, self._with_scale(cond.negative, batch, latents.device))
        return Prediction(negative + self.true_cfg_scale * (positive - negative))


class FluxBackend(FlowTransformerBackend):
    """FLUX.1 [dev] and [schnell], and any ``FluxPipeline`` folder."""

    family = "flux"
    pipeline_classes = ("FluxPipeline",)
    # FLUX.1 is guidance-distilled: [dev] embeds the guidance scale in every model call and [schnell] takes
    # none, so a baseline's own classifier-free guidance (asyndm/baselines/) is not offered
    lacking = ("classifier_free_guidance",)
    query_keys = staticmethod(flux_query_keys)
    max_sequence_length = 512  # the pipeline's default T5 length
    patch = 2  # latents are packed in 2×2 patches

    def recorded_attention(self):
        """Captures read the queries and keys the block attends with (rotary embedding applied), not
        computed a second time."""
        return flux_recorded_attention()

    @classmethod
    def load_pipeline(cls, source: str, **kwargs):
        from diffusers import FluxPipeline

        return FluxPipeline.from_pretrained(source, **kwargs)

    # --------------------------------------------------------------- sizes

    @property
    def latent_channels(self) -> int:
        """The transformer takes 2×2-packed latents: its input channels / 4."""
        return self.transformer.config.in_channels // 4

    # --------------------------------------------------------------- prompts

    def encode(self, prompt: str, batch: int, negative_prompt: str, guided: bool) -> PromptConditioning:
        """As ``FluxPipeline.encode_prompt``: T5 states (B, 512, D) and CLIP's pooled output (B, P)."""

        def encode_one(text: str) -> TextConditioning:
            states, pooled, _ = self.pipe.encode_prompt(prompt=text, prompt_2=None, device=self.device,
                                                        num_images_per_prompt=batch,
                                                        max_sequence_length=self.max_sequence_length)
            return TextConditioning({"encoder_hidden_states": states, "pooled_projections": pooled})

        return PromptConditioning(encode_one(prompt), encode_one(negative_prompt) if guided else None)

    t5_tokenizer_name = "tokenizer_2"

    @property
    def t5_tokenizer(self):
        return self.pipe.tokenizer_2

    @property
    def text_segments(self) -> dict[str, tuple[int, int]]:
        return {"t5": (0, self.max_sequence_length)}

    def _segment_positions(self, tokens: ItemTokens):
        return [("t5", tokens.extra["t5"])]

    def guidance_rule(self, guidance_scale: float, true_cfg_scale: float = 1.0) -> EmbeddedGuidance:
        embedded = guidance_scale if self.transformer.config.guidance_embeds else None
        return EmbeddedGuidance(embedded, true_cfg_scale)

    # --------------------------------------------------------------- sampling

    def shift_precision(self) -> torch.dtype:
        """The pipeline passes sigmas, which the scheduler shifts as float32 (unless it chooses its own)."""
        return torch.float64 if self.pipe.scheduler.config.get("use_flow_sigmas") else torch.float32

    def unshifted_timesteps(self, num_steps: int) -> np.ndarray:
        """The sigmas ``FluxPipeline`` passes (linspace(1, 1/N, N), float32 in the scheduler) × 1000."""
        return flux_timesteps(self.pipe.scheduler, num_steps)

    def _forward(self, latents, timestep, text):
        pipe, factor = self.pipe, self.vae_scale_factor
        batch, channels, height, width = latents.shape
        guidance = text.tensors.get("guidance")
        if self.transformer.config.guidance_embeds and guidance is None:
            raise ValueError("this FLUX checkpoint embeds the guidance scale: call it through a guidance rule that "
                             "supplies one (the family's default, sample.guidance_scale)")
        states = text.tensors["encoder_hidden_states"]
        text_ids, image_ids = self._position_ids(states.shape[1], height, width, latents.dtype)
        out = self.transformer(
            hidden_states=pipe._pack_latents(latents, batch, channels, height, width),
            timestep=timestep.to(latents.dtype) / 1000,  # the pipeline's (t in the latents' dtype) / 1000
            guidance=guidance,
            pooled_projections=text.tensors["pooled_projections"],
            encoder_hidden_states=states,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        return pipe._unpack_latents(out, height * factor, width * factor, factor)

    def _position_ids(self, text_length: int, height: int, width: int, dtype: torch.dtype):
        """The pipeline's text ids (zeros) and image ids (row, column per token), made once per size:
        the pipeline builds them on the host, and a host-to-device copy per call would be wasted."""
        key = (text_length, height, width, dtype)
        if getattr(self, "_ids", (None,))[0] != key:
            text_ids = torch.zeros(text_length, 3, device=self.device, dtype=dtype)
            image_ids = self.pipe._prepare_latent_image_ids(1, height // 2, width // 2, self.device, dtype)
            self._ids = (key, text_ids, image_ids)
        return self._ids[1:]

    @property
    def joint_attention_layers(self) -> list:
        """The double-stream blocks' attention, then the single-stream blocks' (``mask.blocks`` numbering)."""
        transformer = self.transformer
        return [block.attn for block in (*transformer.transformer_blocks, *transformer.single_transformer_blocks)]

    def default_mask_blocks(self) -> list[int]:
        return middle_blocks(len(self.transformer.transformer_blocks))

