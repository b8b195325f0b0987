"""Wan 2.1 / 2.2 text-to-video and, with one frame, text-to-image: ``WanPipeline`` folders (METHOD.md §9).

- **Timesteps per token, natively.** ``WanTransformer3DModel`` accepts a timestep per token, shape
  (batch, tokens): the path Wan 2.2 TI2V uses (``expand_timesteps``), where each token's AdaLN
  shift, scale and gate come from its own timestep. asyndm hands the model the per-token map as that
  timestep and changes nothing in the model. The text enters by cross-attention only (no text stream
  with a timestep of its own), so ``sync_state`` is unused.
- **The grid.** A token is a 1×2×2 patch (frames × rows × columns) of the (C, F, H, W) latents.
  The loop's 2-D state map is the frames' token grids stacked top to bottom, (F·h, w), which is
  exactly the transformer's token order (frame-major, then rows, then columns).
- **Flow-matching Euler, not UniPC.** Wan's folders name ``UniPCMultistepScheduler`` (flow sigmas,
  static ``flow_shift``). asyndm samples with ``FlowMatchEulerDiscreteScheduler`` at the same shift,
  whose update is element-wise (each token moves by its own σ' - σ); ``dm`` equals ``WanPipeline``
  with that scheduler, not with UniPC. Curves live in the scheduler's unshifted time (as SD3's).
- **Masks** come from the item words' cross-attention maps (asyndm/cross_attention_maps.py), per
  frame or as the union over frames (``mask.time``).
- **Guidance** as the pipeline: the conditional pass, then the negative one, combined as
  neg + s·(cond - neg) (two calls, not one batched call: the pipeline's arithmetic bit for bit).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

from .. import sources
from ..conditioning import PromptConditioning, TextConditioning
from ..cross_attention_maps import capture_cross_attention
from ..errors import ModelError, PromptError
from ..flow import FlowShift, check_scheduler, flow_timeline, scheduler_timesteps
from ..guidance import Prediction
from ..joint_attention import COMPILED_ITEM_COLUMNS, JointAttentionStore
from ..masks import frame_assignment
from ..settings import MASK_TIMES
from ..timeline import Timeline
from .base import Backend, ItemAttention, ItemTokens, chosen_layers, repeated_blocks
from .mmdit import sentencepiece_positions
from .sd3 import middle_blocks

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class SeparateGuidance:
    """Classifier-free guidance as ``WanPipeline`` runs it: the prompt's pass, then the negative prompt's,
    out = neg + scale·(cond - neg); ``scale`` ≤ 1 runs the prompt's pass alone. Masks: the prompt's pass."""

    scale: float

    @property
    def guided(self) -> bool:
        return self.scale > 1

    def __call__(self, model, latents, states, cond: PromptConditioning, context=None) -> Prediction:
        positive = model(latents, states, cond.positive, capture_rows=slice(0, len(latents)))
        if not self.guided:
            return Prediction(positive)
        negative = model(latents, states, cond.negative)
        return Prediction(negative + self.scale * (positive - negative))


def euler_scheduler(scheduler):
    """The flow-matching Euler scheduler of a Wan folder's scheduler: itself, or, for Wan's UniPC on flow
    sigmas, ``FlowMatchEulerDiscreteScheduler`` with its ``flow_shift`` (docs/video.md)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return scheduler
    config = scheduler.config
    if not config.get("use_flow_sigmas") or config.get("flow_shift") is None:
        raise NotImplementedError(f"scheduler {type(scheduler).__name__} without flow sigmas: asyndm samples Wan "
                                  f"with flow-matching Euler at the scheduler's flow_shift, which this one lacks")
    if config.get("use_dynamic_shifting"):
        raise NotImplementedError("a Wan scheduler with a dynamic shift: asyndm supports Wan's static flow_shift")
    log.info("Wan: sampling with flow-matching Euler at flow_shift=%s in place of %s (Wan's default)",
             config.flow_shift, type(scheduler).__name__)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.num_train_timesteps, shift=config.flow_shift)


def _call_default(pipeline_class, name: str):
    """A default of the pipeline's ``__call__`` (height, width, num_frames): the model's own."""
    return inspect.signature(pipeline_class.__call__).parameters[name].default


