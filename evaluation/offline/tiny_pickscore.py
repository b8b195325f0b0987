"""A tiny random PickScore folder, built offline: a transformers `CLIPModel` and a CLIP processor.

The folder has the files of the two hub repos PickScore uses (`yuvalkirstain/PickScore_v1`'s
config.json + model.safetensors, and the processor's preprocessor_config.json + tokenizer), so
`eval=[pickscore_tiny]` runs `CLIPModel.from_pretrained`, the PIL CLIP image processor and the
real CLIP tokenizer (from the BPE vocabulary open_clip ships).
"""

from __future__ import annotations

from pathlib import Path

import torch

from asyndm.offline.sd import clip_tokenizer
from asyndm.paths import cache_dir
from evaluation.offline.tiny_vlm import save_folder_atomically

TINY_PICKSCORE_VERSION = "v1"
TINY_PICKSCORE_SEED = 7
IMAGE_SIZE = 32


def _build(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = clip_tokenizer("<|endoftext|>")  # the real CLIP BPE, as laion's CLIP-H processor pads
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=IMAGE_SIZE, patch_size=8, hidden_act="gelu"),
        projection_dim=16, logit_scale_init_value=4.6052)  # exp(4.6052) = 100, PickScore's trained value
    with torch.random.fork_rng(devices=[]):  # building must not move the caller's random stream
        torch.manual_seed(TINY_PICKSCORE_SEED)
        model = CLIPModel(config).eval()
    processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE,
                                                                                     "width": IMAGE_SIZE})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def tiny_pickscore_dir() -> Path:
    """Folder of the tiny PickScore model and processor, built on first use (offline, deterministic)."""
    return save_folder_atomically(cache_dir() / "models" / "tiny-pickscore" / TINY_PICKSCORE_VERSION, _build)
