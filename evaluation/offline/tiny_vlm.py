"""A tiny, randomly initialised Qwen2.5-VL chat model saved as a local folder, for tests and demos.

It is built offline: a byte-level tokenizer (256 byte tokens, no merges, Qwen's special tokens)
made with the `tokenizers` library, Qwen's own image processor, a Qwen-style chat template and a
two-layer model from a config. Loading it runs the same `AutoProcessor` /
`AutoModelForImageTextToText.from_pretrained` path as a real checkpoint. Its answers are random
bytes, which makes it a good test of how unparseable answers are handled.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from asyndm.paths import cache_dir

# Bump when the config, tokenizer or initialisation changes, so that old folders are not reused.
TINY_VLM_VERSION = "v1"
TINY_VLM_SEED = 0
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL's chat template, reduced to text and image parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Images are resized to 56x56 pixels: 4x4 patches of 14 px, merged 2x2 into 4 image tokens.
IMAGE_PIXELS = 56 * 56


def build_tokenizer():
    """Byte-level BPE tokenizer with Qwen's special tokens (ids 256..262) and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}  # 256 bytes
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE, model_max_length=4096)


def _build(folder: Path) -> None:
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tokenizer = build_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=IMAGE_PIXELS, max_pixels=IMAGE_PIXELS),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    config = Qwen2_5_VLConfig(
        # head_dim 16: the multimodal rope sections (t, h, w) must sum to head_dim / 2.
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[1], window_size=112),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    # fork_rng: building must not move the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_VLM_SEED)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def save_folder_atomically(target: Path, build) -> Path:
    """Run `build(tmp_folder)` and rename the folder to `target`, so readers never see half a model."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_vlm_dir() -> Path:
    """Folder of the tiny VLM (model + processor), building it on first use (offline, deterministic)."""
    return save_folder_atomically(cache_dir() / "models" / "tiny-vlm" / TINY_VLM_VERSION, _build)
