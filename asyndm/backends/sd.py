"""Stable Diffusion 1.x/2.x (and the toy world's pixel-space model): UNet, CLIP text encoder, DDIM.

Per-pixel timesteps enter through forward hooks on the ResNet blocks (asyndm/pixel_timesteps.py,
METHOD.md §5), item maps through capturing processors on the cross-attention layers of the mask's
grid (asyndm/attention.py, §6), and the update is the element-wise DDIM step (asyndm/ddim.py, §4).
The curves are the reference's under ``curve.semantics=reference``: Y = ``num_train_timesteps``,
o = ``steps_offset`` (§3), which put the linear curve on DDIM's own grid only when N divides Y; under
``refit`` they follow §9's formula through DDIM's grid. The step runs in the release's float32
arithmetic (asyndm/ddim.py), whatever the model's dtype.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

from .. import sources
from ..attention import AttentionStore, capture_cross_attention, capture_layer_names, cross_attention_grids
from ..attention_control import blur_queries, gradients_to_inputs, layers_at, layers_in, record_attention
from ..compilation import eager_while
from ..curves import timesteps_from_state
from ..ddim import ddim_step
from ..errors import ModelError
from ..generators import noise_generator
from ..pixel_timesteps import PixelTimestepUNet, check_supported
from ..tokens import item_token_positions
from ..conditioning import PromptConditioning, TextConditioning
from ..guidance import Prediction
from ..timeline import Timeline
from .base import Backend, ItemAttention, ItemTokens, place


class UNetItemAttention(ItemAttention):
    """Capturing processors on the ``attn2`` layers whose query grid is the mask's (§6)."""

    def __init__(self, unet, tokens: ItemTokens, latent_hw: tuple[int, int], resolution: int | None,
                 compiled: bool = False):
        latent_h, latent_w = latent_hw
        side = resolution or latent_h // 4
        self.layers = capture_layer_names(unet, latent_h, side)
        store = AttentionStore(tokens.positions)
        super().__init__((side, side * latent_w // latent_h), store, capture_cross_attention(unet, self.layers, store,
                                                                                      not compiled))


