"""The context world's model and preset: model=toy_context, experiment=toy_context and its smoke run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from asyndm.config import CONF_DIR, register_resolvers, validate

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "toy_context"
needs_model = pytest.mark.skipif(not (SHIPPED / "model_index.json").is_file(), reason="models/toy_context is not trained yet")


def composed(*overrides):
    register_resolvers()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_preset_runs_the_paper_variants_and_the_oracle_on_the_context_prompts():
    cfg = composed("experiment=toy_context")
    validate(cfg)
    from asyndm.sources import model_source

    assert Path(model_source(cfg.model)).resolve() == SHIPPED and cfg.model.name == "toy_context"
    assert list(cfg.variants) == ["dm", "dm_concave", "asyndm", "asyndm_oracle"]
    assert cfg.prompts.name == "shapes_context" and list(cfg.eval) == ["shapes_context"]
    n_prompts = sum(1 for line in Path(cfg.prompts.file).read_text().splitlines() if line.strip())
    assert n_prompts * cfg.sample.images_per_prompt >= 400  # paired images per variant
    assert (cfg.mask.resolution, cfg.sample.guidance_scale, cfg.sample.steps) == (16, 3.0, 25)

    smoke = composed("experiment=toy_context", "smoke=toy_context")
    validate(smoke)
    assert smoke.prompts.name == "shapes_context_smoke" and smoke.model.name == "toy_context"
    assert (smoke.sample.images_per_prompt, smoke.sample.steps) == (2, 10)
    assert smoke.hydra.sweep.dir == "outputs/sweeps/smoke/toy_context"


def test_training_config_continues_the_shipped_toy_model():
    import yaml

    cfg = yaml.safe_load((ROOT / "conf" / "train_toy_context.yaml").read_text())
    assert cfg["train"]["init_from"] == "models/toy" and 0 < cfg["train"]["context_share"] < 1
    assert cfg["out_dir"] == "models/toy_context"


@needs_model
def test_shipped_model_and_its_record():
    size = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert size <= 25 * 2**20
    info = json.loads((SHIPPED / "training.json").read_text())
    assert info["steps"] > 0 and len(info["git_commit"]) == 40
    assert info["config"]["train"]["context_share"] > 0 and info["init_from"]["training"]["steps"] > 0


@needs_model
@pytest.mark.slow
def test_smoke_run_scores_every_category(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "asyndm", "experiment=toy_context", "smoke=toy_context", "progress=false",
            "device=cpu", f"run_dir={tmp_path}"]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = pd.read_csv(tmp_path / "results.csv")
    assert set(results.variant) == {"dm", "dm_concave", "asyndm", "asyndm_oracle"} and len(results.image_idx.unique()) == 10
    exact = results[results.metric == "context/exact"]
    assert len(exact) == 40 and exact.value.isin([0.0, 1.0]).all()
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert {"all", "above", "below", "inside", "outside", "on"} <= set(summary.category)
