"""Which families sample which variants (asyndm/capabilities.py): for every (family, variant) pair the
declared support matches what happens. A supported pair samples 2 steps of one image on the family's
tiny model; an unsupported one is refused in one line naming the variant, the family, the capability
and the fix, before any weights load on the command line and before anything samples in Python."""

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import asyndm.run
from asyndm import AsyncPipeline, capabilities
from asyndm.backends.base import Backend
from asyndm.backends.sd import StableDiffusionBackend
from asyndm.config import CONF_DIR, register_resolvers
from asyndm.errors import AsyndmError, ConfigError
from asyndm.variants import VARIANTS, Variant, get_variant

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a cat eating a sandwich"
ITEMS, K = ["cat", "sandwich"], [0.7, 0.5]
FAMILIES = {"sd": "tiny", "sdxl": "tiny_sdxl", "sd3": "tiny_sd3", "flux": "tiny_flux", "wan": "tiny_wan"}
# every registered variant but those reading their masks off dm's images (they need oracle_masks= and no
# capability), and a composed one: a composed variant needs what its rule needs
NAMES = [v for v in VARIANTS if get_variant(v).masks != "oracle"] + ["asyndm+seg"]
PAIRS = [(family, variant) for family in FAMILIES for variant in NAMES]
# sizes at which each tiny model has the attention grids the baselines read (S-CFG: latent/4 and /8;
# Attend-and-Excite: a 16-sided cross-attention grid, latent/2 on the tiny SDXL)
SIZES = {"sd": 64, "sdxl": 64, "wan": 32}
LOAD = {"wan": {"num_frames": 1}}  # one frame: Wan's path at an image's cost
OPTIONS = {"sdxl": {"attend_excite": {"attention_res": 16}}}


def supported(family: str, variant: str) -> bool:
    return family in capabilities.supporting(variant)


@pytest.fixture(scope="module")
def pipes(request):
    """A pipeline per family, loaded once (the session's tiny backends where conftest has them)."""
    from asyndm.models import load_backend
    from asyndm.sources import model_source

    found = {}

    def get(family):
        if family not in found:
            register_resolvers()
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name="config", overrides=[f"model={FAMILIES[family]}"])
            source = model_source(cfg.model)
            found[family] = AsyncPipeline(load_backend(source, torch.device("cpu"), torch.float32,
                                                              **LOAD.get(family, {})), source)
        return found[family]

    return get


def test_every_family_offers_what_it_overrides_and_the_table_says_so():
    offered = {family: capabilities.offers(cls) for family, cls in capabilities.families().items()}
    assert set(FAMILIES) <= set(offered)
    assert offered["sd"] == offered["sdxl"] == set(capabilities.CAPABILITIES)
    for family in ("sd3", "wan"):  # each still raises NotImplementedError for every optional method
        assert offered[family] == {"classifier_free_guidance"}, family
    assert offered["flux"] == set()  # and FLUX.1 embeds its guidance scale


@pytest.mark.parametrize("family,variant", [pytest.param(*p, id="-".join(p)) for p in PAIRS if supported(*p)])
def test_a_supported_pair_samples_on_the_tiny_model(pipes, family, variant):
    pipe = pipes(family)
    side = SIZES.get(family)
    out = pipe(PROMPT, items=ITEMS, k=K, variant=variant, num_inference_steps=2, num_images_per_prompt=1,
               height=side, width=side, output_type="latent",
               variant_options=OPTIONS.get(family, {}))
    assert torch.isfinite(out.images).all()


def _message(family: str, variant: str) -> str:
    others = ", ".join(capabilities.supporting(variant))
    return (rf"^variant '{re.escape(variant)}'.* needs the backend capabilit(y|ies) .*which the {family} family "
            rf"lacks: drop '{re.escape(variant)}' from variants, or sample it with a model of a family that has "
            rf"(it|them) \({others}\)$")


@pytest.mark.parametrize("family,variant", [pytest.param(*p, id="-".join(p)) for p in PAIRS if not supported(*p)])
def test_an_unsupported_pair_is_refused_before_sampling_in_python(pipes, monkeypatch, family, variant):
    pipe = pipes(family)

    def never(*args, **kwargs):
        raise AssertionError("the model was called")

    monkeypatch.setattr(pipe.backend, "predict", never)
    monkeypatch.setattr(pipe.backend, "encode", never)
    with pytest.raises(AsyndmError, match=_message(family, variant)):
        pipe(PROMPT, items=ITEMS, k=K, variants=["dm", variant], num_inference_steps=2, num_images_per_prompt=1)


def _unloadable_run_config(monkeypatch, *overrides):
    """A composed run config (a cat and a sandwich, 2 steps, no evaluators) whose weights must not load:
    loading them fails the test."""
    import diffusers

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(asyndm.run, "load_backend", never)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", never)
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[
            f"prompt={PROMPT}", "items=[cat,sandwich]", "k=[0.7,0.5]", "sample.steps=2", "sample.images_per_prompt=1",
            "sample.batch_size=1", "progress=false", "eval=[]", *overrides])


