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
    assert out.logger.name == "wandb" and out.logger.mode == "offline" and out.logger.entity is None
    tiny = apply_overrides(cfg, ["eval=[clip_tiny]"])
    assert tiny.eval.clip.arch == "tiny" and tiny.eval.clip.pretrained == "tiny"
    assert apply_overrides(cfg, ["eval=[]"]).eval == {}
    with pytest.raises(FileNotFoundError, match="options: .*clip"):
        apply_overrides(cfg, ["eval=[clop]"])


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
