"""Hydra/OmegaConf glue: where the configs live, the run's identity hash, and up-front validation."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from .devices import auto_device_type
from .errors import ConfigError
from .settings import GROUPS, PRECISIONS, defaults, problem, register_settings_defaults, register_variant_options
from .variants import VARIANTS, get_variant, oracle_variants, unknown_variant

from .paths import CONF_DIR  # noqa: E402 - re-exported: the configs, found through the package
from .sources import pipeline_class

# What decides the images. Batch size, outputs, evaluation and logging do not, so a rerun that
# changes only those resumes the same folder.
HASHED_KEYS = ("model", "curve", "mask", "prompts", "prompt", "items", "k", "sample", "seed", "precision")
UNHASHED_SAMPLE_KEYS = ("batch_size", "compile")  # compiled images equal eager ones within 1e-3
# Keys added after run folders existed: left out of the hash while they hold their defaults (read off
# their dataclasses, asyndm/settings.py), so the folders of earlier runs keep their names (and resume).
LATER_KEYS = {"sample": ("height", "width", "true_cfg_scale"), "mask": ("blocks", "time"),
              "model": ("text_timestep", "skip_components", "num_frames", "default_size")}
LATER_KEY_DEFAULTS = {group: {key: defaults(GROUPS[group])[key] for key in keys} for group, keys in LATER_KEYS.items()}
# The sampler's semantics, part of every run's identity (``sampler_semantics``); a folder sampled
# under another one is refused, not resumed into. Each version says what changed the images:
SEMANTICS_CHANGES = {
    2: "its dynamic masks acted one call early and its curves were not the reference's",
    3: "SDXL, SD3 and Flux now step in the scheduler's own arithmetic (fp16/bf16), their linear curve is the "
       "scheduler's grid at every step count, σ never exceeds 1, and the MMDiT text stream sees the scheduler's "
       "own timestep; SD 1.x/2.x changed only under curve.semantics=refit",
}
SAMPLER_SEMANTICS = max(SEMANTICS_CHANGES)
# The pipelines whose images follow the reference release (SD 1.x/2.x, the toy models): version 3 left them alone.
RELEASE_PIPELINES = ("StableDiffusionPipeline",)
# Guidance rules whose images changed after run folders existed, by revision. A folder whose
# config.yaml records an older revision of a rule (none recorded: 1) and holds images of a variant
# on that rule is refused, not resumed into (run.py); its other variants resume as before.
# cfgpp 2: the official code's noise levels by default (variant.cfgpp.noise_levels, docs/baselines.md);
# scfg 2: the released arithmetic to the last bit (explicit attention; regions tie as released).
RULE_REVISIONS = {"cfgpp": 2, "scfg": 2}
# The paper's variants, and the baselines experiment presets add with baselines=true (paper.yaml).
PAPER_VARIANTS = ("dm", "dm_concave", "asyndm")
PAPER_BASELINES = ("zsampling", "seg", "scfg", "cfgpp", "attend_excite")


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
    for group, later in LATER_KEY_DEFAULTS.items():
        node = subset.get(group) or {}
        for key, default in later.items():
            if key in node and node[key] == default:
                node.pop(key)
    if "sample" in subset and subset["sample"] is not None:
        subset["sample"]["generator_device"] = generator_device(cfg)
    prompts = subset.get("prompts") or {}
    prompts.pop("evaluators", None)
    prompts.pop("oracle_masks", None)  # read only by the oracle variant, like the variants list itself
    for key in ("file", "items_file"):
        if prompts.get(key):
            prompts[key] = _file_digest(prompts[key]) or prompts[key]
    prompts.pop("name", None)
    model = subset.get("model") or {}
    if model.get("path"):
        model["path"] = _folder_signature(model["path"]) or model["path"]
    changed = changed_variant_options(cfg)
    if changed:  # options at their defaults stay out: adding a baseline resumes the same folder
        subset["variant"] = changed
    subset["sampler_semantics"] = sampler_semantics(cfg)
    text = json.dumps(subset, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def sampler_semantics(cfg: DictConfig) -> int:
    """The sampler semantics whose images this run's settings get: the newest, except SD 1.x/2.x under
    ``curve.semantics=reference``, whose images version 3 left unchanged (they keep 2, so their folders
    resume). A model whose family cannot be read yet counts as changed."""
    if cfg.curve.get("semantics", "reference") == "reference" and pipeline_class(cfg.model) in RELEASE_PIPELINES:
        return 2
    return SAMPLER_SEMANTICS


def stale_rule_variants(variants, revisions) -> list[str]:
    """Those of ``variants`` whose guidance rule changed since ``revisions`` (a folder's recorded
    ``rule_revisions``; a rule not in it: revision 1) were recorded."""
    revisions = revisions or {}
    rule = lambda variant: variant.split("+")[-1]  # noqa: E731 - schedule+guidance: the rule is the guidance's
    return [v for v in variants if revisions.get(rule(v), 1) < RULE_REVISIONS.get(rule(v), 1)]


def device_type(cfg: DictConfig) -> str:
    """cpu or cuda: where the run samples (device=auto: cuda when present, asyndm/devices.py)."""
    device = str(cfg.get("device") or "auto")
    return auto_device_type() if device == "auto" else device.split(":")[0]


def generator_device(cfg: DictConfig) -> str:
    """Where the run's noise is drawn (cpu or cuda): the same seeds give other noise on another
    device, so this is part of the run's identity."""
    chosen = (cfg.get("sample") or {}).get("generator_device")
    return str(chosen).split(":")[0] if chosen else device_type(cfg)


