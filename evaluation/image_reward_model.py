"""ImageReward's network on transformers' BLIP classes, loaded from the official checkpoint.

ImageReward-v1.0 (Xu et al., NeurIPS 2023) is BLIP: a ViT-L/16 image encoder, a BERT text encoder
whose layers cross-attend to the image tokens ("MED", configured by `med_config.json`), and a
linear head on the text's [CLS] state whose output is standardised by a fixed mean and std.
transformers' `BlipVisionModel` and `BlipTextModel` are the same two networks under other
parameter names, so the official `ImageReward.pt` loads into them through `port_key`, the renaming
that transformers' own BLIP conversion script does for BLIP. Nothing of the `image-reward`
package is imported; scripts/parity_image_reward.py measures the agreement with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# The reward is standardised with the training set's mean and std (the official `ImageReward.mean/.std`).
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
# Official preprocessing: CLIP's normalisation after a bicubic resize and a centre crop.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_TEXT_TOKENS = 35  # the official tokenizer call pads and truncates every prompt to 35 tokens
VIT_LAYER_NORM_EPS = 1e-6  # BLIP's ViT uses LayerNorm(eps=1e-6); BlipVisionConfig's default is 1e-5
HEAD_LAYERS = (0, 2, 4, 6, 7)  # indices of the Linear layers in the official `mlp.layers` Sequential

_VISION = "blip.visual_encoder."
_TEXT = "blip.text_encoder."
_HEAD = "mlp.layers."
# Renaming of BLIP's timm-style ViT to BlipVisionModel, per block and outside the blocks.
_VIT_BLOCK = {"norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
              "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_VIT_TOP = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
            "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
            "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
            "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}
# Keys the reward does not use: BLIP's retrieval projections and a recomputed position buffer.
UNUSED_KEYS = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


def port_key(key: str) -> str | None:
    """The port's parameter name for an official ImageReward.pt key; None for keys the reward does not use.

    Raises KeyError for a key under the image, text or head prefixes that has no counterpart, so a
    checkpoint of another architecture fails loudly instead of loading half its weights.
    """
    if key.startswith(UNUSED_KEYS):
        return None
    if key.startswith(_TEXT):  # MED is BlipTextModel with the same names
        return "text." + key[len(_TEXT):]
    if key.startswith(_VISION):
        rest = key[len(_VISION):]
        if rest in _VIT_TOP:
            return "vision." + _VIT_TOP[rest]
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", rest)
        if match and match.group(2) in _VIT_BLOCK:
            block, name, kind = match.groups()
            return f"vision.encoder.layers.{block}.{_VIT_BLOCK[name]}.{kind}"
    elif key.startswith(_HEAD):
        match = re.fullmatch(r"(\d+)\.(weight|bias)", key[len(_HEAD):])
        if match and int(match.group(1)) in HEAD_LAYERS:
            return f"head.{HEAD_LAYERS.index(int(match.group(1)))}.{match.group(2)}"
    else:
        return None  # outside the reward model (e.g. training-time extras)
    raise KeyError(f"ImageReward checkpoint key {key!r} has no counterpart in the BLIP port; the checkpoint is "
                   f"not ImageReward-v1.0's architecture")


@dataclass(frozen=True)
class VisionShape:
    """The ViT's shape, read from the checkpoint (the official code fixes ViT-L/16 at 224 px)."""

    width: int
    layers: int
    patch_size: int
    image_size: int
    mlp_width: int


def vision_shape(state: dict[str, torch.Tensor]) -> VisionShape:
    """Width, depth, patch and image size of the checkpoint's ViT, from its tensor shapes."""
    try:
        patch = state[_VISION + "patch_embed.proj.weight"]  # (width, 3, p, p)
        positions = state[_VISION + "pos_embed"].shape[1] - 1  # (1, 1 + patches, width)
        mlp_width = state[_VISION + "blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as error:
        raise KeyError(f"ImageReward checkpoint has no {error.args[0]!r}; it is not an ImageReward.pt "
                       f"(keys start with {_VISION!r}, {_TEXT!r}, {_HEAD!r})") from None
    grid = round(positions ** 0.5)
    if grid * grid != positions:
        raise ValueError(f"ImageReward checkpoint: {positions} image patches do not form a square grid")
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith(_VISION + "blocks."))
    return VisionShape(width=patch.shape[0], layers=layers, patch_size=patch.shape[-1],
                       image_size=grid * patch.shape[-1], mlp_width=mlp_width)


