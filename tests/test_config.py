"""The run's identity hash: what decides the images changes it, nothing else does."""

import json

import pytest

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


# ---------------------------------------------------------------------------- the baselines' options


def _composed(*overrides):
    from hydra import compose, initialize_config_dir

    from asyndm.config import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_every_variants_options_come_from_its_dataclass_typed():
    """The config's ``variant.<name>`` is the options dataclass (asyndm/options/): the same defaults as
    the rule the Python API builds, for every variant with options, and no YAML restates them."""
    from asyndm.config import CONF_DIR
    from asyndm.variants import VARIANTS

    with_options = {name for name, v in VARIANTS.items() if v.options is not None}
    assert with_options == {"attend_excite", "cfgpp", "scfg", "seg", "zsampling"}
    assert not (CONF_DIR / "variant").exists()
    cfg = _composed()
    assert set(cfg.variant) == with_options
    for name in with_options:
        assert json.dumps(OmegaConf.to_container(cfg.variant[name]), sort_keys=True) == json.dumps(
            VARIANTS[name].defaults(), sort_keys=True), name
        assert OmegaConf.get_type(cfg.variant[name]) is VARIANTS[name].options  # typed, not free YAML


def test_a_variant_option_of_the_wrong_type_is_refused_when_composed():
    from hydra.errors import ConfigCompositionException

    for override, reason in (("variant.cfgpp.scale=abc", "could not be converted to Float"),
                             ("variant.zsampling.zigzag_steps=many", "could not be converted to Integer")):
        with pytest.raises(ConfigCompositionException) as refused:
            _composed(override)
        assert reason in str(refused.value.__cause__), override
    _composed("variant.cfgpp.scale=0.25", "variant.zsampling.zigzag_steps=3")  # the right types compose


def test_variant_options_reach_the_rule_and_the_hash(tmp_path):
    from asyndm.config import config_hash
    from asyndm.run import sampling_settings
    from asyndm.sampler import AsyncSampler

    default, changed = _composed(), _composed("variant.cfgpp.scale=0.4", "variant.seg.layers=[mid,up]")
    settings = sampling_settings(changed)
    assert settings.variant_options["cfgpp"] == {"scale": 0.4, "noise_levels": "released"}
    from asyndm.backends.sd import StableDiffusionBackend

    sampler = AsyncSampler.__new__(AsyncSampler)  # the rule needs no model for these three, only a family
    sampler.backend, sampler.settings = StableDiffusionBackend.__new__(StableDiffusionBackend), settings
    assert sampler.guidance("cfgpp").scale == 0.4 and sampler.guidance("asyndm+cfgpp").scale == 0.4
    assert tuple(sampler.guidance("seg").layers) == ("mid", "up")
    # defaults stay out of the hash: a run made before the baselines, or one that adds them, keeps its folder
    without = OmegaConf.create(OmegaConf.to_container(default))
    del without["variant"]
    assert config_hash(default) == config_hash(without) == config_hash(_composed("variants=[dm,cfgpp,seg]"))
    assert config_hash(changed) != config_hash(default)
    assert config_hash(_composed("variant.cfgpp.scale=0.6")) == config_hash(default)  # set to its default
    assert config_hash(_composed("variant.cfgpp.noise_levels=diffusers")) != config_hash(default)


@pytest.mark.parametrize("overrides,message", [
    (["+variant.cfgpp.sacle=0.4"], "variant.cfgpp.sacle: cfgpp has no option 'sacle'; it takes scale"),
    (["variants=[dm,asyndm+cfgpq]"], "unknown variant 'cfgpq' in 'asyndm+cfgpq' in variants"),
    (["+variant.dm_fast.scale=1"], "variant.dm_fast: no variant is named 'dm_fast'"),
])
def test_bad_variant_options_are_named(overrides, message):
    from asyndm.config import validate
    from asyndm.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("+", r"\+")):
        validate(_composed("model=tiny", *overrides))


def test_presets_add_the_baselines_with_one_switch():
    from asyndm.config import validate

    assert list(_composed("experiment=table1_animal").variants) == ["dm", "dm_concave", "asyndm"]
    cfg = _composed("experiment=table1_animal", "baselines=true")
    validate(cfg)
    assert list(cfg.variants) == ["dm", "dm_concave", "asyndm", "zsampling", "seg", "scfg", "cfgpp", "attend_excite"]
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