def add_prompt_evaluators(cfg: DictConfig) -> None:
    """A prompt set may name the evaluators that judge it (``prompts.evaluators``, the shapes sets:
    ``shapes``); they join ``eval`` with their own config from conf/eval/ unless already there. A
    single ``prompt=...`` is not from the set: its evaluators do not apply."""
    if cfg.get("prompt"):
        return
    for name in cfg.prompts.get("evaluators") or []:
        if name not in (cfg.get("eval") or {}):
            path = CONF_DIR / "eval" / f"{name}.yaml"
            if not path.is_file():
                raise ConfigError(f"prompts.evaluators names '{name}', which has no conf/eval/{name}.yaml")
            with open_dict(cfg):
                if cfg.get("eval") is None:
                    cfg.eval = {}
                cfg.eval[name] = OmegaConf.load(path)


def run_label(cfg: DictConfig) -> str:
    """What the run samples, for its folder name: the prompt set's name, or the single prompt's words."""
    prompt = cfg.get("prompt")
    if prompt:
        words = re.findall(r"[a-z0-9]+", str(prompt).lower())
        return "prompt-" + "-".join(words)[:48].rstrip("-")
    return str(cfg.prompts.name)


def changed_variant_options(cfg: DictConfig) -> dict:
    """``variant.<name>.<option>`` values that differ from the variant's defaults, by variant."""
    node = cfg.get("variant")
    options = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else (node or {})
    changed = {}
    for name, values in options.items():
        defaults = get_variant(name).defaults() if name in VARIANTS else {}
        diff = {k: v for k, v in (values or {}).items() if k not in defaults or not _same(defaults[k], v)}
        if diff:
            changed[name] = diff
    return changed


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def paper_variants(baselines: bool) -> list[str]:
    """The experiment presets' variants: the paper's three, and its baselines with ``baselines=true``."""
    return [*PAPER_VARIANTS, *(PAPER_BASELINES if baselines else ())]


def register_resolvers() -> None:
    """``${conf_path:...}``, ``${config_hash:}``, ``${run_label:}`` and ``${paper_variants:...}`` for the configs."""
    if not OmegaConf.has_resolver("conf_path"):
        OmegaConf.register_new_resolver("conf_path", lambda rel: str(CONF_DIR / rel))
    if not OmegaConf.has_resolver("config_hash"):
        OmegaConf.register_new_resolver("config_hash", lambda *, _root_: config_hash(_root_))
    if not OmegaConf.has_resolver("run_label"):
        OmegaConf.register_new_resolver("run_label", lambda *, _root_: run_label(_root_))
    if not OmegaConf.has_resolver("paper_variants"):
        OmegaConf.register_new_resolver("paper_variants", lambda baselines: paper_variants(bool(baselines)))


register_settings_defaults()
register_variant_options()


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> None:
    """Check every setting that needs no model, so bad input fails before anything loads."""
    variants = list(cfg.variants)
    _require(len(variants) > 0, f"variants=[] is empty: choose from [{','.join(VARIANTS)}]")
    for v in variants:
        unknown = unknown_variant(v, " in variants")
        _require(unknown is None, unknown)
    _require(len(set(variants)) == len(variants), f"variants={variants} lists a variant twice")
    oracles = oracle_variants(variants)
    _require(not oracles or bool(cfg.prompts.get("oracle_masks")),
             f"variants: {oracles[0] if oracles else ''} reads its masks off dm's finished images, which needs a "
             f"prompt set whose images can be read exactly: prompts={cfg.prompts.get('name')} names no "
             f"prompts.oracle_masks; use prompts=shapes or prompts=shapes_context, or drop the variant")
    node = cfg.get("variant")
    for name, options in (OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else {}).items():
        _require(name in VARIANTS, f"variant.{name}: no variant is named '{name}'; options belong to one of "
                                   f"[{','.join(n for n in VARIANTS if VARIANTS[n].options)}]")
        try:
            VARIANTS[name].check_options(options or {})
        except ValueError as err:
            raise ConfigError(str(err)) from None
    for group, schema in GROUPS.items():  # every typed key: its type, then its rule (asyndm/settings.py)
        found = problem(cfg[group], schema, group) if group in cfg else None  # the API's call: no model group
        _require(found is None, found)
    k = cfg.get("k")
    values = list(k) if OmegaConf.is_list(k) else ([] if k is None else [k])
    for value in values:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        _require(number and 0 < value <= 1, f"k={k}: {'outside (0, 1]' if number else f'{value!r} is not a number'}; "
                                            f"give the items' weight as k=0.5, or one per item as k=[0.5,0.7]")
    _require(cfg.precision in PRECISIONS, f"precision={cfg.precision}: choose {', '.join(PRECISIONS)}")
    _require(
        cfg.device == "auto" or cfg.device == "cpu" or str(cfg.device).startswith("cuda"),
        f"device={cfg.device}: choose auto, cpu or cuda",
    )
    shard = cfg.shard
    _require(shard.count >= 1 and 0 <= shard.index < shard.count, f"shard.index={shard.index} shard.count={shard.count}: need 0 <= index < count")
