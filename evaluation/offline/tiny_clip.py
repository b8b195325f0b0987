"""A tiny, randomly initialised open_clip model that is built offline, for tests and demos.

Its scores mean nothing, but it runs the exact code path of a real CLIP (the real open_clip
tokenizer, the real preprocessing, the same checkpoint loading) in well under a second on a CPU.
The weights come from a fixed seed, so every machine with the same torch builds the same model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from asyndm.paths import cache_dir

TINY_ARCH = "asyndm-tiny-clip"
# Bump when the config or the initialisation changes, so that old checkpoints are not reused.
TINY_VERSION = "v1"
TINY_SEED = 0
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32},
    # vocab_size and context_length of real CLIP, so that open_clip's real tokenizer works.
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder and rename it, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def register_tiny_config() -> Path:
    """Make `TINY_ARCH` known to open_clip (`create_model`, `get_tokenizer`); returns its json file."""
    import open_clip

    config_path = cache_dir() / "models" / "tiny-clip" / TINY_VERSION / f"{TINY_ARCH}.json"
    if not config_path.is_file():
        _atomic_write(config_path, lambda tmp: Path(tmp).write_text(json.dumps(TINY_CONFIG, indent=2)))
    if open_clip.get_model_config(TINY_ARCH) is None:
        open_clip.add_model_config(config_path)
    return config_path


def tiny_clip_checkpoint() -> Path:
    """Path of the tiny model's checkpoint, building it on first use (offline, deterministic)."""
    import open_clip

    config_path = register_tiny_config()
    checkpoint = config_path.with_name("open_clip_model.pt")
    if checkpoint.is_file():
        return checkpoint
    # fork_rng: building must not move the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = open_clip.create_model(TINY_ARCH, pretrained=None, device="cpu")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    _atomic_write(checkpoint, lambda tmp: torch.save(state, tmp))
    return checkpoint