class WanBackend(Backend):
    """Wan 2.1 T2V (1.3B, 14B), Wan 2.2 TI2V-5B as text-to-video, and any single-transformer ``WanPipeline`` folder."""

    family = "wan"
    pipeline_classes = ("WanPipeline",)
    max_sequence_length = 512  # WanPipeline's default UMT5 length

    def __init__(self, pipe, device: torch.device, dtype: torch.dtype, num_frames: int | None = None,
                 default_size: tuple[int, int] | None = None):
        if pipe.transformer is None or pipe.transformer_2 is not None or pipe.config.boundary_ratio is not None:
            raise NotImplementedError("a two-expert Wan 2.2 folder (transformer_2, boundary_ratio): asyndm drives "
                                      "single-transformer Wan folders (Wan 2.1 T2V, Wan 2.2 TI2V-5B)")
        pipe.scheduler = euler_scheduler(pipe.scheduler)
        check_scheduler(pipe.scheduler)
        frames = int(num_frames if num_frames is not None else _call_default(type(pipe), "num_frames"))
        check_frames(frames, pipe.vae_scale_factor_temporal)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        super().__init__(pipe, device, dtype)
        self.num_frames = frames
        self._default_size = tuple(int(side) for side in default_size) if default_size else None
        tau0 = float(scheduler_timesteps(pipe.scheduler, 2)[0])
        self.shift = FlowShift.from_scheduler(pipe.scheduler, torch.float64, ceiling=tau0)

    @classmethod
    def check_options(cls, source: str, options: dict) -> None:
        """``model.num_frames`` against the VAE's temporal factor, from its config, before the weights load."""
        if options.get("num_frames") is not None:
            from diffusers import AutoencoderKLWan

            vae = sources.from_pretrained(AutoencoderKLWan.load_config, source, subfolder="vae")
            check_frames(int(options["num_frames"]), int(vae.get("scale_factor_temporal") or 4))

    @classmethod
    def load_pipeline(cls, source: str, **kwargs):
        from diffusers import WanPipeline

        return WanPipeline.from_pretrained(source, **kwargs)

    # --------------------------------------------------------------- sizes

    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def patch(self) -> tuple[int, int, int]:
        return tuple(int(p) for p in self.transformer.config.patch_size)

    @property
    def default_size(self) -> tuple[int, int]:
        """The model config's ``default_size`` (a preset's own resolution), else WanPipeline's defaults (480×832)."""
        if self._default_size:
            return self._default_size
        return _call_default(type(self.pipe), "height"), _call_default(type(self.pipe), "width")

    @property
    def latent_frames(self) -> int:
        return (self.num_frames - 1) // self.pipe.vae_scale_factor_temporal + 1

    @property
    def token_frames(self) -> int:
        return self.latent_frames // self.patch[0]

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """(C, F, h, w) as ``WanPipeline.prepare_latents`` makes them."""
        step = self.pipe.vae_scale_factor_spatial * max(self.patch[1:])
        if height % step or width % step:
            raise ValueError(f"image size {height}x{width}: height and width must be multiples of {step} for this "
                             f"model (VAE factor × token patch); set sample.height / sample.width")
        factor = self.pipe.vae_scale_factor_spatial
        return int(self.transformer.config.in_channels), self.latent_frames, height // factor, width // factor

    def map_shape(self, latents: torch.Tensor) -> tuple[int, int]:
        """The frames' token grids stacked top to bottom: (F/p_t · h/p_h, w/p_w)."""
        p_t, p_h, p_w = self.patch
        frames, height, width = latents.shape[-3:]
        return frames // p_t * (height // p_h), width // p_w

    @classmethod
    def size_step(cls, source: str) -> int:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel

        vae = sources.from_pretrained(AutoencoderKLWan.load_config, source, subfolder="vae")
        transformer = sources.from_pretrained(WanTransformer3DModel.load_config, source, subfolder="transformer")
        return int(vae.get("scale_factor_spatial") or 8) * max(int(p) for p in transformer["patch_size"][1:])

    # --------------------------------------------------------------- prompts

    def encode(self, prompt: str, batch: int, negative_prompt: str, guided: bool) -> PromptConditioning:
        """As ``WanPipeline.encode_prompt``: UMT5 states (B, 512, D), padding zeroed, in the transformer's dtype."""
        positive, negative = self.pipe.encode_prompt(
            prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=guided,
            num_videos_per_prompt=batch, max_sequence_length=self.max_sequence_length, device=self.device)
        wrap = lambda states: TextConditioning({"encoder_hidden_states": states.to(self.transformer.dtype)})  # noqa: E731
        return PromptConditioning(wrap(positive), wrap(negative) if guided else None)

    @classmethod
    def item_resolver(cls, source: str):
        from transformers import AutoTokenizer

        tokenizer = sources.from_pretrained(AutoTokenizer.from_pretrained, source, subfolder="tokenizer")
        if len(tokenizer) < 1000:  # transformers 5 may hand back a stub offline instead of raising
            raise ModelError(f"model.path={source}: its UMT5 tokenizer loaded with only {len(tokenizer)} tokens; its "
                             f"files are missing (download the folder where there is network, pass model.path=<dir>)")
        return lambda prompt, items, legacy, mode: resolve_items(tokenizer, prompt, items, mode, cls.max_sequence_length)

    def item_tokens(self, prompt: str, items: list[str], legacy_item_idx, mode: str) -> ItemTokens:
        return resolve_items(self.pipe.tokenizer, prompt, items, mode, self.max_sequence_length)

    def guidance_rule(self, guidance_scale: float, true_cfg_scale: float = 1.0) -> SeparateGuidance:
        if true_cfg_scale != 1:
            raise ValueError(f"sample.true_cfg_scale={true_cfg_scale} applies to guidance-distilled models (FLUX.1-dev); "
                             f"Wan's classifier-free guidance scale is sample.guidance_scale")
        return SeparateGuidance(guidance_scale)

    # --------------------------------------------------------------- sampling

    def initial_latents(self, generators, height: int, width: int) -> torch.Tensor:
        """(B, C, F, h, w) in float32 (the pipeline draws them so, whatever the model's dtype), one generator per video."""
        shape = (len(generators), *self.latent_shape(height, width))
        return randn_tensor(shape, generator=generators, device=self.device, dtype=torch.float32)

    def timeline(self, num_steps: int, semantics: str = "reference") -> Timeline:
        return flow_timeline(scheduler_timesteps(self.pipe.scheduler, num_steps), self.device)

    def sigmas(self, states: torch.Tensor) -> torch.Tensor:
        return self.shift.sigmas(states, states.shape[-2] * states.shape[-1])

    def model_timesteps(self, states: torch.Tensor) -> torch.Tensor:
        return self.shift.model_timesteps(states, states.shape[-2] * states.shape[-1])

    def predict(self, latents, states, text, uniform, capture_rows=None, attention=None, sync_state=None):
        repeats = self.repeats(latents, states)
        timesteps = self.model_timesteps(states)
        if uniform and not self.pipe.config.expand_timesteps:
            timestep = timesteps[:, 0, 0].repeat(repeats)  # the plain call: one timestep per sample
        else:
            timestep = timesteps.flatten(1).repeat(repeats, 1)  # (rows, tokens): the model's own per-token input
        if attention is not None and capture_rows is not None:
            attention.arm(capture_rows)
        try:
            return self.transformer(hidden_states=latents.to(self.transformer.dtype), timestep=timestep,
                                    encoder_hidden_states=text.tensors["encoder_hidden_states"], return_dict=False)[0]
        finally:
            if attention is not None:
                attention.disarm()

    def latent_map(self, values: torch.Tensor) -> torch.Tensor:
        """(B, F·h, w) per-token values → (B, 1, F, H, W) on the latent grid (each token covers its patch)."""
        p_t, p_h, p_w = self.patch
        batch, rows, width = values.shape
        frames = self.token_frames
        grid = values.reshape(batch, frames, rows // frames, width)
        grid = grid.repeat_interleave(p_t, dim=1).repeat_interleave(p_h, dim=2).repeat_interleave(p_w, dim=3)
        return grid[:, None]

    def step(self, prediction: Prediction, latents, states, next_states, eta, generators):
        """x' = x + (σ(s') - σ(s))·v per token in ``FlowMatchEulerDiscreteScheduler.step``'s arithmetic
        (asyndm/flow.py ``euler_step``: the float32 dt cast to v's dtype, the sum in float32, cast back)."""
        if prediction.renoise is not None:
            raise NotImplementedError("this guidance rule separates the re-noising output (CFG++-style); the "
                                      "flow-matching Euler step has a single velocity, so it does not apply here")
        output = prediction.output
        delta = self.latent_map(self.sigmas(next_states) - self.sigmas(states))
        return (latents.float() + delta.to(output.dtype) * output).to(output.dtype)

    # --------------------------------------------------------------- compiled path (asyndm/compilation.py)

    def compile_regions(self) -> list:
        """The transformer's blocks (diffusers' ``_repeated_blocks``). Per-token timesteps are the model's
        own input, embedded before the blocks: a plain call and a per-token one give one graph each."""
        return repeated_blocks(self.transformer) or list(self.transformer.blocks)

    # --------------------------------------------------------------- masks

    @property
    def cross_attention_layers(self) -> list:
        """Each block's text cross-attention, in ``mask.blocks`` numbering."""
        return [block.attn2 for block in self.transformer.blocks]

    def default_mask_blocks(self) -> list[int]:
        return middle_blocks(len(self.transformer.blocks))

    def item_weights(self, tokens: ItemTokens) -> torch.Tensor:
        """(512, n_items): item i's map averages its UMT5 tokens."""
        weights = torch.zeros(self.max_sequence_length, len(tokens.positions))
        for item, positions in enumerate(tokens.positions):
            weights[positions, item] = 1.0 / len(positions)
        return weights

    def item_attention(self, tokens: ItemTokens, latents: torch.Tensor, resolution: int | None,
                       blocks=None) -> ItemAttention:
        if resolution is not None:
            raise ValueError(f"mask.resolution={resolution}: Wan's masks come from its token grid (each frame "
                             f"{latents.shape[-2] // self.patch[1]}x{latents.shape[-1] // self.patch[2]}); "
                             f"leave mask.resolution unset (null)")
        layers = chosen_layers(self.cross_attention_layers, blocks, self.default_mask_blocks())
        # compiled blocks trace the capture: weights padded to one shape for every prompt (asyndm/compilation.py)
        columns = COMPILED_ITEM_COLUMNS if self.compiled else None
        store = JointAttentionStore(self.item_weights(tokens).to(self.device), columns)
        return ItemAttention(self.map_shape(latents), store, capture_cross_attention(layers, store))

    def item_masks(self, item_maps, item_k, threshold, grid, latent, time="frame"):
        """§6 per frame (``mask.time=frame``) or on the union of an item's frames (``union``)."""
        if time not in MASK_TIMES:
            raise ValueError(f"mask.time={time}: choose {' or '.join(MASK_TIMES)}")
        if tuple(grid) != tuple(latent):
            raise ValueError(f"mask grid {grid} is not the token grid {latent}")
        maps = item_maps.view(item_maps.shape[0], item_maps.shape[1], *grid)
        return frame_assignment(maps, item_k, threshold, self.token_frames, union=time == "union")

    # --------------------------------------------------------------- decoding

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list:
        """As the pipeline decodes: de-normalised by the VAE's per-channel mean and std, then the 3-D VAE.
        One list of PIL frames per video (one frame with ``model.num_frames=1``)."""
        vae = self.pipe.vae
        latents = latents.to(vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
        video = vae.decode(latents / inverse_std + mean, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type="pil")


def check_frames(frames: int, step: int) -> None:
    """Wan's causal VAE takes 1 + step·n frames (step 4): the first frame alone, then step per latent frame."""
    if frames < 1 or (frames - 1) % step:
        below = max(1, (frames - 1) // step * step + 1)
        raise ValueError(f"model.num_frames={frames}: Wan's VAE takes 1 + {step}·n frames; use {below} or "
                         f"{below + step} (1: an image)")


def resolve_items(tokenizer, prompt: str, items: list[str], mode: str, max_length: int) -> ItemTokens:
    """Each item's UMT5 positions in the prompt as the pipeline cleans it (html, whitespace)."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    if mode == "legacy":
        raise PromptError("prompts.item_tokens=legacy indexes CLIP tokens, which Wan has none of: use "
                          "prompts.item_tokens=word")
    cleaned = prompt_clean(prompt)
    positions = sentencepiece_positions(tokenizer, cleaned, items, max_length)
    return ItemTokens(positions, length=len(tokenizer(cleaned, truncation=True, max_length=max_length).input_ids))
