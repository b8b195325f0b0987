"""A tiny random ImageReward checkpoint in the official file layout, built offline.

The folder holds what THUDM/ImageReward ships, at toy size: `ImageReward.pt` (a state dict under
the official key names: `blip.visual_encoder.*` of BLIP's timm-style ViT, `blip.text_encoder.*`
of BLIP's MED BERT, `mlp.layers.{0,2,4,6,7}.*`, plus the unused `blip.vision_proj/text_proj`),
`med_config.json`, and a WordPiece `vocab.txt` for `BertTokenizer`. `official_layout` writes the
key names and shapes from BLIP's own naming, not from the port's key map, so loading it tests
the map; scripts/parity_image_reward.py checks `official_layout` against the real model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from asyndm.paths import cache_dir
from evaluation.offline.tiny_bert import wordpiece_tokens
from evaluation.offline.tiny_vlm import save_folder_atomically

TINY_IMAGE_REWARD_VERSION = "v1"
TINY_IMAGE_REWARD_SEED = 0
TINY_VISION = dict(width=32, layers=2, patch_size=8, image_size=32, mlp_width=64)
TINY_VISION_HEADS = 2  # eval.imagereward.vision_heads of imagereward_tiny.yaml
TINY_MED = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=40)
HEAD_WIDTHS = (1024, 128, 64, 16, 1)  # the official MLP's Linear widths
HEAD_INDICES = (0, 2, 4, 6, 7)  # their positions in the official nn.Sequential (Dropouts between)
PROJECTION = 256  # BLIP's retrieval projections (in the checkpoint, unused by the reward)
WORDS = ("a an the of on in with and is cat dog horse monkey rabbit bird bear elephant lion tiger eating playing "
         "riding reading sitting running sandwich basketball guitar book bicycle piano red blue green photo").split()


def med_config(vocab_size: int, **sizes) -> dict:
    """A med_config.json like THUDM/ImageReward's (a BERT config with cross-attention)."""
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "model_type": "bert",
            "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": vocab_size, "encoder_width": 768,
            "add_cross_attention": True, **sizes}


def official_layout(vision: dict, med: dict, head_widths=HEAD_WIDTHS) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state dict of the official `ImageReward` module for these sizes."""
    d, p, m = vision["width"], vision["patch_size"], vision["mlp_width"]
    patches = (vision["image_size"] // p) ** 2
    layout: dict[str, tuple[int, ...]] = {
        "blip.visual_encoder.cls_token": (1, 1, d), "blip.visual_encoder.pos_embed": (1, patches + 1, d),
        "blip.visual_encoder.patch_embed.proj.weight": (d, 3, p, p), "blip.visual_encoder.patch_embed.proj.bias": (d,)}
    for i in range(vision["layers"]):
        block = f"blip.visual_encoder.blocks.{i}."
        for name, shape in [("norm1", (d,)), ("attn.qkv", (3 * d, d)), ("attn.proj", (d, d)), ("norm2", (d,)),
                            ("mlp.fc1", (m, d)), ("mlp.fc2", (d, m))]:
            layout[block + name + ".weight"] = shape
            layout[block + name + ".bias"] = (shape[0],)
    layout["blip.visual_encoder.norm.weight"] = layout["blip.visual_encoder.norm.bias"] = (d,)
    h, inner = med["hidden_size"], med["intermediate_size"]
    text = "blip.text_encoder."
    layout.update({text + "embeddings.position_ids": (1, med["max_position_embeddings"]),
                   text + "embeddings.word_embeddings.weight": (med["vocab_size"], h),
                   text + "embeddings.position_embeddings.weight": (med["max_position_embeddings"], h),
                   text + "embeddings.LayerNorm.weight": (h,), text + "embeddings.LayerNorm.bias": (h,)})
    for j in range(med["num_hidden_layers"]):
        layer = f"{text}encoder.layer.{j}."
        linears = [("attention.self.query", h, h), ("attention.self.key", h, h), ("attention.self.value", h, h),
                   ("attention.output.dense", h, h), ("crossattention.self.query", h, h),
                   ("crossattention.self.key", h, d), ("crossattention.self.value", h, d),
                   ("crossattention.output.dense", h, h), ("intermediate.dense", inner, h), ("output.dense", h, inner)]
        for name, rows, cols in linears:
            layout[layer + name + ".weight"] = (rows, cols)
            layout[layer + name + ".bias"] = (rows,)
        for name in ("attention.output.LayerNorm", "crossattention.output.LayerNorm", "output.LayerNorm"):
            layout[layer + name + ".weight"] = layout[layer + name + ".bias"] = (h,)
    layout.update({"blip.vision_proj.weight": (PROJECTION, d), "blip.vision_proj.bias": (PROJECTION,),
                   "blip.text_proj.weight": (PROJECTION, h), "blip.text_proj.bias": (PROJECTION,)})
    widths = [h, *head_widths]
    for index, rows, cols in zip(HEAD_INDICES, widths[1:], widths[:-1]):
        layout[f"mlp.layers.{index}.weight"] = (rows, cols)
        layout[f"mlp.layers.{index}.bias"] = (rows,)
    return layout


def random_state(layout: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors for a layout: no weight is 0 or 1 everywhere, so a swapped name changes the score."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key.endswith("position_ids"):
            state[key] = torch.arange(shape[1]).unsqueeze(0)
        elif key.startswith("mlp.") and key.endswith(".weight"):  # O(1) rewards: scale 1/sqrt(fan_in)
            state[key] = torch.randn(shape, generator=generator) / shape[1] ** 0.5
        elif "norm" in key.lower() and key.endswith(".weight"):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:
            state[key] = 0.02 * torch.randn(shape, generator=generator)
    return state


def write_vocab(folder: Path, words=WORDS) -> int:
    """vocab.txt and tokenizer_config.json for an uncased BertTokenizer; returns the vocabulary size."""
    tokens = wordpiece_tokens(words)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}, indent=2))
    return len(tokens)


def _build(folder: Path) -> None:
    vocab_size = write_vocab(folder) + 2  # + BLIP's [DEC] and [ENC], as bert-base-uncased's 30522 + 2 = 30524
    config = med_config(vocab_size, **TINY_MED)
    (folder / "med_config.json").write_text(json.dumps(config, indent=2))
    state = random_state(official_layout(TINY_VISION, config), TINY_IMAGE_REWARD_SEED)
    torch.save(state, folder / "ImageReward.pt")
    (folder / "config.json").write_text(json.dumps({"tiny_image_reward": TINY_IMAGE_REWARD_VERSION,
                                                    "vision": TINY_VISION, "vision_heads": TINY_VISION_HEADS}))


def tiny_image_reward_dir() -> Path:
    """Folder with the tiny ImageReward.pt, med_config.json and vocab.txt, built on first use (offline)."""
    return save_folder_atomically(cache_dir() / "models" / "tiny-image-reward" / TINY_IMAGE_REWARD_VERSION, _build)
