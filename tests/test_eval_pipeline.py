import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from evaluation.cli import CONF_DIR, apply_overrides, main
from evaluation.offline.fake_run import make_fake_run
from evaluation.pipeline import run_after_sampling

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYNDM_CACHE", str(tmp_path / "cache"))


def test_overrides_load_group_configs():
    cfg = OmegaConf.create({"eval": {"old": {"x": 1}}, "logger": {"name": "none"}, "seed": 0})
    out = apply_overrides(cfg, ["eval=[clip]", "logger=wandb", "eval.clip.batch_size=4", "seed=3"])
    assert set(out.eval) == {"clip"}
    assert out.eval.clip.arch == "ViT-H-14" and out.eval.clip.pretrained == "laion2b_s32b_b79k"
    assert out.eval.clip.batch_size == 4 and out.seed == 3
    assert out.logger.name == "wandb" and out.logger.mode is None and out.logger.entity is None
    tiny = apply_overrides(cfg, ["eval=[clip_tiny]"])
    assert tiny.eval.clip.arch == "tiny" and tiny.eval.clip.pretrained == "tiny"
    assert apply_overrides(cfg, ["eval=[]"]).eval == {}
    kept = apply_overrides(cfg, ["eval.old.x=2"])  # no group override: the run's own evaluators stay
    assert kept.eval.old.x == 2 and kept.logger.name == "none"
    both = apply_overrides(cfg, ["eval=[clip_tiny,imagereward_tiny]", "+eval.clip.extra=1"])
    assert set(both.eval) == {"clip", "imagereward"} and both.eval.imagereward.checkpoint == "tiny"
    assert both.eval.clip.extra == 1
    with pytest.raises(ValueError, match="unknown eval 'clop': choose .*eval=clip,"):
        apply_overrides(cfg, ["eval=[clip,clop]"])


def test_unknown_evaluator_is_the_same_one_line_error_in_both_clis(tmp_path, capsys, monkeypatch):
    import sys

    from asyndm import cli as asyndm_cli

    run = make_fake_run(tmp_path / "run")
    assert main([str(run), "eval=[clip_tiny,clop]"]) == 2
    eval_line = capsys.readouterr().err.strip()
    monkeypatch.setattr(sys, "argv", ["asyndm", "model=tiny", "eval=[clip_tiny,clop]"])
    with pytest.raises(SystemExit) as exit_info:
        asyndm_cli.main()
    assert exit_info.value.code == 2
    run_line = capsys.readouterr().err.strip()
    assert "\n" not in eval_line and eval_line.startswith("asyndm-eval: error: unknown eval 'clop': choose ")
    assert eval_line.removeprefix("asyndm-eval: ") == run_line.removeprefix("asyndm: ")
    assert main([str(run), "eval=[clip_tiny]", "eval.clip.no_such_key=1"]) == 2  # Hydra's own errors: one line too
    assert "+eval.clip.no_such_key=1" in capsys.readouterr().err


def test_hydra_composes_the_same_eval_and_logger_groups():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(overrides=["+eval=[clip_tiny]", "+logger=wandb"])
    assert cfg.eval.clip.arch == "tiny" and cfg.logger.name == "wandb"


def test_run_after_sampling_writes_results_and_summary(tmp_path, capsys):
    run = make_fake_run(tmp_path / "run", seeds=(0, 1, 2))
    cfg = apply_overrides(OmegaConf.load(run / "config.yaml"), ["eval=[clip_tiny]", "eval.clip.device=cpu"])
    summary = run_after_sampling(run, cfg)
    assert (run / "results.csv").is_file() and (run / "summary.csv").is_file()
    on_disk = pd.read_csv(run / "summary.csv")
    assert list(on_disk.variant) == ["dm", "dm_concave", "asyndm"]
    assert on_disk["n"].tolist() == [6, 6, 6] and on_disk["n_pairs"].tolist()[1:] == [6, 6]
    results = pd.read_csv(run / "results.csv")
    dm = results[results.variant == "dm"]["value"]
    assert summary.loc[0, "mean"] == pytest.approx(dm.mean())
    assert "clip/cosine_raw" in capsys.readouterr().out


def test_run_after_sampling_without_eval_returns_none(tmp_path):
    run = make_fake_run(tmp_path / "run")
    assert run_after_sampling(run, OmegaConf.load(run / "config.yaml")) is None
    assert not (run / "results.csv").exists()


def test_cli_rescores_a_run(tmp_path):
    run = make_fake_run(tmp_path / "run")
    assert main([str(run), "eval=[clip]", "eval.clip.arch=tiny", "eval.clip.pretrained=tiny",
                 "eval.clip.device=cpu"]) == 0
    summary = pd.read_csv(run / "summary.csv")
    assert set(summary.metric) == {"clip/cosine_raw"} and len(summary) == 3


def test_cli_scores_a_run_with_the_three_preference_models(tmp_path):
    run = make_fake_run(tmp_path / "run", seeds=(0, 1))
    assert main([str(run), "eval=[imagereward_tiny,pickscore_tiny,hpsv2_tiny]", "device=cpu"]) == 0
    results = pd.read_csv(run / "results.csv")
    per_metric = results.groupby("metric")["value"]
    assert per_metric.size().to_dict() == {"imagereward/score": 12, "pickscore/score": 12, "hpsv2/score": 12}
    assert results["value"].notna().all()
    summary = pd.read_csv(run / "summary.csv")
    assert len(summary) == 9 and summary["mean"].notna().all()  # 3 metrics x 3 variants
