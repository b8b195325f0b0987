"""The toy text-to-image model of the shapes world: a small SD-shaped pixel-space pipeline.

A `StableDiffusionPipeline` without a VAE: the UNet denoises 32×32 RGB images directly, with
cross-attention at 16×16 and 8×8, conditioned by a small `CLIPTextModel` that reads the real CLIP
BPE tokenizer (so item words resolve exactly as for Stable Diffusion). It predicts x0
(`prediction_type="sample"`), which gives clean white backgrounds in this world. Saved with
`save_pretrained`, it loads through `asyndm.models.load_backend` like any SD checkpoint.
"""

from __future__ import annotations

import torch

from .offline.sd import clip_tokenizer

TEXT_LENGTH = 16  # tokens per prompt, start and end included: the world's prompts need at most 12


def build_scheduler(prediction_type: str = "sample"):
    """DDPM's linear schedule (1e-4 → 0.02, 1000 steps): pure noise at t=T suits pixel space."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def build_toy_pipeline(
    block_out_channels=(32, 64, 64),
    layers_per_block: int = 1,
    text_hidden: int = 64,
    text_layers: int = 2,
    attention_head_dim: int = 8,
    prediction_type: str = "sample",
    seed: int = 0,
):
    """A freshly initialised toy pipeline (random weights)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_hidden,
        attention_head_dim=attention_head_dim,
        norm_num_groups=8,
        use_linear_projection=True,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=text_hidden,
            intermediate_size=2 * text_hidden,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            max_position_embeddings=TEXT_LENGTH,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    tokenizer = clip_tokenizer("<|endoftext|>")
    tokenizer.model_max_length = TEXT_LENGTH
    return StableDiffusionPipeline(
        vae=None,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def encode_captions(pipe, captions: list[str]) -> torch.Tensor:
    """(B, TEXT_LENGTH, hidden) text states, tokenised exactly as `StableDiffusionPipeline.encode_prompt`."""
    tokens = pipe.tokenizer(
        captions, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(tokens)[0]


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())