@pytest.mark.parametrize("family,variant", [pytest.param(*p, id="-".join(p)) for p in PAIRS if not supported(*p)])
def test_an_unsupported_pair_is_refused_before_any_weights_load_on_the_command_line(tmp_path, monkeypatch,
                                                                                    family, variant):
    cfg = _unloadable_run_config(monkeypatch, f"model={FAMILIES[family]}", f"variants=[dm,{variant}]")
    with pytest.raises(ConfigError, match=_message(family, variant)):
        asyndm.run.sample_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_the_cli_prints_the_refusal_in_one_line_and_exits_2(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "asyndm", "model=tiny_wan", f"prompt={PROMPT}", "items=[cat]",
                           "k=[0.7]", "variants=[dm,asyndm+seg]", "eval=[]", "progress=false",
                           f"run_dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "asyndm: error: variant 'asyndm+seg' (seg's rule) needs the backend capability blurred_self_attention, "
        "which the wan family lacks: drop 'asyndm+seg' from variants, or sample it with a model of a family that "
        "has it (sd, sdxl)")
    assert "Loading pipeline components" not in proc.stderr


def test_docs_state_the_declared_support():
    text = (ROOT / "docs" / "baselines.md").read_text()
    assert capabilities.table() in text


def test_a_plugin_variant_and_backend_take_part_without_edits():
    """A capability is offered by overriding the base method or by naming it in ``capabilities``."""

    class Blurring(Backend):
        family = "blurring"

        def blurred_self_attention(self, latents, sigma, places=("mid",)):
            return None

    class Declaring(StableDiffusionBackend):
        family = "declaring"
        capabilities = ("my_capability",)

    assert capabilities.offers(Blurring) == {"classifier_free_guidance", "blurred_self_attention"}
    assert capabilities.offers(Declaring) == set(capabilities.CAPABILITIES) | {"my_capability"}
    mine = Variant("needs_mine_test", "sync", "a plugin's rule", needs=("my_capability",))
    from asyndm.variants import register_variant

    register_variant(mine)
    try:
        assert capabilities.lacks("needs_mine_test", Declaring) == []
        assert capabilities.lacks("asyndm+needs_mine_test", Blurring) == ["my_capability"]
        assert capabilities.lacks("dm_concave+seg", Blurring) == []
        with pytest.raises(ConfigError, match="'asyndm\\+needs_mine_test' \\(needs_mine_test's rule\\) needs the "
                                              "backend capability my_capability, which the blurring family lacks: "
                                              ".*; no installed family has it$"):
            capabilities.check_variants(["dm", "asyndm+needs_mine_test"], Blurring)
    finally:
        VARIANTS._added.pop("needs_mine_test")
    with pytest.raises(ValueError, match="must be a tuple of capability names"):
        Variant("bad_needs", "sync", "", needs="attention_probabilities")


@pytest.fixture
def wan_without_regions(monkeypatch):
    """Wan as a family without compile regions (as a plugin's family may be): the Backend default."""
    from asyndm.backends.wan import WanBackend

    monkeypatch.setattr(WanBackend, "compile_regions", Backend.compile_regions)


def test_every_shipped_family_has_a_compiled_path():
    assert {family for family, cls in capabilities.families().items() if cls.has_compiled_path()} == set(FAMILIES)


def test_compile_is_refused_before_any_weights_load_for_a_family_without_a_compiled_path(tmp_path, monkeypatch,
                                                                                         wan_without_regions):
    cfg = _unloadable_run_config(monkeypatch, "model=tiny_wan", "variants=[dm,asyndm]", "sample.compile=true")
    with pytest.raises(ConfigError, match=r"^sample.compile=true: the wan family has no compiled path; "
                                          r"set sample.compile=false$"):
        asyndm.run.sample_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_compile_is_refused_in_python_terms_before_sampling(pipes, monkeypatch, wan_without_regions):
    pipe = pipes("wan")
    monkeypatch.setattr(pipe.backend, "encode", lambda *a, **k: pytest.fail("the model was called"))
    with pytest.raises(AsyndmError, match=r"^compile=true: the wan family has no compiled path; set compile=false$"):
        pipe(PROMPT, items=ITEMS, k=K, num_inference_steps=2, num_images_per_prompt=1, compile=True)
    assert pipe.backend.compiled is None


def test_compile_names_the_torch_it_needs(monkeypatch):
    from asyndm.compilation import compile_problem

    assert compile_problem(StableDiffusionBackend) is None
    monkeypatch.delattr(torch.compiler, "set_stance")
    assert compile_problem(StableDiffusionBackend) == (
        f"sample.compile=true needs torch >= 2.6 (this is {torch.__version__}): upgrade torch, or set "
        f"sample.compile=false")
