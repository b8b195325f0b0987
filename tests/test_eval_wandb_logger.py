import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
from omegaconf import OmegaConf

from evaluation.offline.fake_run import make_fake_run
from evaluation.summary import summarize
from evaluation.wandb_logger import (WANDB_DIR_VARS, has_credentials, image_table_rows, log_run, resolve_mode,
                                     run_group, run_tags, summary_metrics, wandb_run_id)


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in (*WANDB_DIR_VARS, "WANDB_API_KEY", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    return home


def _results(run):
    manifest = pd.read_csv(run / "manifest.csv", keep_default_na=False)
    results = manifest[["image_idx", "prompt_idx", "prompt", "category", "seed", "variant"]].assign(
        metric="clip/cosine_raw", value=[0.3 + 0.01 * i for i in range(len(manifest))])
    return results


def test_resolve_mode(tmp_path):
    home = {"HOME": str(tmp_path)}  # no settings file, no netrc
    # logger.mode in the run's config wins over everything
    assert resolve_mode("offline", {**home, "WANDB_API_KEY": "x"}) == "offline"
    assert resolve_mode("online", {**home, "WANDB_MODE": "offline"}) == "online"
    # then WANDB_MODE, then the user's settings file, then credentials, else offline
    assert resolve_mode(None, {**home, "WANDB_MODE": "disabled", "WANDB_API_KEY": "x"}) == "disabled"
    assert resolve_mode(None, {**home, "WANDB_API_KEY": "x"}) == "online"
    assert resolve_mode(None, home) == "offline"
    settings = tmp_path / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text("[default]\nmode = offline\n")  # what `wandb offline` writes
    assert resolve_mode(None, {**home, "WANDB_API_KEY": "x"}) == "offline"
    with pytest.raises(ValueError, match="logger.mode='onlin'"):
        resolve_mode("onlin", home)


def test_credentials_follow_the_users_base_url(tmp_path):
    """A netrc entry counts for the host the user logged in to (`wandb login --host`), which the
    settings file in WANDB_CONFIG_DIR names; api.wandb.ai otherwise."""
    config_dir = tmp_path / "wandb-config"
    config_dir.mkdir()
    (config_dir / "settings").write_text("[default]\nbase_url = https://wandb.example.org\n")
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine wandb.example.org\n  login user\n  password " + "k" * 40 + "\n")
    netrc_file.chmod(0o600)
    env = {"HOME": str(tmp_path), "NETRC": str(netrc_file)}
    assert not has_credentials(env)  # the default host has no entry
    assert has_credentials({**env, "WANDB_CONFIG_DIR": str(config_dir)})
    assert has_credentials({**env, "WANDB_BASE_URL": "https://wandb.example.org"})
    assert resolve_mode(None, {**env, "WANDB_CONFIG_DIR": str(config_dir)}) == "online"


def test_run_id_group_and_tags(tmp_path):
    assert wandb_run_id("ab12cd34ef", 0, 1, "sample") == "asyndm-ab12cd34ef-sample"
    assert wandb_run_id("ab12cd34ef", 2, 4, "eval") == "asyndm-ab12cd34ef-shard2of4-eval"
    sweep = tmp_path / "sweeps" / "table2"
    job = sweep / "curve=lin,mask=static"
    (job / ".hydra").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}\n")
    assert run_group(job) == "table2"  # a job of a sweep: the sweep's name
    assert run_group(tmp_path / "runs" / "toy-shapes-bin") == "toy-shapes-bin"  # else the run folder's
    (job / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      experiment: table2\n      smoke: tiny\n      model: tiny\n")
    cfg = OmegaConf.create({"logger": {"tags": ["ablation"]}})
    assert run_tags(job, cfg) == ["table2", "smoke-tiny", "ablation"]
    assert run_tags(tmp_path / "runs" / "x", OmegaConf.create({"logger": {}})) == []


def test_table_rows_pair_variants_and_masks(tmp_path):
    run = make_fake_run(tmp_path / "run", seeds=(5, 6))
    results = _results(run)
    columns, image_columns, rows = image_table_rows(run, results, limit=10)
    assert image_columns == ["dm", "dm_concave", "asyndm", "mask"]
    assert len(rows) == 4
    row = dict(zip(columns, rows[1]))  # prompt 0, seed 6: image_idx 1
    assert row["seed"] == 6 and row["dm"].endswith("images/00001_dm.png")
    assert row["mask"].endswith("masks/00001_asyndm.png")
    assert row["asyndm/clip/cosine_raw"] == pytest.approx(0.3 + 0.01 * 5)  # manifest row 5


def test_offline_run_stays_in_run_folder(tmp_path, fake_home):
    run = make_fake_run(tmp_path / "run", config={"logger": {"name": "wandb", "project": "t", "mode": "offline"}})
    results = _results(run)
    summary = summarize(results)
    assert summary_metrics(summary)["asyndm/clip/cosine_raw/mean"] == pytest.approx(
        results[results.variant == "asyndm"]["value"].mean())
    with _no_warning():  # a wandb failure would only warn; make it fail the test
        assert log_run(run, OmegaConf.load(run / "config.yaml"), summary, results, name="job-1") is True
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
    assert not (fake_home / ".cache" / "wandb").exists()
    assert not (fake_home / ".local" / "share" / "wandb").exists()
    assert not (fake_home / ".config" / "wandb").exists()
    assert all(var not in os.environ for var in WANDB_DIR_VARS)  # environment restored


def _offline_runs(run):
    """{run id: [offline run folders]} under run/wandb, by the run-<id>.wandb file in each (the
    folder's name, offline-run-<time>-<id>, gets a suffix when two runs start in one second)."""
    found = {}
    for folder in sorted((run / "wandb").glob("offline-run-*")):
        for record in folder.glob("run-*.wandb"):
            found.setdefault(record.name[len("run-"):-len(".wandb")], []).append(folder)
    return found


def _record_bytes(folder):
    return b"".join(p.read_bytes() for p in folder.glob("*.wandb"))


def test_rerun_continues_the_same_wandb_run(tmp_path, fake_home):
    """Two logs of one job use one run id (from the config hash), with resume="allow", job_type,
    group, the experiment's tag, and the results artifact; asyndm-eval logs its own run."""
    from evaluation.cli import main as eval_main

    run = make_fake_run(tmp_path / "toy-shapes-bin", config={
        "config_hash": "cafe0123ab", "logger": {"name": "wandb", "project": "t", "mode": "offline"}})
    (run / ".hydra").mkdir()
    (run / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      experiment: toy_alignment\n")
    results = _results(run)
    summary = summarize(results)
    from asyndm.run_folder import write_table

    write_table(run / "results.csv", results)
    write_table(run / "summary.csv", summary)
    cfg = OmegaConf.load(run / "config.yaml")
    inits = []
    import wandb

    real_init = wandb.init

    def spy(**kwargs):
        inits.append(kwargs)
        return real_init(**kwargs)

    wandb.init = spy
    try:
        with _no_warning():
            assert log_run(run, cfg, summary, results) is True
            assert log_run(run, cfg, summary, results) is True  # the rerun
            assert eval_main([str(run), "logger.project=t"]) == 0  # asyndm-eval, logger from the run
    finally:
        wandb.init = real_init
    assert [(k["id"], k["resume"], k["job_type"]) for k in inits] == [
        ("asyndm-cafe0123ab-sample", "allow", "sample"), ("asyndm-cafe0123ab-sample", "allow", "sample"),
        ("asyndm-cafe0123ab-eval", "allow", "eval")]
    assert {k["group"] for k in inits} == {"toy-shapes-bin"} and all(k["tags"] == ["toy_alignment"] for k in inits)
    assert {k["reinit"] for k in inits} == {"finish_previous"}
    runs = _offline_runs(run)
    assert sorted(runs) == ["asyndm-cafe0123ab-eval", "asyndm-cafe0123ab-sample"]
    assert len(runs["asyndm-cafe0123ab-sample"]) == 2  # wandb sync uploads both into one run
    record = _record_bytes(runs["asyndm-cafe0123ab-sample"][0])
    for expected in (b"toy_alignment", b"toy-shapes-bin", b"results-asyndm-cafe0123ab-sample", b"timesteps"):
        assert expected in record, expected
    assert b"results-asyndm-cafe0123ab-eval" in _record_bytes(runs["asyndm-cafe0123ab-eval"][0])
    assert not (fake_home / ".cache" / "wandb").exists()
    assert not (fake_home / ".local" / "share" / "wandb").exists()


def test_the_users_wandb_settings_are_left_alone(tmp_path, fake_home, monkeypatch):
    """WANDB_CONFIG_DIR (where `wandb login --host` keeps the base URL), WANDB_BASE_URL and a chosen
    cache folder are the user's during the call and after it; only unset folders go to the run."""
    import wandb

    run = make_fake_run(tmp_path / "run", config={"logger": {"name": "wandb", "mode": "offline"}})
    user_config, user_cache = tmp_path / "user-config", tmp_path / "user-cache"
    user_config.mkdir()
    (user_config / "settings").write_text("[default]\nbase_url = https://wandb.example.org\n")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(user_config))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(user_cache))
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    seen = {}

    def spy(**kwargs):
        seen.update({k: os.environ.get(k) for k in (*WANDB_DIR_VARS, "WANDB_BASE_URL")}, dir=kwargs["dir"])
        raise RuntimeError("stop here")

    monkeypatch.setattr(wandb, "init", spy)
    with pytest.warns(UserWarning, match="stop here"):
        assert log_run(run, OmegaConf.load(run / "config.yaml")) is False
    assert seen["WANDB_CONFIG_DIR"] == str(user_config) and seen["WANDB_BASE_URL"] == "https://wandb.example.org"
    assert seen["WANDB_CACHE_DIR"] == str(user_cache)
    assert seen["WANDB_DATA_DIR"] == str(run.resolve() / "wandb" / "data")  # unset by the user: the run's
    assert seen["dir"] == str(run.resolve())
    assert os.environ["WANDB_CONFIG_DIR"] == str(user_config) and os.environ["WANDB_CACHE_DIR"] == str(user_cache)
    assert "WANDB_DATA_DIR" not in os.environ


def test_a_failure_while_logging_finishes_the_run_and_keeps_results(tmp_path, fake_home, monkeypatch):
    import wandb

    run = make_fake_run(tmp_path / "run", config={"logger": {"name": "wandb", "mode": "offline"}})
    results = _results(run)
    summary = summarize(results)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    import evaluation.timesteps

    monkeypatch.setattr(evaluation.timesteps, "step_means", broken)  # fails after wandb.init
    with pytest.warns(UserWarning, match="disk full.*results.csv and summary.csv"):
        assert log_run(run, OmegaConf.load(run / "config.yaml"), summary, results) is False
    assert wandb.run is None  # finished, so the next job does not log into it


def test_wandb_failure_is_a_warning(tmp_path, fake_home, monkeypatch):
    import wandb

    run = make_fake_run(tmp_path / "run")

    def broken(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken)
    with pytest.warns(UserWarning, match="no network"):
        assert log_run(run, OmegaConf.load(run / "config.yaml")) is False


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", UserWarning)

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
