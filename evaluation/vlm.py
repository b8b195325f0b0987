"""One chat vision-language model per process, shared by `vlm_judge` and `caption_bertscore`.

Both evaluators ask the same VLM (by default the paper's Qwen2.5-VL-7B-Instruct) a question per
image: a rating for `vlm_judge`, a caption for `caption_bertscore`. `load_vlm` caches the loaded
model by (folder, device, dtype), so the two evaluators in one run load the 7B model once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

TINY = "tiny"
# A tokenizer smaller than this is the 2-token stub that transformers 5 can return offline.
MIN_VOCAB = 100
_VLMS: dict[tuple[str, str, str], "ChatVLM"] = {}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_model(model: str, key: str, tiny_dir: Callable[[], Path] | None = None,
                  marker: str = "config.json") -> str:
    """Local folder or hub id of a transformers model; `key` names the config key in errors.

    `tiny` selects the folder that `tiny_dir()` builds (default: the tiny random Qwen2.5-VL of
    `tiny_vlm`). A hub id whose `marker` file is not in the local cache fails at once when
    HF_HUB_OFFLINE is set, instead of deep inside `from_pretrained`.
    """
    if model == TINY:
        if tiny_dir is None:
            from evaluation.offline.tiny_vlm import tiny_vlm_dir as tiny_dir
        return str(tiny_dir())
    path = Path(str(model)).expanduser()
    if path.is_dir():
        if not (path / marker).is_file():
            raise FileNotFoundError(f"{key}={model!r} is a folder without {marker}; point it at a folder "
                                    f"written by save_pretrained (or a downloaded hub snapshot)")
        return str(path)
    if str(model).startswith(("/", ".", "~")) or str(model).count("/") > 1:
        raise FileNotFoundError(f"{key}={model!r}: no such folder. Set it to a local model folder or a hub id "
                                f"such as Qwen/Qwen2.5-VL-7B-Instruct")
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(str(model), marker), str):
            raise FileNotFoundError(
                f"{key}={model!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. Download "
                f"it on a machine with internet (hf download {model}) and copy the cache, or set {key} to a "
                f"local model folder, or use {key}=tiny for a test run")
    return str(model)


def pick_device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """`auto`: CUDA with bfloat16 when present, else CPU with float32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but CUDA is not available; use device=auto or cpu")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype={dtype!r}; use auto, float32, bfloat16 or float16")
    return torch.device(device), getattr(torch, dtype)


def check_vocab(tokenizer, source: str) -> None:
    """Raise on transformers 5's silent 2-token stub tokenizer (docs/PITFALLS.md)."""
    if len(tokenizer) < MIN_VOCAB:
        raise RuntimeError(f"the tokenizer loaded from {source!r} has only {len(tokenizer)} tokens, so its files "
                           f"are missing (transformers returns a stub offline). Provide the full model folder")


class ChatVLM:
    """A chat VLM answering one text question about each image, with greedy decoding."""

    def __init__(self, source: str, device: torch.device, dtype: torch.dtype):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.source = source
        self.device = device
        self.processor = AutoProcessor.from_pretrained(source)
        tokenizer = self.processor.tokenizer
        check_vocab(tokenizer, source)
        if not getattr(self.processor, "chat_template", None) and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"model {source!r} has no chat template; use a chat (instruct) VLM")
        tokenizer.padding_side = "left"  # batched generation continues every row from its last token
        self.model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype).to(device).eval()

    @torch.no_grad()
    def ask(self, images: list[Image.Image], questions: list[str], max_new_tokens: int,
            batch_size: int) -> list[str]:
        """The greedy answer to `questions[i]` about `images[i]`, special tokens removed, stripped."""
        answers: list[str] = []
        for start in range(0, len(images), batch_size):
            batch_images = [im.convert("RGB") for im in images[start:start + batch_size]]
            texts = [self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                add_generation_prompt=True, tokenize=False) for question in questions[start:start + batch_size]]
            inputs = self.processor(text=texts, images=batch_images, padding=True, return_tensors="pt").to(self.device)
            output = self.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                         temperature=None, top_p=None, top_k=None)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]  # (B, <= max_new_tokens)
            answers += [a.strip() for a in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]
        return answers


def load_vlm(model: str, device: str = "auto", dtype: str = "auto", key: str = "model") -> ChatVLM:
    """The chat VLM `model` (hub id, local folder or `tiny`), loaded once per process."""
    source = resolve_model(model, key)
    torch_device, torch_dtype = pick_device_dtype(device, dtype)
    cache_key = (source, str(torch_device), str(torch_dtype))
    if cache_key not in _VLMS:
        _VLMS[cache_key] = ChatVLM(source, torch_device, torch_dtype)
    return _VLMS[cache_key]


def clear_cache() -> None:
    """Forget loaded VLMs (with `registry.clear_cache()`, frees their weights)."""
    _VLMS.clear()


def fill_template(template: str, prompt: str | None, key: str) -> str:
    """`template` with `{prompt}` replaced (str.format is not used: templates may contain braces)."""
    if prompt is None:
        return template
    if template.count("{prompt}") != 1:
        raise ValueError(f"{key} must contain '{{prompt}}' exactly once, got {template!r}")
    return template.replace("{prompt}", prompt)
