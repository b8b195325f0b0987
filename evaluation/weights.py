"""Where an evaluator's weight files come from: a local path, or a file of a Hugging Face repo.

Offline (HF_HUB_OFFLINE set) a hub file that is not in the local cache fails at once with the
repo, the file and the fix, instead of deep inside a download.
"""

from __future__ import annotations

import os
from pathlib import Path


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def looks_like_path(value: str) -> bool:
    """A value meant as a local path rather than a hub id (`org/name` has exactly one slash)."""
    return value.startswith(("/", ".", "~")) or value.count("/") > 1 or value.endswith((".pt", ".pth", ".bin",
                                                                                        ".json", ".safetensors"))


def local_file(value: str, key: str, what: str) -> Path:
    """`value` as an existing file; `key` and `what` name the config key and the file in the error."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key}={value!r}: no such file. Set it to {what}")
    return path


def hub_file(repo_id: str, filename: str, key: str, fix: str) -> Path:
    """Local path of `filename` in hub repo `repo_id`: from the cache, or downloaded when online."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    if offline():
        raise FileNotFoundError(
            f"{key}: {filename} of {repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
            f"Download it on a machine with internet (hf download {repo_id} {filename}) and copy the cache, "
            f"or {fix}")
    return Path(hf_hub_download(repo_id, filename))
