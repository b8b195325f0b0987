"""Offline Wan-shaped pipelines with random weights: ``model=tiny_wan`` and the Wan 2.1 1.3B architecture.

``tiny_wan`` is Wan 2.1 T2V in small: a ``WanTransformer3DModel`` (3-D patches of 1×2×2 latent
pixels, rotary position embeddings over frames, rows and columns, self-attention, the text on
cross-attention, AdaLN from one timestep per token or per sample), a causal 3-D ``AutoencoderKLWan``
(factor 4 in time, 8 in space, 16 latent channels with Wan's per-channel mean and std), a small
UMT5 encoder and a SentencePiece-style tokenizer (asyndm/offline/t5.py: no UMT5 vocabulary ships
offline), and Wan 2.1's scheduler config (UniPC with flow shift 3; asyndm samples with the
flow-matching Euler scheduler of the same shift, docs/video.md).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..paths import cache_dir
from .saving import save_once
from .t5 import t5_tokenizer

TINY_WAN_VERSION = "tiny-wan-v1"
WAN21_FLOW_SHIFT = 3.0  # Wan2.1-T2V-1.3B-Diffusers' scheduler (480p)


def wan_scheduler(flow_shift: float = WAN21_FLOW_SHIFT):
    """Wan's own scheduler config: UniPC on flow-matching sigmas with a static shift."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                   flow_shift=flow_shift)


def tiny_umt5_encoder(vocab_size: int, d_model: int, seed: int):
    """A small ``UMT5EncoderModel`` (gated GELU, per-layer relative attention biases, as umt5-xxl)."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model,
                                       num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                       feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
                                       tie_word_embeddings=False))


def _tiny_wan_pipeline():
    """4 blocks of width 32 (2 heads of 16: rotary axes 8 + 4 + 4), text width 32, a VAE of base width 8."""
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    tokenizer = t5_tokenizer()
    text_dim = 32
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                                        in_channels=16, out_channels=16, text_dim=text_dim, freq_dim=64, ffn_dim=64,
                                        num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        eps=1e-6, rope_max_seq_len=1024)
    torch.manual_seed(1)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
                           temperal_downsample=[False, True, True])
    text_encoder = tiny_umt5_encoder(len(tokenizer), text_dim, seed=2)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=wan_scheduler(),
                       transformer=transformer)


def build_tiny_wan(root: Path | None = None) -> Path:
    """Build (once) and save ``tiny_wan`` as a diffusers folder in the cache; returns its path."""
    return save_once((root or cache_dir() / "models") / TINY_WAN_VERSION, _tiny_wan_pipeline)


def wan21_1_3b_shaped_pipeline():
    """The Wan 2.1 T2V 1.3B transformer (30 blocks of width 1536, 12 heads) with random weights, in memory.

    For benchmarks: the VAE is Wan's full one; UMT5-XXL keeps its width (4096) with one layer instead
    of 24 (it encodes once per prompt batch, outside the per-step cost).
    """
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    tokenizer = t5_tokenizer()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                                        in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960,
                                        num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        eps=1e-6, rope_max_seq_len=1024)
    vae = AutoencoderKLWan()
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(2)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=4096, d_kv=64, d_ff=10240,
                                               num_layers=1, num_heads=64, feed_forward_proj="gated-gelu",
                                               is_encoder_decoder=False, use_cache=False))
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=wan_scheduler(),
                       transformer=transformer)


def tiny_wan22_ti2v_pipeline():
    """Wan 2.2 TI2V in small, in memory: the per-token timestep path (``expand_timesteps``), 48 latent
    channels, the residual VAE with a 2×2 patchified output (factor 16 in space), flow shift 5."""
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    tokenizer = t5_tokenizer()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                                        in_channels=48, out_channels=48, text_dim=32, freq_dim=64, ffn_dim=64,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        eps=1e-6, rope_max_seq_len=1024)
    torch.manual_seed(1)
    generator = torch.Generator().manual_seed(1)
    mean, std = torch.randn(48, generator=generator) * 0.5, 1 + torch.rand(48, generator=generator)
    vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                           attn_scales=[], temperal_downsample=[False, True, True], is_residual=True, patch_size=2,
                           scale_factor_temporal=4, scale_factor_spatial=16, in_channels=12, out_channels=12,
                           latents_mean=mean.tolist(), latents_std=std.tolist())
    text_encoder = tiny_umt5_encoder(len(tokenizer), 32, seed=2)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=wan_scheduler(5.0),
                       transformer=transformer, expand_timesteps=True)
