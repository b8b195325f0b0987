"""The toy model: a VAE-less SD pipeline that saves, loads and conditions like the real ones,
its training script (resumable) and the shipped weights."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from asyndm.toy_model import TEXT_LENGTH, build_toy_pipeline, encode_captions

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "toy"
SMALL = dict(block_out_channels=(8, 16, 16), text_hidden=16, text_layers=1)


@pytest.fixture(scope="module")
def small_pipe():
    return build_toy_pipeline(**SMALL)


def test_shape_of_the_pipeline(small_pipe):
    unet = small_pipe.unet
    assert small_pipe.vae is None
    assert unet.config.sample_size == 32 and unet.config.in_channels == 3 and unet.config.out_channels == 3
    assert small_pipe.scheduler.config.prediction_type == "sample"
    assert len(small_pipe.tokenizer) == 49408 and small_pipe.tokenizer.model_max_length == TEXT_LENGTH
    # cross-attention at 16×16 (mask.resolution=16) and 8×8 for a 32×32 input
    from asyndm.attention import capture_layer_names

    assert capture_layer_names(unet, 32, 16) and capture_layer_names(unet, 32, 8)


def test_training_conditioning_equals_the_pipelines(small_pipe):
    with torch.no_grad():
        trained = encode_captions(small_pipe, ["a red circle above a blue square", ""])
        positive, negative = small_pipe.encode_prompt("a red circle above a blue square", "cpu", 1, True, "")
    assert torch.equal(trained[:1], positive) and torch.equal(trained[1:], negative)


def test_saved_folder_loads_back(small_pipe, tmp_path):
    from diffusers import StableDiffusionPipeline

    from asyndm.backends import StableDiffusionBackend
    from asyndm.sources import load_tokenizer

    small_pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["vae"] == [None, None]
    assert len(load_tokenizer(str(tmp_path))) >= 1000
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path, vae=None, safety_checker=None, feature_extractor=None,
                                                   image_encoder=None, requires_safety_checker=False)
    backend = StableDiffusionBackend(pipe, torch.device("cpu"), torch.float32)
    assert backend.latent_size == (32, 32) and backend.vae_scale_factor == 1
    for a, b in zip(pipe.unet.parameters(), small_pipe.unet.parameters()):
        assert torch.equal(a, b)


def test_load_backend_loads_a_vae_less_folder(small_pipe, tmp_path):
    from asyndm.models import load_backend

    small_pipe.save_pretrained(tmp_path)
    backend = load_backend(str(tmp_path), torch.device("cpu"), torch.float32)
    assert backend.pipe.vae is None and backend.latent_size == (32, 32) and backend.vae_scale_factor == 1


def test_learning_rate_schedule():
    sys.path.insert(0, str(ROOT / "scripts"))
    from train_toy import learning_rate

    cfg = OmegaConf.create({"lr": 1e-3, "lr_min_ratio": 0.1, "warmup_steps": 10})
    assert learning_rate(0, 110, cfg) == pytest.approx(1e-4)
    assert learning_rate(9, 110, cfg) == pytest.approx(1e-3)
    assert learning_rate(60, 110, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half-way: the cosine's middle
    assert learning_rate(110, 110, cfg) == pytest.approx(1e-4)


def test_training_continues_from_a_saved_model(small_pipe, tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from train_toy import load_initial_weights

    small_pipe.save_pretrained(tmp_path / "parent")
    (tmp_path / "parent" / "training.json").write_text(json.dumps({"steps": 7}))
    child = build_toy_pipeline(**SMALL, seed=1)
    assert not torch.equal(next(child.unet.parameters()), next(small_pipe.unet.parameters()))
    assert load_initial_weights(child, str(tmp_path / "parent")) == {"steps": 7}
    for a, b in zip([*child.unet.parameters(), *child.text_encoder.parameters()],
                    [*small_pipe.unet.parameters(), *small_pipe.text_encoder.parameters()]):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="do not fit"):
        load_initial_weights(build_toy_pipeline(block_out_channels=(8, 16, 32), text_hidden=16, text_layers=1),
                             str(tmp_path / "parent"))
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_initial_weights(child, str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_train_script_runs_resumes_and_saves(tmp_path):
    def train(steps):
        args = [sys.executable, str(ROOT / "scripts" / "train_toy.py"), f"train.steps={steps}", "train.threads=1",
                "train.batch_size=4", "train.warmup_steps=1", "train.log_every=1", "train.checkpoint_every=1",
                "model.block_out_channels=[8,16,16]", "model.text_hidden=16", "model.text_layers=1",
                f"work_dir={tmp_path / 'work'}", f"out_dir={tmp_path / 'out'}"]
        return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)

    first = train(2)
    assert first.returncode == 0, first.stderr[-2000:]
    second = train(3)
    assert second.returncode == 0 and "resuming" in second.stdout, second.stderr[-2000:]
    log = (tmp_path / "work" / "loss.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log] == ["step", "1", "2", "3"]
    info = json.loads((tmp_path / "out" / "training.json").read_text())
    assert info["steps"] == 3 and math.isfinite(info["final_loss_mean_last_100"])
    assert (tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.skipif(not (SHIPPED / "model_index.json").is_file(), reason="models/toy is not trained yet")
def test_shipped_model():
    from diffusers import StableDiffusionPipeline

    size = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert size <= 25 * 2**20
    info = json.loads((SHIPPED / "training.json").read_text())
    assert info["steps"] > 0 and len(info["git_commit"]) == 40
    pipe = StableDiffusionPipeline.from_pretrained(SHIPPED, vae=None, safety_checker=None, feature_extractor=None,
                                                   image_encoder=None, requires_safety_checker=False)
    assert pipe.scheduler.config.prediction_type == "sample" and len(pipe.tokenizer) >= 1000


def test_model_config_points_at_the_shipped_folder():
    from hydra import compose, initialize_config_dir

    from asyndm.config import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=toy_alignment"])
    from asyndm.sources import model_source

    assert Path(model_source(cfg.model)).resolve() == SHIPPED
    assert cfg.mask.resolution == 16 and cfg.sample.guidance_scale == 3.0
    assert list(cfg.eval) == ["shapes"] and cfg.prompts.name == "shapes"
    assert cfg.sample.images_per_prompt * 40 >= 400
