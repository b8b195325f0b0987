"""The run's identity hash: what decides the images changes it, nothing else does."""

import json

from omegaconf import OmegaConf

from asyndm.config import config_hash


def _cfg(model_path, prompts_file, **sample):
    return OmegaConf.create({
        "model": {"name": "local", "builder": None, "path": str(model_path)},
        "curve": {"name": "bin"}, "mask": {"name": "dynamic", "threshold": 1.0, "resolution": None},
        "prompts": {"name": "custom", "file": str(prompts_file), "items_file": None, "limit": None,
                    "item_tokens": "word"},
        "prompt": None, "items": None, "k": None, "seed": 1234, "precision": "fp32",
        "sample": {"steps": 50, "eta": 1.0, "guidance_scale": 5.0, "negative_prompt": "", "batch_size": 8,
                   "images_per_prompt": 32, **sample},
    })


def _model_folder(root, steps):
    (root / "unet").mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text("{}")
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 100)
    (root / "training.json").write_text(json.dumps({"steps": steps}))
    return root


def test_hash_follows_images_not_paths(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a cat", "items": ["cat"], "k": [0.5]}\n')
    model = _model_folder(tmp_path / "m", steps=100)
    base = config_hash(_cfg(model, prompts))
    assert config_hash(_cfg(model, prompts, batch_size=2)) == base  # batch size does not change images
    assert config_hash(_cfg(model, prompts, steps=10)) != base

    copy = tmp_path / "copy.jsonl"
    copy.write_text(prompts.read_text())
    assert config_hash(_cfg(model, copy)) == base  # prompt files count by content

    moved = _model_folder(tmp_path / "elsewhere", steps=100)
    assert config_hash(_cfg(moved, prompts)) == base  # a model folder counts by its signature
    _model_folder(model, steps=200)  # retrained in place
    assert config_hash(_cfg(model, prompts)) != base


def test_keys_added_later_keep_earlier_run_folders_at_their_defaults(tmp_path):
    """sample.height/width/true_cfg_scale and mask.blocks came later: at their defaults the hash is the
    one runs made before them have (so their folders resume); set, they change it."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a cat", "items": ["cat"], "k": [0.5]}\n')
    model = _model_folder(tmp_path / "m", steps=100)
    before = config_hash(_cfg(model, prompts))
    later = _cfg(model, prompts, height=None, width=None, true_cfg_scale=1.0)
    later.mask.blocks = None
    assert config_hash(later) == before
    for key, value in (("height", 512), ("width", 512), ("true_cfg_scale", 4.0)):
        assert config_hash(_cfg(model, prompts, **{key: value})) != before, key
    later.mask.blocks = [3, 4]
    assert config_hash(later) != before
