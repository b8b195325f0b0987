"""The sampling loop for one batch of one prompt: ``dm``, ``dm_concave`` and ``asyndm`` (METHOD.md §2–§7).

Data flows one way: prompt embeddings and seeds in, final latents and masks out. Each variant
draws its noise from fresh generators seeded ``seed + j``, so the three start from identical noise
and an image does not depend on which batch it was sampled in.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .attention import AttentionStore, capture_cross_attention, capture_layer_names
from .curves import concave_step, timesteps_from_state
from .ddim import ddim_step
from .masks import initial_assignment, k_map_from_assignment, masks_from_attention
from .models import ModelBundle
from .pixel_timesteps import PixelTimestepUNet

VARIANTS = ("dm", "dm_concave", "asyndm")
MASK_MODES = ("dynamic", "static")


@dataclass(frozen=True)
class SamplingSettings:
    """The paper's defaults (METHOD.md §4, §6)."""

    steps: int = 50
    eta: float = 1.0
    guidance_scale: float = 5.0
    negative_prompt: str = ""
    curve: str = "bin"
    mask_mode: str = "dynamic"
    mask_threshold: float = 1.0
    mask_resolution: int | None = None  # side of the attention grid; None = latent side / 4
    show_progress: bool = False


@dataclass
class VariantResult:
    latents: torch.Tensor  # (B, C, h, w), before decoding
    assignment: torch.Tensor | None = None  # (B, h, w) final item index per pixel, -1 background
    timestep_maps: list[torch.Tensor] = field(default_factory=list)  # per step (B, h, w), if recorded
    item_maps: list[torch.Tensor] = field(default_factory=list)  # per step (B, n_items, g_h*g_w), if recorded