class StableDiffusionBackend(Backend):
    """``StableDiffusionPipeline`` folders: SD 1.x/2.x checkpoints, the tiny and the toy models."""

    family = "sd"
    pipeline_classes = ("StableDiffusionPipeline",)
    capabilities = ("renoised_step",)  # the DDIM step re-noises along Prediction.renoise (CFG++)
    #: the DDIM step's arithmetic (asyndm/ddim.py, METHOD.md §9): the release's float32 for SD 1.x/2.x
    step_arithmetic = "release"
    #: the curve semantics under which the curves keep the release's Y and o (§3) rather than §9's
    release_timeline = ("reference",)

    def __init__(self, pipe, device: torch.device, dtype: torch.dtype):
        from diffusers import DDIMScheduler

        check_supported(pipe.unet)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        for option in ("clip_sample", "thresholding"):  # the element-wise step (ddim.py) does neither
            if pipe.scheduler.config.get(option):
                raise ModelError(f"the scheduler config sets {option}=true, which asyndm's DDIM step does not "
                                 f"apply; set it to false in scheduler/scheduler_config.json")
        place(pipe, device, dtype, pipe.unet)  # an offloaded pipeline stays as its hooks keep it
        pipe.set_progress_bar_config(disable=True)
        super().__init__(pipe, device, dtype)
        config = pipe.scheduler.config
        self.num_train_timesteps = int(config.num_train_timesteps)
        self.prediction_type = config.prediction_type
        self.alphas = pipe.scheduler.alphas_cumprod.to(device, torch.float32)
        # on the device: a host tensor here would cost a copy (a sync on CUDA) every step
        self.final_alpha = torch.as_tensor(pipe.scheduler.final_alpha_cumprod, dtype=torch.float32).to(device)
        self.pixel_unet = PixelTimestepUNet(pipe.unet, self.num_train_timesteps)

    @classmethod
    def load_pipeline(cls, source: str, **kwargs):
        from diffusers import StableDiffusionPipeline

        kwargs.setdefault("safety_checker", None)
        return StableDiffusionPipeline.from_pretrained(source, requires_safety_checker=False, **kwargs)

    @classmethod
    def _vae_scale(cls, source: str) -> int:
        """Pixels per latent pixel from the VAE config; 1 for a pixel-space pipeline saved without a VAE."""
        from diffusers import AutoencoderKL

        try:
            vae_config = sources.from_pretrained(AutoencoderKL.load_config, source, subfolder="vae")
        except (OSError, ValueError):
            return 1
        return 2 ** (len(vae_config["block_out_channels"]) - 1)

    @classmethod
    def size_step(cls, source: str) -> int:
        """The VAE's factor times the UNet's downsampling (its per-pixel timesteps are subsampled on
        every block's grid, §5), and at least 4 latent pixels (the mask's default grid is latent/4, §6)."""
        from diffusers import UNet2DConditionModel

        unet_config = sources.from_pretrained(UNet2DConditionModel.load_config, source, subfolder="unet")
        return cls._vae_scale(source) * max(2 ** (len(unet_config["block_out_channels"]) - 1), 4)

    @classmethod
    def mask_resolutions(cls, source: str, height: int | None, width: int | None) -> list[int]:
        """Query-grid sides of the cross-attention layers, from the UNet and VAE configs (a UNet
        built on the meta device: its block structure without weights)."""
        from diffusers import UNet2DConditionModel

        unet_config = sources.from_pretrained(UNet2DConditionModel.load_config, source, subfolder="unet")
        scale = cls._vae_scale(source)
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(unet_config)
        size = unet_config["sample_size"]
        latent_h = height // scale if height else (size if isinstance(size, int) else size[0])
        return sorted({latent_h // factor for factor in cross_attention_grids(unet).values()})

    # --------------------------------------------------------------- components

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel; 1 for pixel-space pipelines saved without a VAE."""
        vae = getattr(self.pipe, "vae", None)
        return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of the latents at the default image size, from the UNet's config."""
        size = self.unet.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)

    # --------------------------------------------------------------- sizes

    @property
    def default_size(self) -> tuple[int, int]:
        return tuple(side * self.vae_scale_factor for side in self.latent_size)

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        return (self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def map_shape(self, latents: torch.Tensor) -> tuple[int, int]:
        return tuple(latents.shape[-2:])

    # --------------------------------------------------------------- prompts

    def encode(self, prompt: str, batch: int, negative_prompt: str, guided: bool) -> PromptConditioning:
        """As ``StableDiffusionPipeline.encode_prompt``: CLIP's last hidden states, (B, L, D)."""
        positive, negative = self.pipe.encode_prompt(prompt, self.device, batch, guided, negative_prompt)
        wrap = lambda states: TextConditioning({"encoder_hidden_states": states})  # noqa: E731
        return PromptConditioning(wrap(positive), wrap(negative) if guided else None)

    def item_tokens(self, prompt: str, items: list[str], legacy_item_idx: list[int] | None, mode: str) -> ItemTokens:
        positions = item_token_positions(self.tokenizer, prompt, items, legacy_item_idx, mode)
        length = min(len(self.tokenizer(prompt).input_ids), self.tokenizer.model_max_length)
        return ItemTokens(positions, length=length)

    # --------------------------------------------------------------- sampling

    def initial_latents(self, generators: list[torch.Generator], height: int, width: int) -> torch.Tensor:
        shape = (len(generators), *self.latent_shape(height, width))
        latents = randn_tensor(shape, generator=noise_generator(generators), device=self.device, dtype=self.dtype)
        return latents * self.pipe.scheduler.init_noise_sigma

    def timeline(self, num_steps: int, semantics: str = "reference") -> Timeline:
        """DDIM's own timesteps for dm; its step goes from t to t - Y // N (past 0: the final ᾱ).

        The curves' Y and o: the release's (Y = num_train_timesteps, o = steps_offset) under the
        semantics in ``release_timeline``, else §9's formula through DDIM's grid (every N)."""
        scheduler = self.pipe.scheduler
        scheduler.set_timesteps(num_steps, device=self.device)
        states = scheduler.timesteps.to(torch.float32)
        sync_next = states - self.num_train_timesteps // num_steps
        if semantics not in self.release_timeline:
            return Timeline.through(states, sync_next)
        return Timeline(
            num_train_timesteps=float(self.num_train_timesteps),
            offset=float(scheduler.config.steps_offset),
            sync_states=states,
            sync_next=sync_next,
        )

    def model_timesteps(self, states: torch.Tensor) -> torch.Tensor:
        return timesteps_from_state(states, self.num_train_timesteps)

    def unet_kwargs(self, latents: torch.Tensor, text: TextConditioning) -> dict:
        """The UNet call's conditioning keywords (SD: ``encoder_hidden_states``; SDXL adds its own)."""
        return text.tensors

    def predict(self, latents, states, text, uniform, capture_rows=None, attention=None, sync_state=None):
        timesteps = self.model_timesteps(states).repeat(self.repeats(latents, states), 1, 1)  # (rows, h, w)
        kwargs = self.unet_kwargs(latents, text)
        if attention is not None and capture_rows is not None:
            attention.arm(capture_rows)
        try:
            if uniform:  # every pixel shares one timestep: the plain diffusers call
                return self.unet(latents, timesteps[0, 0, 0], **kwargs, return_dict=False)[0]
            return self.pixel_unet(latents, timesteps, **kwargs, return_dict=False)[0]
        finally:
            if attention is not None:
                attention.disarm()

    def item_attention(self, tokens: ItemTokens, latents: torch.Tensor, resolution: int | None,
                       blocks=None) -> UNetItemAttention:
        if blocks is not None:
            raise ValueError(f"mask.blocks={list(blocks)}: UNet masks come from the layers of mask.resolution; "
                             f"leave mask.blocks unset")
        return UNetItemAttention(self.unet, tokens, self.map_shape(latents), resolution, self.compiled is not None)

    # --------------------------------------------------------------- compiled path (asyndm/compilation.py)

    def compile_regions(self) -> list:
        """The UNet's stages (down blocks, mid block, up blocks), each compiled once per shape with its
        ResNets, transformer blocks and the mask capture inside: on the tiny model a stage fuses
        more than its blocks one by one (0.90 against 0.95 × an eager call, docs/performance.md)."""
        unet = self.unet
        return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]

    def prepare_compile(self) -> None:
        self.pixel_unet.install()  # per-pixel hooks for good, switched per call (asyndm/pixel_timesteps.py)

    # --------------------------------------------------------------- the baselines' capabilities
    # Their hooks come and go with each use: under sample.compile the model runs eagerly inside them.

    def attention_probabilities(self, latents, sides, kinds=("attn1", "attn2"), explicit=False):
        side = self.map_shape(latents)[0]
        names = [n for kind in kinds for n in layers_at(self.unet, side, sides, kind)]
        return eager_while(record_attention(self.unet, names, side, explicit), self.compiled)

    def blurred_self_attention(self, latents, sigma, places=("mid",)):
        return eager_while(blur_queries(self.unet, layers_in(self.unet, places, "attn1"), self.map_shape(latents),
                                        sigma), self.compiled)

    def latent_gradients(self):
        return eager_while(gradients_to_inputs(self.unet), self.compiled)

    def _alpha(self, timesteps: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """ᾱ per pixel from ``table`` (None: the scheduler's alphas_cumprod); negative timesteps
        (diffusers' DDIM past the end) use final_alpha_cumprod."""
        table = self.alphas if table is None else table
        alphas = table[timesteps.clamp(0, len(table) - 1)]
        return torch.where(timesteps < 0, self.final_alpha, alphas)

    def step(self, prediction: Prediction, latents, states, next_states, eta, generators):
        """The element-wise DDIM step (§4), noise drawn as diffusers' DDIMScheduler draws it, in the
        family's arithmetic (``step_arithmetic``: the release's float32, or the scheduler's own)."""
        output, renoise = prediction.output, prediction.renoise
        noise = None
        if eta > 0:
            noise = randn_tensor(latents.shape, generator=noise_generator(generators), device=self.device,
                                 dtype=output.dtype)
        table = prediction.alphas_cumprod  # a rule's own indexing of the schedule (CFG++'s released one)
        alpha_t = self._alpha(torch.round(states).long(), table)[:, None]  # (B, 1, h, w) float32
        alpha_prev = self._alpha(torch.round(next_states).long(), table)[:, None]
        if self.step_arithmetic == "release":  # float32 whatever the model's dtype
            output, start = output.float(), latents.float()
            noise = None if noise is None else noise.float()
            renoise = None if renoise is None else renoise.float()
        else:
            start = latents
        return ddim_step(
            output, start, alpha_t, alpha_prev, eta, noise, self.prediction_type, renoise, self.step_arithmetic
        ).to(latents.dtype)

    def decode(self, latents: torch.Tensor, output_type: str = "pil"):
        """As the diffusers pipeline decodes (pixel-space models: the latents are the image)."""
        pipe = self.pipe
        if getattr(pipe, "vae", None) is None:
            images = latents
        else:
            images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(images, output_type=output_type, do_denormalize=[True] * len(images))
