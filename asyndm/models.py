"""Loading Stable Diffusion 1.x/2.x pipelines the way users name them (local folder or hub id),
and building the project's own offline ``tiny`` model through the very same loader.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TINY_VERSION = "tiny-sd-v1"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class ModelBundle:
    """Everything the sampler needs from a pipeline, with sizes read from the model's own config."""

    pipe: object  # StableDiffusionPipeline with a DDIMScheduler
    device: torch.device
    dtype: torch.dtype
    latent_size: tuple[int, int]  # (h, w)

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel; 1 for pixel-space pipelines saved without a VAE."""
        vae = getattr(self.pipe, "vae", None)
        return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1


def cache_dir() -> Path:
    return Path(os.environ.get("ASYNDM_CACHE", Path.home() / ".cache" / "asyndm")).expanduser()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device={name}: CUDA is not available on this machine; use device=cpu or device=auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ModelError(f"device={name}: choose auto, cpu or cuda")
    return torch.device(name)


def resolve_dtype(precision: str) -> torch.dtype:
    if precision not in DTYPES:
        raise ModelError(f"precision={precision}: choose one of {', '.join(DTYPES)}")
    return DTYPES[precision]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def model_source(model_cfg) -> str:
    """The folder or hub id to load, checked without loading anything (the tiny model is built here)."""
    path = model_cfg.get("path")
    if model_cfg.get("builder") == "tiny" and not path:
        return str(build_tiny_pipeline())
    if not path:
        raise ModelError("model.path is empty: give a local diffusers folder or a hub id (model.path=<folder>)")
    local = Path(str(path)).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise ModelError(f"model.path={path}: the folder has no model_index.json; point at a diffusers pipeline folder")
        return str(local)
    if str(path).startswith((".", "/", "~")) or not _HUB_ID.fullmatch(str(path)):
        raise ModelError(f"model.path={path}: no such folder; give an existing diffusers folder or a hub id like org/name")
    if _offline() and not _in_hub_cache(str(path)):
        raise ModelError(_download_advice(str(path), "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"))
    return str(path)


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)


def _download_advice(source: str, problem: str) -> str:
    return (
        f"model.path={source}: {problem}. Download it where there is network "
        f"(huggingface-cli download {source} --local-dir <dir>) and pass model.path=<dir>"
    )


def _from_pretrained(loader, source: str, **kwargs):
    """Local folders load directly; hub ids come from the cache, or are downloaded unless offline."""
    if Path(source).exists():
        return loader(source, **kwargs)
    try:
        return loader(source, local_files_only=True, **kwargs)
    except (OSError, ValueError) as cached_err:
        if _offline():
            raise ModelError(_download_advice(source, "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")) from cached_err
    try:
        return loader(source, **kwargs)
    except Exception as err:  # noqa: BLE001 - any hub failure ends in the same advice
        raise ModelError(_download_advice(source, f"could not be loaded from the hub ({type(err).__name__}: {err})")) from err


def load_tokenizer(source: str):
    """The pipeline's tokenizer alone: cheap, so prompts are checked before the weights load."""
    from transformers import CLIPTokenizer

    tokenizer = _from_pretrained(CLIPTokenizer.from_pretrained, source, subfolder="tokenizer")
    if len(tokenizer) < 1000:  # transformers 5 may return a 2-token stub offline instead of raising
        raise ModelError(_download_advice(source, f"the tokenizer loaded with only {len(tokenizer)} tokens; its files are missing"))
    return tokenizer


def load_model(source: str, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    """Load an SD 1.x/2.x diffusers pipeline and switch it to DDIM (METHOD.md §4)."""
    from diffusers import StableDiffusionPipeline

    pipe = _from_pretrained(
        StableDiffusionPipeline.from_pretrained,
        source,
        torch_dtype=dtype,
        requires_safety_checker=False,
        **{"safety_checker": None, **_absent_components(source)},
    )
    return bundle_from_pipeline(pipe, device, dtype)


def _absent_components(source: str) -> dict[str, None]:
    """Components a local folder saved as None (a pixel-space pipeline has no VAE).

    diffusers refuses to load such a folder unless each missing component is passed as None.
    """
    index = Path(source) / "model_index.json"
    if not index.is_file():
        return {}
    entries = json.loads(index.read_text(encoding="utf-8"))
    return {name: None for name, value in entries.items() if isinstance(value, list) and value == [None, None]}


def bundle_from_pipeline(pipe, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    """Wrap a pipeline already in memory: DDIM scheduler, device, dtype, sizes from its config."""
    from diffusers import DDIMScheduler

    from .pixel_timesteps import check_supported

    check_supported(pipe.unet)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.to(device)
    if pipe.unet.dtype != dtype:  # from_pretrained already applied torch_dtype; cast only in-memory builds
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size
    latent = (size, size) if isinstance(size, int) else tuple(size)
    return ModelBundle(pipe=pipe, device=device, dtype=dtype, latent_size=latent)


# ----------------------------------------------------------------------------- the tiny model


def _clip_bpe_files(folder: Path) -> None:
    """vocab.json + merges.txt of the real CLIP tokenizer, from the BPE file open_clip ships."""
    import open_clip.tokenizer as oct

    bpe = Path(oct.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(oct.bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _tiny_pipeline():
    """A small SD-shaped pipeline with random weights: 64×64 latents, cross-attention at 32 and 16."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        use_linear_projection=True,
    )
    torch.manual_seed(1)
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=128,
    )
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    return _assemble(unet, vae, text_encoder, _clip_tokenizer("<|endoftext|>"))


def _clip_tokenizer(pad_token: str):
    """The real CLIP tokenizer, offline (SD1 pads with <|endoftext|>, SD2 with '!')."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        _clip_bpe_files(Path(tmp))
        # from_pretrained reads the files in transformers 4 and 5 alike
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77, pad_token=pad_token)


def sd_ddim_scheduler(prediction_type: str = "epsilon"):
    """DDIM on SD 1.x/2.x's own noise schedule, as their scheduler configs set it."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def _assemble(unet, vae, text_encoder, tokenizer):
    """A StableDiffusionPipeline with SD's own DDPM schedule (as the SD 1.x/2.x configs)."""
    from diffusers import StableDiffusionPipeline

    scheduler = sd_ddim_scheduler()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sd21_shaped_pipeline():
    """The exact SD2.1-base architecture (865 M UNet, OpenCLIP-H text encoder) with random weights.

    For benchmarks: same shapes and kernels as the real model, built offline in memory.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            max_position_embeddings=77,
            hidden_act="gelu",
            projection_dim=512,
        )
    )
    return _assemble(unet, vae, text_encoder, _clip_tokenizer("!"))


def build_tiny_pipeline(root: Path | None = None) -> Path:
    """Build (once) and save the tiny pipeline as a diffusers folder; returns its path."""
    folder = (root or cache_dir() / "models") / TINY_VERSION
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        _tiny_pipeline().save_pretrained(staging)
        try:
            staging.rename(folder)  # atomic: a half-built folder never looks finished
        except OSError:
            if not (folder / "model_index.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