class AsyncSampler:
    """Samples paired images of the three variants with one model bundle."""

    def __init__(self, bundle: ModelBundle, settings: SamplingSettings):
        self.bundle = bundle
        self.settings = settings
        config = bundle.scheduler.config
        self.num_train_timesteps = int(config.num_train_timesteps)
        self.offset = float(config.steps_offset)
        self.prediction_type = config.prediction_type
        self.alphas = bundle.scheduler.alphas_cumprod.to(bundle.device, torch.float32)
        # on the device: a host tensor here would cost a copy (a sync on CUDA) every step
        self.final_alpha = torch.as_tensor(bundle.scheduler.final_alpha_cumprod, dtype=torch.float32).to(bundle.device)
        self.pixel_unet = PixelTimestepUNet(bundle.unet, self.num_train_timesteps)
        latent_h, latent_w = bundle.latent_size
        resolution = settings.mask_resolution or latent_h // 4
        self.capture_layers = capture_layer_names(bundle.unet, latent_h, resolution)
        self.mask_grid = (resolution, resolution * latent_w // latent_h)

    @property
    def guided(self) -> bool:
        return self.settings.guidance_scale > 1

    # ------------------------------------------------------------------ inputs

    @torch.no_grad()
    def encode(self, prompt: str, batch: int) -> torch.Tensor:
        """Text embeddings, [negative; positive] under guidance, exactly as the diffusers pipeline."""
        positive, negative = self.bundle.pipe.encode_prompt(
            prompt, self.bundle.device, batch, self.guided, self.settings.negative_prompt
        )
        return torch.cat([negative, positive]) if self.guided else positive

    def generators(self, seeds: list[int]) -> list[torch.Generator]:
        return [torch.Generator(device=self.bundle.device).manual_seed(int(s)) for s in seeds]

    def initial_latents(self, generators: list[torch.Generator], dtype: torch.dtype) -> torch.Tensor:
        unet_cfg = self.bundle.unet.config
        shape = (len(generators), unet_cfg.in_channels, *self.bundle.latent_size)
        latents = randn_tensor(shape, generator=generators, device=self.bundle.device, dtype=dtype)
        return latents * self.bundle.scheduler.init_noise_sigma

    # ------------------------------------------------------------------ schedules

    def _alpha(self, timesteps: torch.Tensor) -> torch.Tensor:
        """ᾱ per pixel; negative timesteps (diffusers' DDIM past the end) use final_alpha_cumprod."""
        alphas = self.alphas[timesteps.clamp(min=0)]
        return torch.where(timesteps < 0, self.final_alpha, alphas)

    def _transition(self, state, steps_left, k_map):
        """Next state per pixel: the concave curve where k > 0, the linear one where k = 0."""
        return concave_step(
            self.settings.curve, state, steps_left, k_map, self.settings.steps, self.num_train_timesteps, self.offset
        )

    # ------------------------------------------------------------------ the loop

    @torch.no_grad()
    def sample_variant(
        self,
        variant: str,
        embeddings: torch.Tensor,
        seeds: list[int],
        token_positions: list[list[int]],
        item_k: list[float],
        fixed_assignment: torch.Tensor | None = None,
        capture: bool = False,
        record_timesteps: bool = False,
        record_item_maps: bool = False,
        k_override: torch.Tensor | None = None,
    ) -> VariantResult:
        """Denoise one batch as ``variant``.

        ``fixed_assignment`` (B, h, w) makes asyndm's mask static; ``capture`` returns the mean over
        steps of the item maps (for static masks, from the dm pass) as the result's ``assignment``
        source. ``record_item_maps`` keeps each step's captured item maps (for mask analyses).
        ``k_override`` (B, h, w) pins the per-pixel k map (tests use zeros: every pixel linear).
        """
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant '{variant}': choose from {', '.join(VARIANTS)}")
        s, device = self.settings, self.bundle.device
        batch = len(seeds)
        height, width = self.bundle.latent_size
        k_items = torch.tensor(item_k, dtype=torch.float64, device=device)
        generators = self.generators(seeds)
        latents = self.initial_latents(generators, embeddings.dtype)

        dynamic = variant == "asyndm" and fixed_assignment is None and k_override is None
        assignment = None
        if variant == "asyndm":
            if k_override is not None:
                k_map = k_override.to(device, torch.float64)
            else:
                assignment = fixed_assignment if fixed_assignment is not None else initial_assignment(
                    batch, height, width, token_positions, device
                )
                k_map = k_map_from_assignment(assignment, k_items)
        else:
            k_value = max(item_k) if variant == "dm_concave" else 0.0
            k_map = torch.full((batch, height, width), k_value, dtype=torch.float64, device=device)

        # dm follows the scheduler's own timesteps; the others carry a per-pixel state (§3).
        schedule = self.bundle.scheduler
        schedule.set_timesteps(s.steps, device=device)
        step_gap = self.num_train_timesteps // s.steps
        state = torch.full((batch, height, width), self.num_train_timesteps + self.offset, dtype=torch.float64, device=device)
        state = self._transition(state, s.steps, k_map)

        store = None
        if capture or dynamic or record_item_maps:
            weights = torch.zeros(embeddings.shape[1], len(token_positions), device=device)
            for item, positions in enumerate(token_positions):
                weights[positions, item] = 1.0 / len(positions)
            store = AttentionStore(weights, 0.5 if self.guided else 0.0)
        captured_sum = None
        timestep_maps, recorded_maps = [], []

        capturing = capture_cross_attention(self.bundle.unet, self.capture_layers, store) if store else nullcontext()
        with capturing:
            for i in tqdm(range(s.steps), desc=variant, leave=False, disable=not s.show_progress):
                steps_left = s.steps - i - 1
                if variant == "dm":
                    t = schedule.timesteps[i]
                    t_map = t.expand(batch, height, width)
                else:
                    t_map = timesteps_from_state(state, self.num_train_timesteps)
                if record_timesteps:
                    timestep_maps.append(t_map.clone())

                if store is not None:
                    store.reset()
                    store.enabled = True
                noise_pred = self._guided_noise(latents, t_map, embeddings, synchronous=variant != "asyndm")
                if store is not None:
                    store.enabled = False
                    item_maps = store.item_maps()
                    if record_item_maps:
                        recorded_maps.append(item_maps)
                    if capture:
                        captured_sum = item_maps if captured_sum is None else captured_sum + item_maps
                    if dynamic:  # this call's attention decides the next transition (§6)
                        assignment = masks_from_attention(
                            item_maps, k_items, s.mask_threshold, self.mask_grid, (height, width)
                        )
                        k_map = k_map_from_assignment(assignment, k_items)

                if variant == "dm":
                    t_prev_map = (t - step_gap).expand(batch, height, width)
                else:
                    state = self._transition(state, steps_left, k_map)
                    t_prev_map = timesteps_from_state(state, self.num_train_timesteps)

                noise = None
                if s.eta > 0:
                    noise = randn_tensor(latents.shape, generator=generators, device=device, dtype=noise_pred.dtype)
                alpha_t = self._alpha(t_map)[:, None]
                alpha_prev = self._alpha(t_prev_map)[:, None]
                latents = ddim_step(
                    noise_pred.float(), latents.float(), alpha_t, alpha_prev, s.eta,
                    None if noise is None else noise.float(), self.prediction_type,
                ).to(latents.dtype)

        result = VariantResult(latents=latents, assignment=assignment, timestep_maps=timestep_maps,
                               item_maps=recorded_maps)
        if capture:
            mean_maps = captured_sum / s.steps
            result.assignment = masks_from_attention(mean_maps, k_items, s.mask_threshold, self.mask_grid, (height, width))
        return result

    def _guided_noise(self, latents, t_map, embeddings, synchronous: bool) -> torch.Tensor:
        model_input = torch.cat([latents] * 2) if self.guided else latents
        if synchronous:  # every pixel shares one timestep: the plain diffusers call
            timestep = t_map[0, 0, 0]
            out = self.bundle.unet(model_input, timestep, encoder_hidden_states=embeddings, return_dict=False)[0]
        else:
            pixel_map = torch.cat([t_map] * 2) if self.guided else t_map
            out = self.pixel_unet(model_input, pixel_map, embeddings, return_dict=False)[0]
        if not self.guided:
            return out
        uncond, cond = out.chunk(2)
        return uncond + self.settings.guidance_scale * (cond - uncond)

    # ------------------------------------------------------------------ outputs

    @torch.no_grad()
    def decode(self, latents: torch.Tensor):
        """Latents → PIL images, as the diffusers pipeline decodes them (pixel-space models: as they are)."""
        pipe = self.bundle.pipe
        if getattr(pipe, "vae", None) is None:
            images = latents
        else:
            images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(images, output_type="pil", do_denormalize=[True] * len(images))