def test_the_sample_node_is_sample_settings_with_the_models_own_defaults():
    """One definition of sample.*: SampleSettings' fields, types and defaults (asyndm/settings.py);
    config.yaml sets only the model-dependent steps and guidance scale."""
    import dataclasses

    from asyndm.config import ConfigError, validate
    from asyndm.settings import SampleSettings

    cfg = _composed("model=tiny")
    fields = {f.name: f.default for f in dataclasses.fields(SampleSettings)}
    assert set(cfg.sample) == set(fields)
    for name, default in fields.items():
        if name not in ("steps", "guidance_scale"):
            assert cfg.sample[name] == default and type(cfg.sample[name]) is type(default), name
    assert (cfg.sample.steps, cfg.sample.guidance_scale) == (cfg.model.sampling.steps, cfg.model.sampling.guidance_scale)
    for override, says in (("sample.batch_size=two", "sample.batch_size=two: not a valid int"),
                           ("sample.height=1.5", "sample.height=1.5: not a valid int")):
        with pytest.raises(ConfigError, match=says):
            validate(_composed("model=tiny", override))


# ------------------------------------------------------------------- the typed groups (asyndm/settings.py)


def _plain(node):
    return OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node


@pytest.mark.parametrize("group", ["model", "curve", "mask", "prompts"])
def test_every_option_of_a_group_has_exactly_its_dataclass_keys_and_restates_no_default(group):
    """The YAML files only choose and override: each option composes to the dataclass's keys, and a
    file sets a key only where its value differs from the dataclass's default."""
    import dataclasses

    import yaml

    from asyndm.config import CONF_DIR
    from asyndm.settings import GROUPS, defaults

    schema, base = GROUPS[group], defaults(GROUPS[group])
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        node = _composed(f"{group}={path.stem}")[group]
        assert set(node) == {f.name for f in dataclasses.fields(schema)}, path.name
        written = yaml.safe_load(path.read_text()) or {}
        for key, value in written.items():
            if isinstance(value, dict):  # model.sampling: each of its keys likewise
                restated = [k for k, v in value.items() if base[key].get(k) == v]
                assert not restated, f"{path.name} restates {key}.{restated} at the default"
            else:
                assert key == "name" or value != base[key], f"{path.name} restates {key}: {value!r}, the default"


def test_the_older_spelling_of_an_added_model_key_still_composes_to_the_same_run():
    from asyndm.overrides import normalise_argv

    old = normalise_argv(["model=sd35_medium", "+model.skip_components=[text_encoder_3,tokenizer_3]"])
    assert old == ["model=sd35_medium", "model.skip_components=[text_encoder_3,tokenizer_3]"]
    assert config_hash(_composed(*old)) != config_hash(_composed("model=sd35_medium"))
    assert list(_composed(*old).model.skip_components) == ["text_encoder_3", "tokenizer_3"]


@pytest.mark.parametrize("override,says", [
    ("mask.thresold=2", "mask.thresold: mask has no setting 'thresold'; it takes name, threshold, resolution, blocks"),
    ("model.sampling.stepz=3", "model.sampling has no setting 'stepz'; it takes steps, guidance_scale, mask_resolution"),
    ("mask.threshold=0", "mask.threshold=0: must be positive"),
    ("mask.threshold=abc", "mask.threshold=abc: not a valid float"),
    ("model.text_timestep=median", "model.text_timestep=median: choose linear, min, mean or max"),
    ("curve.semantics=exact", "curve.semantics=exact: choose reference or refit"),
    ("curve.name=quadratic", "unknown curve 'quadratic': choose curve=bin, curve=lin or curve=exp"),
    ("prompts.limit=0", "prompts.limit=0: a positive number of prompts"),
    ("prompts.item_tokens=bpe", "prompts.item_tokens=bpe: choose word or legacy"),
    ("mask.blocks=[1,-2]", "mask.blocks=[1, -2]: a list of block indices"),
    ("sample.generator_device=tpu", "sample.generator_device=tpu: choose cpu, cuda or null"),
])
def test_a_typed_key_is_refused_in_one_line_before_hydra_and_again_by_validate(override, says):
    """The same dataclass answers on the command line (asyndm/overrides.py, before Hydra composes) and
    in the run's validation (a value that reached the config another way: a preset, the API)."""
    from asyndm.config import validate
    from asyndm.errors import ConfigError
    from asyndm.overrides import setting_problem

    assert says in setting_problem([override])
    if "no setting" in says:
        return  # Hydra itself refuses a key the config does not have
    with pytest.raises(ConfigError) as refused:
        validate(_composed("model=tiny", override))
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_values_keep_the_type_they_are_given_so_run_folders_keep_their_names():
    """The groups are checked against their dataclasses, not converted: mask.threshold=2 stays the
    int 2 that named run folders before the types existed."""
    assert _composed("mask.threshold=2").mask.threshold == 2 and type(_composed("mask.threshold=2").mask.threshold) is int
    assert config_hash(_composed("mask.threshold=2")) != config_hash(_composed("mask.threshold=2.0"))  # as before