def build_configs(med_config: dict, shape: VisionShape, vision_heads: int):
    """(BlipVisionConfig, BlipTextConfig) of the checkpoint's ViT and of `med_config.json`'s MED."""
    from transformers import BlipTextConfig, BlipVisionConfig

    if not med_config.get("add_cross_attention", False):
        raise ValueError("med_config.json has no add_cross_attention: true; ImageReward's text encoder "
                         "cross-attends to the image. Use the med_config.json of THUDM/ImageReward")
    if shape.width % vision_heads:
        raise ValueError(f"vision_heads={vision_heads} does not divide the ViT width {shape.width}")
    vision = BlipVisionConfig(hidden_size=shape.width, intermediate_size=shape.mlp_width,
                              num_hidden_layers=shape.layers, num_attention_heads=vision_heads,
                              image_size=shape.image_size, patch_size=shape.patch_size,
                              layer_norm_eps=VIT_LAYER_NORM_EPS, hidden_act="gelu", attention_dropout=0.0)
    text = BlipTextConfig(
        vocab_size=med_config["vocab_size"], hidden_size=med_config["hidden_size"],
        encoder_hidden_size=shape.width,  # official: encoder_config.encoder_width = vision_width
        intermediate_size=med_config["intermediate_size"], num_hidden_layers=med_config["num_hidden_layers"],
        num_attention_heads=med_config["num_attention_heads"],
        max_position_embeddings=med_config["max_position_embeddings"],
        hidden_act=med_config.get("hidden_act", "gelu"), layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
        pad_token_id=med_config.get("pad_token_id", 0), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        is_decoder=True,  # BlipTextLayer builds its cross-attention only for decoders; forward runs bidirectional
        bos_token_id=None, eos_token_id=None, sep_token_id=None,  # MED generates nothing here
    )
    return vision, text


class ImageRewardModel(nn.Module):
    """pixels (B, 3, S, S) and 35-token prompts -> standardised ImageReward (B,)."""

    def __init__(self, vision_config, text_config, head_widths: list[int]):
        from transformers import BlipTextModel, BlipVisionModel

        super().__init__()
        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        widths = [text_config.hidden_size, *head_widths]
        # The official head has no activations between its Linear layers (only dropout, off in eval).
        self.head = nn.Sequential(*[nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])])

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_tokens = self.vision(pixel_values=pixel_values).last_hidden_state  # (B, 1 + patches, width)
        image_mask = torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=image_tokens.device)
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_tokens,
                         encoder_attention_mask=image_mask).last_hidden_state  # (B, 35, hidden)
        reward = self.head(text[:, 0, :].float())[:, 0]  # the [CLS] state
        return (reward - REWARD_MEAN) / REWARD_STD


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ImageReward.pt (a plain dict of tensors, as the official code saves it)."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(k.startswith(_VISION) for k in state):
        raise ValueError(f"{path} holds no ImageReward state dict (no keys starting with {_VISION!r})")
    return state


def load_image_reward(checkpoint: str | Path, med_config: str | Path, vision_heads: int = 16) -> ImageRewardModel:
    """The port with the weights of an official ImageReward.pt and its med_config.json, in eval mode."""
    official = read_checkpoint(checkpoint)
    shape = vision_shape(official)
    vision, text = build_configs(json.loads(Path(med_config).read_text()), shape, vision_heads)
    head_widths = [official[f"{_HEAD}{i}.weight"].shape[0] for i in HEAD_LAYERS if f"{_HEAD}{i}.weight" in official]
    if len(head_widths) != len(HEAD_LAYERS):
        raise KeyError(f"{checkpoint}: the reward head needs {', '.join(f'{_HEAD}{i}.weight' for i in HEAD_LAYERS)}")
    model = ImageRewardModel(vision, text, head_widths)
    ported = {}
    for key, value in official.items():
        name = port_key(key)
        if name is not None:
            ported[name] = value
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ported))
    unexpected = sorted(set(ported) - set(expected))
    if missing or unexpected:
        raise KeyError(f"{checkpoint} does not fit ImageReward's architecture: {len(missing)} weight(s) missing "
                       f"(e.g. {missing[:3]}), {len(unexpected)} unknown (e.g. {unexpected[:3]}); use a complete "
                       f"ImageReward.pt with its own med_config.json")
    for name, value in ported.items():
        if value.shape != expected[name].shape:
            raise ValueError(f"{checkpoint}: {name} has shape {tuple(value.shape)} but med_config.json and the ViT "
                             f"give {tuple(expected[name].shape)}; use the med_config.json of the same checkpoint")
    model.load_state_dict(ported, strict=True)
    return model.eval()
