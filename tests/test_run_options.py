"""Run-level options a newcomer meets first: the default run, dry runs, smoke sizes, run folders named
after what they sample, the run's identity across devices, and presets that sweep."""

import logging
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from asyndm.config import CONF_DIR, config_hash, generator_device, register_resolvers, run_label

register_resolvers()


def composed(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_the_default_run_is_the_toy_world_scored_exactly():
    cfg = composed()
    assert (cfg.model.name, cfg.prompts.name) == ("toy", "shapes")
    # the toy model's own sampling defaults; an SD model keeps the paper's
    assert (cfg.sample.steps, cfg.sample.guidance_scale, cfg.mask.resolution) == (25, 3.0, 16)
    sd = composed("model=sd21", "prompts=animal")
    assert (sd.sample.steps, sd.sample.guidance_scale, sd.mask.resolution) == (50, 5.0, None)
    assert list(cfg.prompts.evaluators) == ["shapes"] and list(sd.prompts.evaluators) == []


def test_prompt_evaluators_join_eval_without_replacing_it():
    from asyndm.config import add_prompt_evaluators

    cfg = composed("eval=[clip_tiny]")
    add_prompt_evaluators(cfg)
    assert sorted(cfg.eval) == ["clip", "shapes"] and cfg.eval.clip.arch == "tiny"  # clip_tiny sits at eval.clip
    assert cfg.eval.shapes.evaluator == "shapes"
    off = composed("prompts.evaluators=[]")
    add_prompt_evaluators(off)
    assert dict(off.eval) == {}


@pytest.mark.parametrize("spelling", ["smoke=tiny", "+smoke=tiny"])
def test_smoke_is_a_group_of_the_defaults_list(spelling):
    from asyndm.overrides import normalise_argv

    cfg = composed("experiment=table2", *normalise_argv([spelling]))
    assert cfg.model.name == "tiny" and cfg.sample.steps == 3, "smoke comes after the preset and wins"


def test_single_prompt_runs_are_named_after_the_prompt():
    cfg = composed("prompt='A cat, eating a Sandwich!'", "items=[cat,sandwich]", "k=0.5")
    assert run_label(cfg) == "prompt-a-cat-eating-a-sandwich"
    assert "prompt-a-cat-eating-a-sandwich" in cfg.run_dir
    assert run_label(composed()) == "shapes"


def test_the_noise_device_is_part_of_the_run_identity():
    cpu, gpu = composed("device=cpu"), composed("device=cuda")
    assert (generator_device(cpu), generator_device(gpu)) == ("cpu", "cuda")
    assert config_hash(cpu) != config_hash(gpu)
    # drawing the noise on the CPU gives the same images anywhere: the same identity
    assert config_hash(composed("device=cpu", "sample.generator_device=cpu")) == config_hash(
        composed("device=cuda", "sample.generator_device=cpu"))
    # what does not decide the images does not change it
    assert config_hash(cpu) == config_hash(composed("device=cpu", "sample.batch_size=2", "prompts.evaluators=[]"))


def test_compiling_keeps_the_run_identity_and_the_job_folder():
    """sample.compile=true gives the eager images within 1e-3 (tests/test_compilation.py): like the batch
    size it resumes the same run folder and does not name a sweep's job folder."""
    eager, compiled = composed("device=cpu"), composed("device=cpu", "sample.compile=true")
    from asyndm.run import sampling_settings

    assert sampling_settings(compiled).compile is True and sampling_settings(eager).compile is False
    assert config_hash(eager) == config_hash(compiled)
    assert "sample.compile" in OmegaConf.load(CONF_DIR / "config.yaml").hydra.job.config.override_dirname.exclude_keys


@pytest.fixture
def main_in_process(monkeypatch, capsys, tmp_path):
    """The console script's main() with these overrides → (exit status, stdout, stderr); no model loads."""
    import asyndm.run
    from asyndm.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(asyndm.run, "load_backend", refuse)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def call(*args):
        monkeypatch.setattr(sys, "argv", ["asyndm", *args])
        capsys.readouterr()
        code = 0
        try:
            main()
        except SystemExit as exit_info:
            code = exit_info.code
        finally:
            for handler in [h for h in root.handlers if h not in handlers]:
                root.removeHandler(handler)
                handler.close()
            root.setLevel(level)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


def test_dry_run_prints_the_plan_and_loads_nothing(main_in_process, tmp_path):
    run_dir = tmp_path / "plan"
    code, out, err = main_in_process("model=tiny", "prompts=animal", "prompts.limit=3", "sample.images_per_prompt=5",
                                     "sample.batch_size=2", "sample.steps=10", "device=cpu", "dry_run=true",
                                     f"run_dir={run_dir}")
    assert code == 0, err
    assert "3 prompts x 5 images x 3 variants (dm, dm_concave, asyndm) = 45 images" in out
    assert "batches: 9 of 9 still to sample" in out  # 5 images in batches of 2: 3 batches per prompt
    assert "time: about" in out and "docs/performance.md" in out  # the tiny model on the CPU was measured
    assert not (run_dir / "images").exists() and not (run_dir / "history.jsonl").exists()


def test_dry_run_without_a_measured_figure_says_so(main_in_process, tmp_path):
    code, out, err = main_in_process("model=tiny", "model.name=my-model", "prompts.limit=1", "device=cpu",
                                     "dry_run=true", f"run_dir={tmp_path / 'plan'}")
    assert code == 0, err
    assert "no figure measured for model=my-model on cpu" in out


def test_a_preset_that_sweeps_says_so_when_run_without_multirun(main_in_process, tmp_path):
    code, out, err = main_in_process("experiment=table2", "smoke=tiny", "dry_run=true", f"run_dir={tmp_path / 'p'}")
    assert code == 0, err
    assert "asyndm: note: this preset sweeps curve=bin,lin,exp mask=dynamic,static" in err and "-m" in err


def test_resuming_with_noise_from_another_device_is_refused(main_in_process, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    saved = {"config_hash": "0123456789", "sampler_semantics": 2, "generator_device": "cuda"}
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    code, out, err = main_in_process("model=tiny", "prompts.limit=1", "device=cpu", f"run_dir={run_dir}")
    assert code == 2
    assert "drew its noise on cuda" in err and "sample.generator_device=cuda" in err


@pytest.mark.parametrize("overrides,semantics", [
    ([], 2), (["model=tiny"], 2), (["model=tiny", "curve.semantics=refit"], 3),
    (["model=tiny_sdxl"], 3), (["model=tiny_sd3"], 3), (["model=tiny_flux"], 3),
    (["model=local", "model.path=/nowhere"], 3),
])
def test_the_sampler_semantics_changed_only_where_the_images_did(overrides, semantics):
    """Version 3 (METHOD.md §9's step arithmetic, timeline, σ ≤ 1, text stream) changed every family's
    images but SD 1.x/2.x under the reference semantics; a model whose family cannot be read counts as changed."""
    from asyndm.config import sampler_semantics

    assert sampler_semantics(composed(*overrides)) == semantics


def test_sd_run_folders_keep_their_names_and_sdxl_ones_do_not():
    """The hashes before version 3 (computed with the previous release): SD runs resume their folders."""
    assert config_hash(composed()) == "2ca8afd7a5"  # the toy world, the default run
    assert config_hash(composed("model=tiny", "prompts=animal")) == "d2ccfa94fc"
    assert config_hash(composed("model=tiny_sdxl", "prompts=animal")) != "19093f14d4"


def test_resuming_a_folder_sampled_before_the_family_numerics_is_refused_naming_what_changed(main_in_process, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    saved = {"config_hash": "0123456789", "sampler_semantics": 2, "generator_device": "cpu"}
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    before = (run_dir / "config.yaml").read_bytes()
    code, out, err = main_in_process("model=tiny_sdxl", "prompts.limit=1", "device=cpu", f"run_dir={run_dir}")
    assert code == 2
    assert "sampled by an earlier asyndm" in err and "scheduler's own arithmetic" in err
    assert (run_dir / "config.yaml").read_bytes() == before
