"""Hydra/OmegaConf glue: where the configs live, the run's identity hash, and up-front validation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .curves import CURVES, SEMANTICS
from .errors import ConfigError
from .sampler import MASK_MODES
from .variants import VARIANTS

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# What decides the images. Batch size, outputs, evaluation and logging do not, so a rerun that
# changes only those resumes the same folder.
HASHED_KEYS = ("model", "curve", "mask", "prompts", "prompt", "items", "k", "sample", "seed", "precision")
UNHASHED_SAMPLE_KEYS = ("batch_size",)
# Keys added after run folders existed: left out of the hash while they hold these defaults, so the
# folders of earlier runs keep their names (and resume).
LATER_KEY_DEFAULTS = {"sample": {"height": None, "width": None, "true_cfg_scale": 1.0}, "mask": {"blocks": None}}
# The sampler's semantics, part of every run's identity: 2 = the reference's mask timing and curve
# numerics (METHOD.md §3, §6). Folders sampled by an earlier version are refused, not resumed into.
SAMPLER_SEMANTICS = 2


def _file_digest(path) -> str | None:
    try:
        return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()[:16]
    except (OSError, TypeError):
        return None


def _folder_signature(path) -> str | None:
    """A local model folder by what identifies its weights cheaply: every JSON file's content
    (configs, training records) and every other file's name and size. Retrained weights in the
    same folder then give a new run folder instead of resuming one made with the old weights."""
    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(f for f in folder.rglob("*") if f.is_file()):
        digest.update(str(file.relative_to(folder)).encode())
        digest.update(file.read_bytes() if file.suffix == ".json" else str(file.stat().st_size).encode())
    return digest.hexdigest()[:16]


def config_hash(cfg: DictConfig) -> str:
    """Short hash of the settings that decide the images (prompt files by content, local model
    folders by their signature, not by path)."""
    subset = {}
    for key in HASHED_KEYS:
        node = cfg.get(key)
        subset[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    for key in UNHASHED_SAMPLE_KEYS:
        (subset.get("sample") or {}).pop(key, None)
    for group, defaults in LATER_KEY_DEFAULTS.items():
        node = subset.get(group) or {}
        for key, default in defaults.items():
            if key in node and node[key] == default:
                node.pop(key)
    prompts = subset.get("prompts") or {}
    for key in ("file", "items_file"):
        if prompts.get(key):
            prompts[key] = _file_digest(prompts[key]) or prompts[key]
    prompts.pop("name", None)
    model = subset.get("model") or {}
    if model.get("path"):
        model["path"] = _folder_signature(model["path"]) or model["path"]
    subset["sampler_semantics"] = SAMPLER_SEMANTICS
    text = json.dumps(subset, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def register_resolvers() -> None:
    """``${conf_path:prompts/animal.jsonl}`` and ``${config_hash:}`` for the config files."""
    if not OmegaConf.has_resolver("conf_path"):
        OmegaConf.register_new_resolver("conf_path", lambda rel: str(CONF_DIR / rel))
    if not OmegaConf.has_resolver("config_hash"):
        OmegaConf.register_new_resolver("config_hash", lambda *, _root_: config_hash(_root_))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> None:
    """Check every setting that needs no model, so bad input fails before anything loads."""
    variants = list(cfg.variants)
    _require(len(variants) > 0, "variants=[] is empty: choose from [dm,dm_concave,asyndm]")
    for v in variants:
        _require(v in VARIANTS, f"unknown variant '{v}' in variants: choose from [{','.join(VARIANTS)}]")
    _require(len(set(variants)) == len(variants), f"variants={variants} lists a variant twice")
    _require(cfg.curve.name in CURVES, f"unknown curve '{cfg.curve.name}': choose curve=bin, curve=lin or curve=exp")
    semantics = cfg.curve.get("semantics", "reference")
    _require(semantics in SEMANTICS, f"curve.semantics={semantics}: choose {' or '.join(SEMANTICS)} (default reference)")
    _require(cfg.mask.name in MASK_MODES, f"unknown mask mode '{cfg.mask.name}': choose mask=dynamic or mask=static")
    _require(cfg.mask.threshold > 0, f"mask.threshold={cfg.mask.threshold}: must be positive (default 1.0)")
    res = cfg.mask.resolution
    _require(res is None or (isinstance(res, int) and res > 0), f"mask.resolution={res}: a positive grid side or null")
    blocks = cfg.mask.get("blocks")
    _require(blocks is None or (len(blocks) > 0 and all(isinstance(b, int) and b >= 0 for b in blocks)),
             f"mask.blocks={blocks}: a list of block indices (0 = the first transformer block) or null")
    s = cfg.sample
    for key in ("height", "width"):
        size = s.get(key)
        _require(size is None or (isinstance(size, int) and size > 0), f"sample.{key}={size}: a positive number of pixels or null")
    _require(s.get("true_cfg_scale", 1.0) >= 1, f"sample.true_cfg_scale={s.get('true_cfg_scale')}: 1 (off) or more")
    _require(isinstance(s.steps, int) and s.steps >= 2, f"sample.steps={s.steps}: needs at least 2 steps (paper: 50)")
    _require(s.eta >= 0, f"sample.eta={s.eta}: must be >= 0 (DDIM: 0 deterministic, paper: 1.0)")
    _require(s.batch_size >= 1, f"sample.batch_size={s.batch_size}: must be at least 1")
    _require(s.images_per_prompt >= 1, f"sample.images_per_prompt={s.images_per_prompt}: must be at least 1")
    _require(cfg.precision in ("fp32", "fp16", "bf16"), f"precision={cfg.precision}: choose fp32, fp16 or bf16")
    _require(
        cfg.device == "auto" or cfg.device == "cpu" or str(cfg.device).startswith("cuda"),
        f"device={cfg.device}: choose auto, cpu or cuda",
    )
    shard = cfg.shard
    _require(shard.count >= 1 and 0 <= shard.index < shard.count, f"shard.index={shard.index} shard.count={shard.count}: need 0 <= index < count")
    tokens = cfg.prompts.get("item_tokens")
    _require(tokens in (None, "word", "legacy"),
             f"prompts.item_tokens={tokens}: choose word or legacy (unset: legacy for the reference's two-file format)")
