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
    sampler = AsyncSampler.__new__(AsyncSampler)  # the rule needs no model for these three
    sampler.backend, sampler.settings = None, settings
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
