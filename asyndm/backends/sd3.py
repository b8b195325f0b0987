"""Stable Diffusion 3 / 3.5 (MMDiT, flow matching): ``StableDiffusion3Pipeline`` folders (METHOD.md §9).

The text sequence is [CLIP (77 tokens: CLIP-L and CLIP-G features side by side); T5 (256)]; the joint
attention puts the image tokens first. Item words resolve to their CLIP and T5 positions. T5 may be
dropped (``+model.skip_components=[text_encoder_3,tokenizer_3]``), as diffusers allows: its 256
positions then hold zeros and the masks read the CLIP segment alone.
"""

from __future__ import annotations

import numpy as np

from .. import sources
from ..flow import scheduler_timesteps
from ..joint_attention import sd3_query_keys
from ..conditioning import PromptConditioning, TextConditioning
from .base import ItemTokens
from .mmdit import FlowTransformerBackend


def middle_blocks(count: int, share: int = 6) -> list[int]:
    """About count/share consecutive blocks centred on the middle of ``count`` (at least one)."""
    chosen = max(1, round(count / share))
    first = (count - chosen) // 2
    return list(range(first, first + chosen))


class StableDiffusion3Backend(FlowTransformerBackend):
    """SD3-medium, SD3.5-medium/large(-turbo) and any ``StableDiffusion3Pipeline`` folder."""

    family = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    query_keys = staticmethod(sd3_query_keys)
    max_sequence_length = 256  # the pipeline's default T5 length

    @classmethod
    def load_pipeline(cls, source: str, **kwargs):
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline.from_pretrained(source, **kwargs)

    # --------------------------------------------------------------- sizes

    @property
    def patch(self) -> int:
        return int(self.transformer.config.patch_size)

    @classmethod
    def config_patch(cls, source: str) -> int:
        from diffusers import SD3Transformer2DModel

        return int(sources.from_pretrained(SD3Transformer2DModel.load_config, source, subfolder="transformer")["patch_size"])

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    # --------------------------------------------------------------- prompts

    def encode(self, prompt: str, batch: int, negative_prompt: str, guided: bool) -> PromptConditioning:
        """As ``StableDiffusion3Pipeline.encode_prompt``: joint text (B, 77 + 256, D) and pooled (B, P)."""
        positive, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=batch,
            do_classifier_free_guidance=guided, negative_prompt=negative_prompt,
            max_sequence_length=self.max_sequence_length,
        )
        wrap = lambda states, pooled_: TextConditioning(  # noqa: E731
            {"encoder_hidden_states": states, "pooled_projections": pooled_})
        return PromptConditioning(wrap(positive, pooled), wrap(negative, negative_pooled) if guided else None)

    @property
    def _uses_t5(self) -> bool:
        return self.pipe.text_encoder_3 is not None and self.pipe.tokenizer_3 is not None

    t5_tokenizer_name = "tokenizer_3"

    @property
    def t5_tokenizer(self):
        return self.pipe.tokenizer_3 if self._uses_t5 else None

    @property
    def text_segments(self) -> dict[str, tuple[int, int]]:
        clip = self.pipe.tokenizer_max_length
        return {"clip": (0, clip), "t5": (clip, self.max_sequence_length)}

    def _segment_positions(self, tokens: ItemTokens):
        segments = [("clip", tokens.positions)]
        if "t5" in tokens.extra and self._uses_t5:
            segments.append(("t5", tokens.extra["t5"]))
        return segments

    # --------------------------------------------------------------- sampling

    def unshifted_timesteps(self, num_steps: int) -> np.ndarray:
        """``set_timesteps``'s linspace from σ_max to σ_min (×1000), before it applies the shift."""
        return scheduler_timesteps(self.pipe.scheduler, num_steps)

    def _forward(self, latents, timestep, text):
        return self.transformer(
            hidden_states=latents,
            timestep=timestep,
            encoder_hidden_states=text.tensors["encoder_hidden_states"],
            pooled_projections=text.tensors["pooled_projections"],
            return_dict=False,
        )[0]

    @property
    def joint_attention_layers(self) -> list:
        return [block.attn for block in self.transformer.transformer_blocks]

    def default_mask_blocks(self) -> list[int]:
        return middle_blocks(len(self.transformer.transformer_blocks))

