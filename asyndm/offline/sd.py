"""The project's own offline SD-shaped pipelines: built with random weights, no download.

``model=tiny`` (a small SD-shaped pipeline saved once to the cache and loaded back through the same
loader users use) and the exact SD2.1-base architecture for benchmarks. The real CLIP tokenizer is
rebuilt from the BPE file open_clip ships, so item words tokenise exactly as for Stable Diffusion.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import torch

from ..paths import cache_dir
from .saving import save_once

TINY_VERSION = "tiny-sd-v1"


def clip_bpe_files(folder: Path) -> None:
    """vocab.json + merges.txt of the real CLIP tokenizer, from the BPE file open_clip ships."""
    import open_clip.tokenizer as oct

    bpe = Path(oct.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(oct.bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _tiny_pipeline():
    """A small SD-shaped pipeline with random weights: 64×64 latents, cross-attention at 32 and 16."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        use_linear_projection=True,
    )
    torch.manual_seed(1)
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=128,
    )
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    return _assemble(unet, vae, text_encoder, clip_tokenizer("<|endoftext|>"))


def clip_tokenizer(pad_token: str):
    """The real CLIP tokenizer, offline (SD1 pads with <|endoftext|>, SD2 with '!')."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        clip_bpe_files(Path(tmp))
        # from_pretrained reads the files in transformers 4 and 5 alike
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77, pad_token=pad_token)


def sd_ddim_scheduler(prediction_type: str = "epsilon"):
    """DDIM on SD 1.x/2.x's own noise schedule, as their scheduler configs set it."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def _assemble(unet, vae, text_encoder, tokenizer):
    """A StableDiffusionPipeline with SD's own DDPM schedule (as the SD 1.x/2.x configs)."""
    from diffusers import StableDiffusionPipeline

    scheduler = sd_ddim_scheduler()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sd21_shaped_pipeline():
    """The exact SD2.1-base architecture (865 M UNet, OpenCLIP-H text encoder) with random weights.

    For benchmarks: same shapes and kernels as the real model, built offline in memory.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            max_position_embeddings=77,
            hidden_act="gelu",
            projection_dim=512,
        )
    )
    return _assemble(unet, vae, text_encoder, clip_tokenizer("!"))


def build_tiny_pipeline(root: Path | None = None) -> Path:
    """Build (once) and save the tiny pipeline as a diffusers folder; returns its path."""
    return save_once((root or cache_dir() / "models") / TINY_VERSION, _tiny_pipeline)
