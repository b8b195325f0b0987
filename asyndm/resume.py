"""Whether a run may go into its folder, checked before anything is written there.

A run folder is named by the run's identity (asyndm/config.py); a folder that holds another run's
images, images of an older sampler, or noise drawn on another device is refused with one line that
says what differs, and the refusal touches nothing in the folder. ``preflight`` runs every such
check that needs no model, before Hydra or the sampler writes anything (asyndm/cli.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import config as config_mod
from .errors import ConfigError
from .run_folder import read_table


def check_resumable(run_dir: Path, cfg_hash: str, generator_device: str, semantics: int,
                    cfg: DictConfig | None = None) -> None:
    """A folder may only be resumed by a run with the same image-deciding settings and sampler semantics;
    a refusal names the settings that differ (old → new) where ``cfg`` is given. Reads only."""
    saved = run_dir / "config.yaml"
    if saved.is_file():
        saved_cfg = _saved_config(run_dir, cfg_hash)
        if saved_cfg is None:
            return  # damaged, but the manifest shows this very run: it is written again
        previous = saved_cfg.get("config_hash")
        old = saved_cfg.get("sampler_semantics", 1)
        if previous is not None and old != semantics:
            changes = "; ".join(config_mod.SEMANTICS_CHANGES[v] for v in sorted(config_mod.SEMANTICS_CHANGES)
                                if old < v <= semantics)
            raise ConfigError(
                f"run folder {run_dir} was sampled by an earlier asyndm whose images differ from this version's "
                f"({changes}); resuming would mix the two: use another run_dir=... or remove the folder"
            )
        sampled = sorted({f.stem.split("_", 1)[1] for f in (run_dir / "images").glob("*_*.png")})
        stale = config_mod.stale_rule_variants(sampled, saved_cfg.get("rule_revisions"))
        if previous is not None and stale:
            raise ConfigError(
                f"run folder {run_dir} holds {', '.join(stale)} images sampled by an earlier asyndm whose "
                f"{' and '.join(sorted({v.split('+')[-1] for v in stale}))} arithmetic differs from this version's "
                f"(docs/baselines.md); resuming would mix the two: remove their images/ and latents/ files "
                f"(*_{stale[0]}.*) to sample them again, or use another run_dir=..."
            )
        if previous is not None and previous != cfg_hash and saved_cfg.get("generator_device") not in (
            None, generator_device
        ):
            raise ConfigError(
                f"run folder {run_dir} drew its noise on {saved_cfg.generator_device}, this run would draw it on "
                f"{generator_device}, which gives other images for the same seeds: resume it with "
                f"sample.generator_device={saved_cfg.generator_device}, or use another run_dir=..."
            )
        if previous is not None and previous != cfg_hash:
            changed = differing_settings(saved_cfg, cfg) if cfg is not None else ""
            raise ConfigError(
                f"run folder {run_dir} holds a run with other settings (config hash {previous}, now {cfg_hash}"
                f"{': ' + changed if changed else ''}); use another run_dir=... or remove the folder"
            )


def _saved_config(run_dir: Path, cfg_hash: str) -> DictConfig | None:
    """The folder's config.yaml; where it is damaged, None if the manifest shows that the folder holds
    the run of ``cfg_hash`` (its images verify against the manifest; config.yaml is rewritten), else a
    refusal."""
    path = run_dir / "config.yaml"
    try:
        saved = OmegaConf.load(path)
        if isinstance(saved, DictConfig):
            return saved
        problem = "not a mapping of settings"
    except Exception as error:  # noqa: BLE001 - whatever the damage, the file cannot say which run this is
        problem = " ".join(str(error).split())[:100]
    hashes = set()
    for manifest in run_dir.glob("manifest*.csv"):
        try:
            hashes |= set(read_table(manifest, dtype=str, keep_default_na=False).get("config_hash", []))
        except (OSError, ValueError):
            continue
    if hashes == {cfg_hash}:
        return None
    raise ConfigError(f"run folder {run_dir}: its config.yaml is damaged ({problem}) and its manifest does not show "
                      f"that it holds this run; use another run_dir=..., or remove the folder")


def differing_settings(saved: DictConfig, cfg: DictConfig, most: int = 5) -> str:
    """``key old → new`` for the image-deciding settings where ``saved`` (a folder's config.yaml) and
    ``cfg`` differ, at most ``most`` of them."""
    def flat(value, prefix=""):
        if not isinstance(value, dict):
            return {prefix[:-1]: value}
        return {key: leaf for name, child in value.items() for key, leaf in flat(child, f"{prefix}{name}.").items()}

    def subset(node):
        return flat({k: OmegaConf.to_container(node[k], resolve=True) if OmegaConf.is_config(node[k]) else node[k]
                     for k in config_mod.HASHED_KEYS if k in node})

    old, new = subset(saved), subset(cfg)
    ignored = {f"sample.{k}" for k in config_mod.UNHASHED_SAMPLE_KEYS} | {"prompts.evaluators", "prompts.name"}
    keys = sorted(k for k in old.keys() | new.keys()
                  if k not in ignored and json.dumps(old.get(k), default=str) != json.dumps(new.get(k), default=str))
    shown = ", ".join(f"{k} {old.get(k)!r} → {new.get(k)!r}" for k in keys[:most])
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")


def check_run_dir(run_dir: Path) -> None:
    """The folder can be written: not a file, and writable where it exists (or creatable where not)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir} is a file; choose a folder (run_dir=outputs/<name>)")
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"run_dir={run_dir}: {existing} is not writable; choose a folder you can write to "
                          f"(run_dir=...)")


def preflight(cfg: DictConfig, run_dir: Path) -> None:
    """Every check of a single run that needs no model, in the order the run would meet them; raises
    ConfigError (one line) and writes nothing."""
    config_mod.validate(cfg)
    check_run_dir(run_dir)
    check_resumable(run_dir, config_mod.config_hash(cfg), config_mod.generator_device(cfg),
                    config_mod.sampler_semantics(cfg), cfg)
