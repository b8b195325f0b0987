"""The project's own offline SDXL-shaped pipelines: built with random weights, no download.

``model=tiny_sdxl``: a small ``StableDiffusionXLPipeline`` (two CLIP text encoders, the second with
a projection for the pooled embedding, text-time added conditioning, a VAE that asks for fp32
decoding like SDXL's), saved once to the cache and loaded back through the loader users use.
``sdxl_shaped_pipeline``: the exact SDXL-base-1.0 architecture, in memory, for benchmarks. Both
tokenise with the real CLIP tokenizer (asyndm/offline/sd.py), padded as SDXL's two tokenizers pad.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..paths import cache_dir
from .saving import save_once
from .sd import clip_tokenizer

TINY_SDXL_VERSION = "tiny-sdxl-v1"

# SDXL-base-1.0's scheduler_config.json: Euler on SD's scaled-linear schedule. asyndm and the
# equivalence tests turn it into DDIM with DDIMScheduler.from_config, as users do.
SDXL_SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def _text_encoders(hidden: tuple[int, int], layers: tuple[int, int], heads: tuple[int, int], projection_dim: int):
    """SDXL's pair: CLIP (quick_gelu; its penultimate hidden states) and CLIP with a text projection
    (gelu; penultimate hidden states and the projected pooled embedding)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def config(i: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=49408,
            hidden_size=hidden[i],
            intermediate_size=4 * hidden[i],
            num_hidden_layers=layers[i],
            num_attention_heads=heads[i],
            max_position_embeddings=77,
            hidden_act=act,
            projection_dim=projection_dim,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )

    return CLIPTextModel(config(0, "quick_gelu")), CLIPTextModelWithProjection(config(1, "gelu"))


def _assemble(unet, vae, text_encoder, text_encoder_2):
    """A StableDiffusionXLPipeline with SDXL-base's scheduler config and tokenizers."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer("<|endoftext|>"),
        tokenizer_2=clip_tokenizer("!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _unet(block_out_channels, layers_per_block, transformer_layers_per_block, heads, time_ids_dim, projection_dim,
          cross_attention_dim, sample_size, norm_num_groups=32):
    """An SDXL-shaped UNet: no attention at full resolution, text-time added conditioning."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        transformer_layers_per_block=transformer_layers_per_block,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=heads,  # diffusers' historical name: the number of heads per block
        cross_attention_dim=cross_attention_dim,
        use_linear_projection=True,
        norm_num_groups=norm_num_groups,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_ids_dim,
        # pooled text (text_encoder_2's projection) + 6 size/crop ids, each embedded sinusoidally
        projection_class_embeddings_input_dim=projection_dim + 6 * time_ids_dim,
    )


def _vae(block_out_channels, layers_per_block, sample_size, norm_num_groups=32):
    """SDXL's VAE settings: scaling factor 0.13025, and fp16 decoding upcast to fp32 (force_upcast)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        latent_channels=4,
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        sample_size=sample_size,
        scaling_factor=0.13025,
        force_upcast=True,
    )


def _tiny_sdxl_pipeline():
    """32×32 latents, 64 px images; cross-attention at 16×16 and, with two transformer layers per
    block, at 8×8 = latent/4 in the last down block, the mid block and the first up block (as SDXL
    has its many layers at 32×32 = 128/4)."""
    torch.manual_seed(0)
    text_encoder, text_encoder_2 = _text_encoders(hidden=(32, 32), layers=(2, 2), heads=(4, 4), projection_dim=32)
    torch.manual_seed(1)
    unet = _unet(
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        transformer_layers_per_block=(1, 1, 2),
        heads=(2, 4, 8),
        time_ids_dim=8,
        projection_dim=text_encoder_2.config.projection_dim,
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        sample_size=32,
        norm_num_groups=8,
    )
    torch.manual_seed(2)
    vae = _vae(block_out_channels=(16, 32), layers_per_block=1, sample_size=64, norm_num_groups=8)
    return _assemble(unet, vae, text_encoder, text_encoder_2)


def build_tiny_sdxl_pipeline(root: Path | None = None) -> Path:
    """Build (once) and save the tiny SDXL pipeline as a diffusers folder; returns its path."""
    return save_once((root or cache_dir() / "models") / TINY_SDXL_VERSION, _tiny_sdxl_pipeline)


def sdxl_shaped_pipeline():
    """The exact SDXL-base-1.0 architecture (2.6 B UNet, CLIP ViT-L + OpenCLIP bigG text encoders,
    SDXL VAE) with random weights, in memory, for benchmarks. Built in torch's default dtype (the
    benchmark sets it to the run's precision, so fp16 needs no fp32 copy: 14 GB in fp32)."""
    torch.manual_seed(0)
    text_encoder, text_encoder_2 = _text_encoders(hidden=(768, 1280), layers=(12, 32), heads=(12, 20),
                                                  projection_dim=1280)
    unet = sdxl_base_unet()
    vae = _vae(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=1024)
    return _assemble(unet, vae, text_encoder, text_encoder_2)


def sdxl_base_unet():
    """SDXL-base-1.0's UNet (2.6 B parameters; build it under ``torch.device("meta")`` to read its
    structure without the memory): 128×128 latents, cross-attention at 64×64 and, ten transformer
    layers per block, at 32×32; context 768 + 1280, pooled text 1280 + 6 size ids × 256."""
    return _unet(
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        heads=(5, 10, 20),
        time_ids_dim=256,
        projection_dim=1280,
        cross_attention_dim=768 + 1280,
        sample_size=128,
    )
