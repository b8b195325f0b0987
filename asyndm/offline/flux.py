"""Offline Flux-shaped pipelines with random weights: ``model=tiny_flux`` and the FLUX.1-dev architecture.

``tiny_flux`` is FLUX.1-dev in small: double-stream and single-stream blocks with rotary position
embeddings, embedded guidance, CLIP (pooled) and a small T5 (the text tokens), a 16-channel VAE with
FLUX's factor 8, and the flow-matching Euler scheduler with the resolution-dependent shift. Like the
FluxPipeline it defaults to 1024 px; pass ``sample.height`` / ``sample.width`` for small images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..paths import cache_dir
from .saving import save_once
from .sd import clip_tokenizer
from .sd3 import _wide_t5, sd3_vae
from .t5 import t5_tokenizer, tiny_t5_encoder

TINY_FLUX_VERSION = "tiny-flux-v2"  # v2: 2 + 4 blocks (FLUX.1's 1 : 2 ratio); v1 had 2 + 2


def flux_dev_scheduler():
    """FLUX.1-dev's scheduler config: shift 3, resolution-dependent (dynamic) shift between 0.5 and 1.15."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                           base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                           max_image_seq_len=4096)


def _vae(block_out_channels, layers_per_block, norm_groups=32):
    vae = sd3_vae(block_out_channels, layers_per_block, norm_groups)
    vae.register_to_config(scaling_factor=0.3611, shift_factor=0.1159)  # FLUX.1's VAE factors
    return vae


def _clip(hidden: int, layers: int, heads: int, seed: int, intermediate: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(
        CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                       hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    )


def _assemble(transformer, vae, clip, t5, t5_tok):
    from diffusers import FluxPipeline

    return FluxPipeline(scheduler=flux_dev_scheduler(), vae=vae, text_encoder=clip,
                        tokenizer=clip_tokenizer("<|endoftext|>"), text_encoder_2=t5, tokenizer_2=t5_tok,
                        transformer=transformer)


def _tiny_flux_pipeline():
    """2 double-stream + 4 single-stream blocks (FLUX.1-dev's 19 + 38 in the same ratio), dim 32 (2 heads of 16,
    rotary axes 4 + 6 + 6), guidance embedded."""
    from diffusers import FluxTransformer2DModel

    t5_tok = t5_tokenizer()
    clip_dim, t5_dim = 32, 32
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels × the 2×2 packing
        num_layers=2,
        num_single_layers=4,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_dim,
        pooled_projection_dim=clip_dim,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    torch.manual_seed(1)
    vae = _vae((8, 16, 16, 16), layers_per_block=1, norm_groups=8)  # factor 8, as FLUX.1's
    clip = _clip(clip_dim, 2, 4, seed=2)
    t5 = tiny_t5_encoder(len(t5_tok), t5_dim, seed=3)
    return _assemble(transformer, vae, clip, t5, t5_tok)


def build_tiny_flux(root: Path | None = None) -> Path:
    """Build (once) and save ``tiny_flux`` as a diffusers folder in the cache; returns its path."""
    return save_once((root or cache_dir() / "models") / TINY_FLUX_VERSION, _tiny_flux_pipeline)


def flux_dev_shaped_pipeline():
    """The FLUX.1-dev architecture (12 B: 19 double-, 38 single-stream blocks) with random weights, in memory.

    For benchmarks. CLIP-L and the VAE are full size; T5-XXL keeps its width (4096) with one layer
    instead of 24 (it encodes once per prompt batch, outside the per-step cost).
    """
    from diffusers import FluxTransformer2DModel


    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                         attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                         pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    vae = _vae((128, 256, 512, 512), layers_per_block=2)
    clip = _clip(768, 12, 12, seed=2, intermediate=3072)
    t5_tok = t5_tokenizer()
    return _assemble(transformer, vae, clip, _wide_t5(len(t5_tok), seed=4), t5_tok)
