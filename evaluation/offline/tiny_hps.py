"""A tiny random HPS checkpoint in the official file layout (`{"state_dict": <open_clip CLIP>}`), offline.

It is the tiny open_clip architecture of `tiny_clip` (the real CLIP tokenizer, 64 px images) with
its own seed, saved the way `HPS_v2.1_compressed.pt` is, so `eval=[hpsv2_tiny]` runs the real
loading, the `hpsv2` preprocessing (resize of the longest side, zero padding) and batching.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evaluation.offline.tiny_clip import TINY_ARCH, _atomic_write, register_tiny_config

TINY_HPS_VERSION = "v1"
TINY_HPS_SEED = 21


def tiny_hps_checkpoint() -> tuple[str, Path]:
    """(open_clip arch, checkpoint path) of the tiny HPS, building it on first use (deterministic)."""
    import open_clip

    config_path = register_tiny_config()
    checkpoint = config_path.parent.parent / f"hps-{TINY_HPS_VERSION}" / "HPS_tiny_compressed.pt"
    if not checkpoint.is_file():
        with torch.random.fork_rng(devices=[]):  # building must not move the caller's random stream
            torch.manual_seed(TINY_HPS_SEED)
            model = open_clip.create_model(TINY_ARCH, pretrained=None, device="cpu")
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        _atomic_write(checkpoint, lambda tmp: torch.save({"epoch": 0, "state_dict": state}, tmp))
    return TINY_ARCH, checkpoint
