"""The ``asyndm`` CLI end to end on ``model=tiny``: every output file, resume after an interruption,
static masks and the other curves, and each bad input (exit status 2, one line on stderr).

The sampling runs are subprocesses started together once per module (they overlap on the CPU
cores), each with one torch thread and the Hugging Face hub offline. Bad input goes through the
console script's main() in this process, plus one real subprocess for the exit status and stderr.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from asyndm.config import CONF_DIR
from asyndm.run_folder import MANIFEST_COLUMNS
from asyndm.prompts import load_prompts

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ["dm", "dm_concave", "asyndm"]
SEED, STEPS = 1234, 4
SMALL = [f"sample.steps={STEPS}", "device=cpu", "progress=false", "precision=fp32"]
MAIN = ["model=tiny", "prompts=animal", "prompts.limit=2", "sample.images_per_prompt=3", "sample.batch_size=2",
        "save.latents=true", "save.masks=true", *SMALL]  # 3 images per prompt in batches of 2 + 1
N_PROMPTS, PER_PROMPT = 2, 3
STATIC_EXP = ["model=tiny", "prompts=animal", "prompts.limit=1", "sample.images_per_prompt=2", "sample.batch_size=2",
              "mask=static", "curve=exp", "save.masks=true", *SMALL]
SINGLE_LIN = ["model=tiny", "prompt=a cat eating a sandwich", "items=[cat,sandwich]", "k=[0.7,0.5]", "curve=lin",
              "sample.images_per_prompt=1", "sample.batch_size=1", *SMALL]
# The reference release's two-file format, with a prompt whose legacy index (word 5, "a") is not
# the item word's token ("sheep" is token 7 after "car" and ","): the format implies legacy indices.
LEGACY_PROMPT = "A Red car, and a sheep."
LEGACY_FILES = {"prompts.json": [LEGACY_PROMPT],
                "items.json": {"item_idx": {LEGACY_PROMPT: [2, 5]}, "item_k": {LEGACY_PROMPT: [0.5, 0.7]}}}
# Bad input through the console script's main(), in this process (the heavy imports are paid once):
# name → (overrides, text the one-line error must contain). "unknown variant" also runs as a real
# subprocess, for the process's own exit status and stderr.
BAD = {
    "unknown variant": (["variants=[dm,asyndm_fast]"], "asyndm_fast"),
    "unknown curve": (["curve=quadratic"], "curve 'quadratic'"),
    "unknown curve name": (["curve.name=quadratic"], "curve 'quadratic'"),
    "unknown mask": (["mask=sometimes"], "mask 'sometimes'"),
    "one step": (["sample.steps=1"], "sample.steps=1"),
    "k above one": (["k=1.5"], "k=1.5"),
    "k zero": (["k=0"], "k=0"),
    "k count": (["k=[0.5,0.5,0.5]"], "k=[0.5, 0.5, 0.5]"),
    "missing model path": (["model=local", "model.path=/nonexistent/sd-model"], "model.path=/nonexistent/sd-model"),
    "item not in prompt": (["prompt=a cat on a mat", "items=[dog]", "k=0.5"], "item 'dog'"),
    "unknown experiment": (["experiment=table9"], "unknown experiment 'table9'"),
    "unknown evaluator": (["eval=[clip_tiny,clipscore]"], "unknown eval 'clipscore'"),
    "unknown smoke": (["smoke=huge"], "unknown smoke 'huge'"),
    "unknown smoke, old spelling": (["+smoke=huge"], "unknown smoke 'huge'"),
    "unknown logger": (["logger=tensorboard"], "unknown logger 'tensorboard'"),
    "unknown launcher": (["hydra/launcher=ray"], "unknown hydra/launcher 'ray'"),
    "mask resolution": (["mask.resolution=12"], "mask.resolution=12"),
    "image size": (["sample.height=-8"], "sample.height=-8"),
    "image size off the model's grid": (["sample.height=100"], "sample.height=100: this model needs a multiple of 16"),
    "steps not a whole number": (["sample.steps=2.5"], "sample.steps=2.5: not a valid int"),
    "k not a number": (["k=abc"], "k=abc: 'abc' is not a number"),
    "variant option of the wrong type": (["variant.cfgpp.scale=abc"], "variant.cfgpp.scale=abc"),
    "evaluator weights not in the cache": (["eval=[clip]"], "CLIP weights ViT-H-14/laion2b_s32b_b79k are not in the local cache"),
    "evaluator setting unknown": (["eval=[clip_tiny]", "+eval.clip.resolution=9"], "eval.clip: got an unexpected keyword"),
    "generator device": (["sample.generator_device=tpu"], "sample.generator_device=tpu"),
    "oracle without a world": (["prompts=animal", "variants=[dm,asyndm_oracle]"], "names no prompts.oracle_masks"),
    "oracle function missing": (["variants=[dm,asyndm_oracle]", "prompts.oracle_masks=evaluation.shapes:nothing"],
                                "has no function 'nothing'"),
}
BAD_ARGS = ["model=tiny", "prompts.limit=2", *SMALL]
# The done-when run, smaller: every baseline and a composed variant beside dm and asyndm,
# scored, with one baseline option changed on the command line.
BASELINES = ["dm", "asyndm", "attend_excite", "cfgpp", "scfg", "seg", "zsampling", "asyndm+cfgpp"]
WITH_BASELINES = ["model=tiny", "prompts=animal", "prompts.limit=1", "sample.images_per_prompt=2",
                  "sample.batch_size=2", "variants=[dm,asyndm,cfgpp,zsampling,seg,scfg,attend_excite,asyndm+cfgpp]",
                  "variant.cfgpp.scale=0.4", "eval=[clip_tiny]", "save.latents=true", "save.masks=true", *SMALL]


def env():
    out = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return out  # ASYNDM_CACHE (where the tiny model is built) is inherited


def start(args, run_dir):
    return subprocess.Popen(
        [sys.executable, "-m", "asyndm", *args, f"run_dir={run_dir}"],
        cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(proc, timeout=300):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out, err


def run_cli(args, run_dir):
    return finish(start(args, run_dir))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_path):  # tiny_path: the tiny model is built once, before the runs start
    """Start every run of this module at once; wait for all. name → (code, stdout, stderr, run_dir)."""
    base = tmp_path_factory.mktemp("cli")
    for name, content in LEGACY_FILES.items():
        (base / name).write_text(json.dumps(content))
    legacy = ["model=tiny", "prompts=custom", f"prompts.file={base / 'prompts.json'}",
              f"prompts.items_file={base / 'items.json'}", "variants=[asyndm]", "sample.images_per_prompt=1",
              "sample.batch_size=1", "save.latents=true", *SMALL]
    jobs = {"main": MAIN, "static_exp": STATIC_EXP, "single_lin": SINGLE_LIN, "legacy_files": legacy,
            "baselines": WITH_BASELINES}
    jobs["bad_variant"] = [*BAD_ARGS, *BAD["unknown variant"][0]]
    procs = {name: start(args, base / name) for name, args in jobs.items()}
    return {name: (*finish(proc), base / name) for name, proc in procs.items()}


def ok(runs, name):
    code, out, err, run_dir = runs[name]
    assert code == 0, f"{name} failed:\n{err[-3000:]}"
    return run_dir


def specs(limit=N_PROMPTS):
    return load_prompts(CONF_DIR / "prompts" / "animal.jsonl", limit=limit)


def png(path):
    return np.asarray(Image.open(path).convert("RGB"))


# ---------------------------------------------------------------------------- the main run


def test_every_image_file_exists(runs):
    run_dir = ok(runs, "main")
    expected = {f"{i:05}_{v}.png" for i in range(N_PROMPTS * PER_PROMPT) for v in VARIANTS}
    assert {p.name for p in (run_dir / "images").iterdir()} == expected
    for name in expected:
        image = Image.open(run_dir / "images" / name)
        assert image.size == (128, 128) and image.mode == "RGB"  # 64×64 latents × VAE factor 2


def test_manifest_rows_and_columns(runs):
    run_dir = ok(runs, "main")
    manifest = pd.read_csv(run_dir / "manifest.csv")
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == N_PROMPTS * PER_PROMPT * len(VARIANTS)
    config_hash = OmegaConf.load(run_dir / "config.yaml").config_hash
    expected = []
    for p, spec in enumerate(specs()):
        for j in range(PER_PROMPT):
            for v in VARIANTS:
                idx = p * PER_PROMPT + j  # image_idx counts over the run, prompt by prompt
                expected.append((idx, p, spec.prompt, spec.items, spec.k, SEED + j, v, f"images/{idx:05}_{v}.png"))
    got = [
        (r.image_idx, r.prompt_idx, r.prompt, json.loads(r.items), json.loads(r.k), r.seed, r.variant, r.file)
        for r in manifest.itertuples()
    ]
    assert sorted(got, key=str) == sorted(expected, key=str)
    assert set(manifest.config_hash.astype(str)) == {str(config_hash)}
    assert all((run_dir / f).is_file() for f in manifest.file)


def test_resolved_config_is_saved(runs):
    run_dir = ok(runs, "main")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert (cfg.sample.steps, cfg.sample.images_per_prompt, cfg.sample.batch_size) == (STEPS, 3, 2)
    assert (cfg.seed, cfg.curve.name, cfg.mask.name, cfg.model.name, cfg.prompts.limit) == (SEED, "bin", "dynamic", "tiny", 2)
    assert (cfg.sample.eta, cfg.sample.guidance_scale, cfg.mask.threshold) == (1.0, 5.0, 1.0)  # the paper's defaults
    assert cfg.save.latents is True and cfg.save.masks is True
    assert Path(cfg.prompts.file).is_file(), "interpolations are resolved"
    assert isinstance(cfg.config_hash, str) and len(cfg.config_hash) >= 8


def test_latents_are_float32_c_h_w_and_follow_the_seed_contract(runs, tiny_backend):
    run_dir = ok(runs, "main")
    files = sorted((run_dir / "latents").iterdir())
    assert [f.name for f in files] == sorted(f"{i:05}_{v}.npy" for i in range(6) for v in VARIANTS)
    for f in files:
        array = np.load(f)
        assert array.dtype == np.float32 and array.shape == (4, 64, 64)
    # dm images 0, 1, 2 of prompt 0 (batches [0, 1] and [2]) == diffusers' pipeline with seeds 1234..1236
    generators = [torch.Generator("cpu").manual_seed(SEED + j) for j in range(PER_PROMPT)]
    reference = tiny_backend.pipe(
        specs()[0].prompt, num_images_per_prompt=PER_PROMPT, generator=generators, eta=1.0,
        guidance_scale=5.0, num_inference_steps=STEPS, output_type="latent",
    ).images
    ours = torch.stack([torch.from_numpy(np.load(run_dir / "latents" / f"{j:05}_dm.npy")) for j in range(PER_PROMPT)])
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    # each image file is its latent decoded
    pipe = tiny_backend.pipe
    with torch.no_grad():
        decoded = pipe.vae.decode(ours / pipe.vae.config.scaling_factor, return_dict=False)[0]
    pixels = pipe.image_processor.postprocess(decoded, output_type="np")  # (B, H, W, 3) in [0, 1]
    for j in range(PER_PROMPT):
        diff = np.abs(png(run_dir / "images" / f"{j:05}_dm.png").astype(int) - np.round(pixels[j] * 255).astype(int))
        assert diff.max() <= 1


def test_variants_share_noise_but_differ(runs):
    run_dir = ok(runs, "main")
    for idx in (0, 5):
        latents = {v: np.load(run_dir / "latents" / f"{idx:05}_{v}.npy") for v in VARIANTS}
        assert not np.allclose(latents["dm"], latents["asyndm"])
        assert not np.allclose(latents["dm"], latents["dm_concave"])
    # prompt 1 image 0 uses seed 1234 again, prompt 0 image 1 uses 1235: both differ from image 0
    assert not np.allclose(np.load(run_dir / "latents/00000_dm.npy"), np.load(run_dir / "latents/00001_dm.npy"))


def test_mask_overlays(runs):
    run_dir = ok(runs, "main")
    assert sorted(p.name for p in (run_dir / "masks").iterdir()) == [f"{i:05}_asyndm.png" for i in range(6)]
    for i in range(6):
        overlay, image = png(run_dir / "masks" / f"{i:05}_asyndm.png"), png(run_dir / "images" / f"{i:05}_asyndm.png")
        assert overlay.shape == image.shape
        # every item map has cells ≥ its mean, so some region is always tinted
        assert (overlay != image).any()


def test_no_stray_temporary_files(runs):
    run_dir = ok(runs, "main")
    assert not [p for p in run_dir.rglob(".*") if p.is_file() and ".hydra" not in p.parts]


# ---------------------------------------------------------------------------- resume


def file_state(run_dir):
    skip = {"manifest.csv", "config.yaml", "asyndm.log", "status.json", "history.jsonl", "timesteps.csv"}
    return {
        p.relative_to(run_dir).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
        for p in run_dir.rglob("*")
        if p.is_file() and p.name not in skip and ".hydra" not in p.parts
    }


def test_resume_regenerates_only_what_is_missing_byte_identically(runs, tmp_path):
    original = ok(runs, "main")
    run_dir = tmp_path / "resumed"
    shutil.copytree(original, run_dir)  # copy2 keeps the mtimes
    before = file_state(run_dir)
    traces = pd.read_csv(run_dir / "timesteps.csv")
    deleted = {  # (image, variant) → its files; one per kind of batch
        (1, "dm"): ["images/00001_dm.png", "latents/00001_dm.npy"],  # in batch [0, 1]; image 0 stays
        (5, "asyndm"): ["images/00005_asyndm.png"],  # the remainder batch [5]
        (2, "asyndm"): ["masks/00002_asyndm.png"],  # only its mask is missing
    }
    for files in deleted.values():
        for f in files:
            (run_dir / f).unlink()
    stray = run_dir / "images" / ".00001_dm.png.x7k2q9"  # a killed run's half-written temp file
    stray.write_bytes(b"\x89PNG half")

    code, out, err = run_cli(MAIN, run_dir)
    assert code == 0, err[-3000:]
    after = file_state(run_dir)
    rewritten = {  # each regenerated (image, variant) writes all of its files again
        "images/00001_dm.png", "latents/00001_dm.npy",
        "images/00005_asyndm.png", "latents/00005_asyndm.npy", "masks/00005_asyndm.png",
        "images/00002_asyndm.png", "latents/00002_asyndm.npy", "masks/00002_asyndm.png",
    }
    for name, (mtime, data) in before.items():
        assert name in after, f"{name} missing after resume"
        assert after[name][1] == data, f"{name} differs from the uninterrupted run"
        if name not in rewritten:
            assert after[name][0] == mtime, f"{name} was rewritten although it was finished"
    manifest = pd.read_csv(run_dir / "manifest.csv")
    assert len(manifest) == 18 and ".00001_dm.png.x7k2q9" not in " ".join(manifest.file)
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "timesteps.csv"), traces)  # resampled rows: same values
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "end", "start", "end"]
    assert history[-1]["status"] == "completed" and torch.__version__.startswith(history[2]["versions"]["torch"])

    # a rerun of the complete folder samples nothing and loads no model
    settled = file_state(run_dir)
    code, out, err = run_cli(MAIN, run_dir)
    assert code == 0, err[-3000:]
    assert "Loading pipeline components" not in err
    assert file_state(run_dir) == settled


# ---------------------------------------------------------------------------- other settings


def test_static_masks_with_the_exp_curve(runs):
    run_dir = ok(runs, "static_exp")
    main_dir = ok(runs, "main")
    names = {f"{i:05}_{v}.png" for i in range(2) for v in VARIANTS}
    assert {p.name for p in (run_dir / "images").iterdir()} == names
    assert sorted(p.name for p in (run_dir / "masks").iterdir()) == ["00000_asyndm.png", "00001_asyndm.png"]
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert (cfg.mask.name, cfg.curve.name) == ("static", "exp")
    for i in range(2):
        # dm depends on neither curve nor mask: the same batch of the same seeds gives the same file
        assert (run_dir / f"images/{i:05}_dm.png").read_bytes() == (main_dir / f"images/{i:05}_dm.png").read_bytes()
        assert not np.array_equal(png(run_dir / f"images/{i:05}_asyndm.png"), png(main_dir / f"images/{i:05}_asyndm.png"))
        assert not np.array_equal(
            png(run_dir / f"images/{i:05}_dm_concave.png"), png(main_dir / f"images/{i:05}_dm_concave.png")
        ), "exp and bin concave curves differ"


def test_single_prompt_with_the_lin_curve(runs):
    run_dir = ok(runs, "single_lin")
    main_dir = ok(runs, "main")
    assert {p.name for p in (run_dir / "images").iterdir()} == {f"00000_{v}.png" for v in VARIANTS}
    manifest = pd.read_csv(run_dir / "manifest.csv")
    assert len(manifest) == 3
    row = manifest.iloc[0]
    assert (row.prompt, json.loads(row["items"]), json.loads(row.k), row.seed) == (
        "a cat eating a sandwich", ["cat", "sandwich"], [0.7, 0.5], SEED,
    )
    assert OmegaConf.load(run_dir / "config.yaml").curve.name == "lin"
    # the same prompt and seed as the main run's image 0, sampled in a batch of one instead of two
    diff = np.abs(png(run_dir / "images/00000_dm.png").astype(int) - png(main_dir / "images/00000_dm.png").astype(int))
    assert diff.max() <= 1


def test_python_api_gives_the_cli_latents(runs, tiny_pipe):
    """The CLI is built on AsyncPipeline: the same settings give the same latents, every variant."""
    run_dir = ok(runs, "main")
    spec = specs()[0]
    out = tiny_pipe(spec.prompt, items=spec.items, k=spec.k, variants=VARIANTS, num_images=2, seed=SEED,
                    num_inference_steps=STEPS, output_type="latent")
    for variant in VARIANTS:
        cli = torch.stack([torch.from_numpy(np.load(run_dir / "latents" / f"{j:05}_{variant}.npy")) for j in (0, 1)])
        assert torch.equal(out[variant].latents, cli), variant
    assert out["asyndm"].masks.shape == (2, 64, 64) and out["dm"].masks is None
    # diffusers' way: generators seeded seed + j give the CLI's images too
    generators = [torch.Generator("cpu").manual_seed(SEED + j) for j in (0, 1)]
    asyndm = tiny_pipe(spec.prompt, items=spec.items, k=spec.k, generator=generators, num_images_per_prompt=2,
                       num_inference_steps=STEPS, output_type="latent")
    cli = torch.stack([torch.from_numpy(np.load(run_dir / "latents" / f"{j:05}_asyndm.npy")) for j in (0, 1)])
    assert torch.equal(asyndm.latents, cli)


def test_baselines_are_paired_scored_and_reported(runs, tiny_pipe):
    """Every variant's images and latents; summary.csv pairs each with dm; the report shows them side
    by side; the Python API with the same option gives the CLI's latents for the baseline and its
    asyndm composition."""
    from evaluation.report import main as report

    run_dir = ok(runs, "baselines")
    for variant in BASELINES:
        assert all((run_dir / f"images/{j:05}_{variant}.png").is_file() for j in (0, 1)), variant
    assert sorted(p.name for p in (run_dir / "masks").iterdir()) == sorted(
        f"{j:05}_{v}.png" for j in (0, 1) for v in ("asyndm", "asyndm+cfgpp"))
    summary = pd.read_csv(run_dir / "summary.csv")
    assert list(summary["variant"]) == BASELINES  # dm first, then asyndm, the baselines, the composed one
    assert summary[summary.variant != "dm"]["n_pairs"].eq(2).all()
    assert summary[summary.variant != "dm"]["diff_vs_dm_mean"].notna().all()
    spec = specs(1)[0]
    out = tiny_pipe(spec.prompt, items=spec.items, k=spec.k, variants=["cfgpp", "asyndm+cfgpp"], num_images=2,
                    seed=SEED, num_inference_steps=STEPS, output_type="latent",
                    variant_options={"cfgpp": {"scale": 0.4}})
    for variant in ("cfgpp", "asyndm+cfgpp"):
        cli = torch.stack([torch.from_numpy(np.load(run_dir / "latents" / f"{j:05}_{variant}.npy")) for j in (0, 1)])
        assert torch.equal(out[variant].latents, cli), variant
    dm = np.load(run_dir / "latents/00000_dm.npy")
    assert all(not np.allclose(dm, np.load(run_dir / f"latents/00000_{v}.npy")) for v in BASELINES[1:])
    assert report([str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert all(v in page for v in BASELINES)


def test_reference_two_file_input_implies_its_legacy_indices(runs, tiny_pipe):
    run_dir = ok(runs, "legacy_files")
    cli = torch.from_numpy(np.load(run_dir / "latents" / "00000_asyndm.npy"))[None]
    common = dict(items=["car", "sheep"], k=[0.5, 0.7], variants=["asyndm"], num_images=1, seed=SEED,
                  num_inference_steps=STEPS, output_type="latent")
    legacy = tiny_pipe(LEGACY_PROMPT, item_tokens="legacy", legacy_item_idx=[2, 5], **common)["asyndm"].latents
    word = tiny_pipe(LEGACY_PROMPT, **common)["asyndm"].latents
    assert torch.equal(cli, legacy)
    assert not torch.equal(cli, word), "word and legacy positions differ for this prompt"


# ---------------------------------------------------------------------------- bad input


def test_bad_input_in_a_real_process_exits_2_with_one_line(runs):
    code, out, err, run_dir = runs["bad_variant"]
    assert code == 2, f"exit status {code}:\n{err[-2000:]}"
    assert err.strip().splitlines() == [
        "asyndm: error: unknown variant 'asyndm_fast' in variants: choose from [dm,dm_concave,asyndm,asyndm_oracle,"
        "attend_excite,cfgpp,scfg,seg,zsampling], or compose two as schedule+guidance (asyndm+cfgpp)"
    ]
    assert "Loading pipeline components" not in err + out, "the error must come before the model loads"
    assert not (run_dir / "images").exists()


@pytest.fixture
def cli_main(monkeypatch, capsys, tmp_path):
    """Run the console script's main() with these overrides; → (exit status, stderr, run_dir).

    Loading a model or tokenizer fails the test: each of these errors must come before either.
    """
    import asyndm.sources
    import asyndm.run
    from asyndm.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("the model (or tokenizer) was loaded before the bad input was reported")

    monkeypatch.setattr(asyndm.run, "load_backend", refuse)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def call(args, allow_tokenizer=False):
        if not allow_tokenizer:
            monkeypatch.setattr(asyndm.sources, "load_tokenizer", refuse)
        run_dir = tmp_path / "run"
        monkeypatch.setattr(sys, "argv", ["asyndm", *args, f"run_dir={run_dir}"])
        capsys.readouterr()
        try:
            with pytest.raises(SystemExit) as exit_info:
                main()
        finally:
            for handler in [h for h in root.handlers if h not in handlers]:  # Hydra's job logging
                root.removeHandler(handler)
                handler.close()
            root.setLevel(level)
        return exit_info.value.code, capsys.readouterr().err, run_dir

    return call


def one_line_error(code, err, run_dir, expected):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("asyndm: error: ") and expected in lines[0], lines[0]
    assert not (run_dir / "images").exists()


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_exits_2_with_one_line_naming_it(cli_main, name):
    args, expected = BAD[name]
    one_line_error(*cli_main([*BAD_ARGS, *args]), expected)


def test_empty_prompt_file(cli_main, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    one_line_error(*cli_main([*BAD_ARGS, "prompts=custom", f"prompts.file={empty}"]), f"prompts.file={empty}")


def test_legacy_index_past_the_prompt(cli_main, tmp_path):
    prompts, items = tmp_path / "p.json", tmp_path / "p_item.json"
    prompts.write_text(json.dumps(["a cat eating a sandwich"]))
    items.write_text(json.dumps({"item_idx": {"a cat eating a sandwich": [1, 5]}, "item_k": {"a cat eating a sandwich": [0.5, 0.5]}}))
    args = [*BAD_ARGS, "prompts=custom", f"prompts.file={prompts}", f"prompts.items_file={items}", "prompts.item_tokens=legacy"]
    one_line_error(*cli_main(args, allow_tokenizer=True), "legacy index 5 of item")


def test_a_folder_sampled_before_the_reference_semantics_is_refused(cli_main, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("config_hash: abc1234567\n")  # no sampler_semantics: version 1
    one_line_error(*cli_main(BAD_ARGS), "sampled by an earlier asyndm")


def test_a_folder_with_cfgpp_images_of_the_old_arithmetic_is_refused(cli_main, tmp_path):
    """CFG++'s default noise levels changed (config.RULE_REVISIONS): a folder whose config.yaml records
    no rule revisions and holds images of a variant on CFG++'s rule is refused, not resumed into;
    with the current revisions recorded the check passes (the settings' own check speaks next)."""
    run_dir = tmp_path / "run"
    (run_dir / "images").mkdir(parents=True)
    (run_dir / "images" / "00000_asyndm+cfgpp.png").write_bytes(b"")
    (run_dir / "config.yaml").write_text("config_hash: abc1234567\nsampler_semantics: 2\n")
    code, err, _ = cli_main(BAD_ARGS)
    assert code == 2 and "holds asyndm+cfgpp images sampled by an earlier asyndm whose cfgpp arithmetic" in err
    (run_dir / "config.yaml").write_text("config_hash: abc1234567\nsampler_semantics: 2\n"
                                         "rule_revisions: {cfgpp: 2, scfg: 2}\n")
    code, err, _ = cli_main(BAD_ARGS)
    assert code == 2 and "earlier asyndm" not in err and "holds a run with other settings" in err


@pytest.mark.parametrize("overrides,mode", [
    (["prompts=legacy_animal"], "legacy"),
    (["prompts=custom", "prompts.file=x.json", "prompts.items_file=x_item.json"], "legacy"),
    (["prompts=custom", "prompts.file=x.json", "prompts.items_file=x_item.json", "prompts.item_tokens=word"], "word"),
    (["prompts=animal"], "word"),
    (["experiment=table1_animal"], "legacy"),
    (["experiment=table1_animal", "prompts.item_tokens=word"], "word"),
])
def test_item_token_mode(overrides, mode):
    from hydra import compose, initialize_config_dir

    from asyndm.config import register_resolvers
    from asyndm.plan import item_token_mode

    register_resolvers()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    assert item_token_mode(cfg) == mode
