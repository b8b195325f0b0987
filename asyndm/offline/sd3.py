"""Offline SD3-shaped pipelines with random weights: ``model=tiny_sd3`` and the SD3.5-medium architecture.

``tiny_sd3`` has everything SD3.5-medium has, small: an MMDiT with joint blocks (the first two with
SD3.5's dual attention, qk RMS-norm), two CLIP text encoders with projections, a small T5, a
16-channel VAE and the flow-matching Euler scheduler with shift 3. Its tokenizers tokenise as the
real ones do (CLIP exactly; T5 with the offline Unigram vocabulary of asyndm/offline/t5.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..paths import cache_dir
from .saving import save_once
from .sd import clip_tokenizer
from .t5 import t5_tokenizer, tiny_t5_encoder

TINY_SD3_VERSION = "tiny-sd3-v1"


def _clip_with_projection(hidden: int, layers: int, heads: int, seed: int, intermediate: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=hidden,
            intermediate_size=intermediate or 2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=77,
            projection_dim=hidden,
            hidden_act="gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )


def sd3_vae(block_out_channels: tuple[int, ...], layers_per_block: int, norm_groups: int = 32):
    """SD3's 16-channel VAE shape (no quant convs; SD3's scaling and shift factors)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        latent_channels=16,
        norm_num_groups=norm_groups,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=1.5305,
        shift_factor=0.0609,
    )


def _assemble(transformer, vae, clip_l, clip_g, t5, t5_tok):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=clip_l,
        tokenizer=clip_tokenizer("<|endoftext|>"),
        text_encoder_2=clip_g,
        tokenizer_2=clip_tokenizer("!"),
        text_encoder_3=t5,
        tokenizer_3=t5_tok,
    )


def _tiny_sd3_pipeline():
    """16×16 image tokens at the default 64 px (VAE factor 2, patch 2), 4 joint blocks, dim 32."""
    from diffusers import SD3Transformer2DModel

    t5_tok = t5_tokenizer()
    clip_dim, t5_dim = 32, 64  # T5's width holds both CLIPs' concatenated features, as in SD3
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        num_layers=4,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=t5_dim,
        caption_projection_dim=32,
        pooled_projection_dim=2 * clip_dim,
        out_channels=16,
        pos_embed_max_size=32,
        dual_attention_layers=(0, 1),
        qk_norm="rms_norm",
    )
    torch.manual_seed(1)
    vae = sd3_vae((16, 32), layers_per_block=1, norm_groups=8)
    clip_l = _clip_with_projection(clip_dim, 2, 4, seed=2)
    clip_g = _clip_with_projection(clip_dim, 2, 4, seed=3)
    t5 = tiny_t5_encoder(len(t5_tok), t5_dim, seed=4)
    return _assemble(transformer, vae, clip_l, clip_g, t5, t5_tok)


def build_tiny_sd3(root: Path | None = None) -> Path:
    """Build (once) and save ``tiny_sd3`` as a diffusers folder in the cache; returns its path."""
    return save_once((root or cache_dir() / "models") / TINY_SD3_VERSION, _tiny_sd3_pipeline)


def sd35_medium_shaped_pipeline():
    """The SD3.5-medium architecture (2.5 B MMDiT, 13 dual-attention blocks) with random weights, in memory.

    For benchmarks. CLIP-L, CLIP-G and the VAE are full size; T5-XXL keeps its width (4096, so the
    joint sequence and every projection are the real ones) but one layer instead of 24: it encodes
    once per prompt batch, outside the per-step cost, and 4.7 B random parameters would dominate the
    set-up time.
    """
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        out_channels=16,
        pos_embed_max_size=384,
        dual_attention_layers=tuple(range(13)),
        qk_norm="rms_norm",
    )
    vae = sd3_vae((128, 256, 512, 512), layers_per_block=2)
    clip_l = _clip_with_projection(768, 12, 12, seed=2, intermediate=3072)
    clip_g = _clip_with_projection(1280, 32, 20, seed=3, intermediate=5120)
    t5_tok = t5_tokenizer()
    t5 = _wide_t5(len(t5_tok), seed=4)
    return _assemble(transformer, vae, clip_l, clip_g, t5, t5_tok)


def _wide_t5(vocab_size: int, seed: int):
    """T5-XXL's width (d_model 4096, 64 heads, d_ff 10240) with one layer."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(
        T5Config(vocab_size=vocab_size, d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64,
                 feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False)
    )
