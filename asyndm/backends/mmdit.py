"""What the MMDiT families (SD3, Flux) share: flow matching, per-token AdaLN, joint-attention masks (METHOD.md §9).

- Timeline: the scheduler's *unshifted* timesteps τ (a family method), with §9's Y and o; the model
  sees σ(s)·num_train_timesteps unrounded, σ the scheduler's static or resolution-dependent shift
  (``mu`` from the image's token count, as the pipelines compute it: asyndm/flow.py).
  σ never exceeds σ(τ₀) = 1: a state above τ₀ is pure noise.
- Update: the element-wise Euler step x' = x + (σ(s') - σ(s))·v, in the scheduler's arithmetic.
- Model call: with a uniform map the plain transformer call; otherwise every image-stream AdaLN is
  per token (asyndm/token_timesteps.py) and the text stream sees one timestep per sample:
  ``text_timestep`` = ``linear`` (the default, §9), τᵢ, the scheduler's own timestep at call i, which
  dm gives it; or the ``min`` / ``mean`` / ``max`` of the sample's token states.
- Masks: the image-query × item-token block of the joint attention of ``mask.blocks``
  (asyndm/joint_attention.py), on the token grid.

A family subclass says how its transformer is called (``_forward``), where its tokens and text
segments are, and which τ its pipeline uses.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import deque

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from .. import sources
from ..errors import PromptError
from ..generators import noise_generator
from ..flow import FlowShift, check_scheduler, euler_step, flow_timeline
from ..joint_attention import COMPILED_ITEM_COLUMNS, JointAttentionStore, capture_joint_attention
from ..token_timesteps import DistinctTimesteps, TokenTimesteps
from ..tokens import item_token_positions
from ..conditioning import TextConditioning
from ..guidance import Prediction
from ..settings import TEXT_TIMESTEPS
from ..timeline import Timeline
from .base import Backend, ItemAttention, ItemTokens, chosen_layers, place, repeated_blocks


class JointItemAttention(ItemAttention):
    """Capturing processors on the attention of the chosen blocks; item maps on the token grid.

    ``columns``: compiled blocks capture with weights padded to that many items (asyndm/joint_attention.py)."""

    def __init__(self, layers: list, weights: torch.Tensor, grid: tuple[int, int], query_keys, text_length: int,
                 recorded=None, columns: int | None = None):
        store = JointAttentionStore(weights, columns)
        store.text_length = text_length
        super().__init__(grid, store, capture_joint_attention(layers, store, query_keys, recorded))


class FlowTransformerBackend(Backend):
    """A flow-matching MMDiT pipeline (SD3, Flux) behind the Backend surface."""

    #: the family's query/key recomputation for captures (asyndm/joint_attention.py), a staticmethod
    query_keys: staticmethod

    def recorded_attention(self):
        """Where captures read the block's own queries and keys (asyndm/joint_attention.py); None: recompute."""
        return None

    def __init__(self, pipe, device: torch.device, dtype: torch.dtype, text_timestep: str = "linear"):
        check_scheduler(pipe.scheduler)
        if text_timestep not in TEXT_TIMESTEPS:
            raise ValueError(f"model.text_timestep={text_timestep}: choose one of {', '.join(TEXT_TIMESTEPS)}")
        place(pipe, device, dtype, pipe.transformer)  # an offloaded pipeline stays as its hooks keep it
        pipe.set_progress_bar_config(disable=True)
        super().__init__(pipe, device, dtype)
        self.text_timestep = text_timestep
        tau0 = float(self.unshifted_timesteps(2)[0])  # the scheduler's first timestep, the same for every N
        self.shift = FlowShift.from_scheduler(pipe.scheduler, self.shift_precision(), ceiling=tau0)
        self.token_timesteps = TokenTimesteps(pipe.transformer)
        self._announced: deque = deque(maxlen=2)  # (states, DistinctTimesteps): this call's and the next's
        self.unannounced_calls = 0  # per-token calls whose distinct timesteps had to be waited for

    # --------------------------------------------------------------- components and sizes

    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def vae_scale_factor(self) -> int:
        return self.pipe.vae_scale_factor

    @property
    @abstractmethod
    def patch(self) -> int:
        """Latent pixels per image token along each side (SD3: the patch size; Flux: 2, its packing)."""

    @property
    @abstractmethod
    def latent_channels(self) -> int:
        """Channels of the unpacked latents (SD3: the transformer's input channels; Flux: a quarter of them)."""

    @property
    def default_size(self) -> tuple[int, int]:
        """The pipeline's default, ``default_sample_size`` × the VAE factor (1024 px for SD3.5 and
        FLUX.1), whatever the checkpoint."""
        side = self.pipe.default_sample_size * self.vae_scale_factor
        return side, side

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Unpacked latents (C, h, w)."""
        self._check_size(height, width)
        factor = self.vae_scale_factor
        return self.latent_channels, height // factor, width // factor

    def map_shape(self, latents: torch.Tensor) -> tuple[int, int]:
        height, width = latents.shape[-2:]
        return height // self.patch, width // self.patch

    @classmethod
    def config_patch(cls, source: str) -> int:
        """Latent pixels per image token, from the configs alone (Flux: its fixed 2×2 packing)."""
        return cls.patch

    @classmethod
    def size_step(cls, source: str) -> int:
        """The VAE's factor times the latent pixels per token, from the configs."""
        from diffusers import AutoencoderKL

        vae_config = sources.from_pretrained(AutoencoderKL.load_config, source, subfolder="vae")
        return 2 ** (len(vae_config["block_out_channels"]) - 1) * cls.config_patch(source)

    def _check_size(self, height: int, width: int) -> None:
        step = self.vae_scale_factor * self.patch
        if height % step or width % step:
            raise ValueError(f"image size {height}x{width}: height and width must be multiples of {step} for this "
                             f"model (VAE factor {self.vae_scale_factor} × {self.patch} latent pixels per token); "
                             f"set sample.height / sample.width")

    def initial_latents(self, generators, height: int, width: int) -> torch.Tensor:
        """(B, C, h, w) drawn as the pipeline draws them (one generator per image, §7)."""
        shape = (len(generators), *self.latent_shape(height, width))
        return randn_tensor(shape, generator=noise_generator(generators), device=self.device, dtype=self.dtype)

    # --------------------------------------------------------------- timeline

    def shift_precision(self) -> torch.dtype:
        """The dtype the scheduler shifts its sigmas in, as the family's pipeline drives it (asyndm/flow.py)."""
        return torch.float64

    @abstractmethod
    def unshifted_timesteps(self, num_steps: int) -> np.ndarray:
        """τ₀ > … > τ_{N-1}: the scheduler's timesteps before its shift, as the family's pipeline makes them."""

    def timeline(self, num_steps: int, semantics: str = "reference") -> Timeline:
        return flow_timeline(self.unshifted_timesteps(num_steps), self.device)

    def sigmas(self, states: torch.Tensor) -> torch.Tensor:
        """σ per cell of a (B, h, w) state map (the dynamic shift's ``mu`` from its h·w tokens)."""
        return self.shift.sigmas(states, states.shape[-2] * states.shape[-1])

    def model_timesteps(self, states: torch.Tensor) -> torch.Tensor:
        return self.shift.model_timesteps(states, states.shape[-2] * states.shape[-1])

    # --------------------------------------------------------------- model call

    @abstractmethod
    def _forward(self, latents: torch.Tensor, timestep: torch.Tensor, text: TextConditioning) -> torch.Tensor:
        """The transformer's output for (B, C, h, w) latents and a timestep vector (the pipeline's own call)."""

    def _text_states(self, states: torch.Tensor, sync_state: torch.Tensor | None) -> torch.Tensor:
        """(B,) the state the text stream sees: τᵢ (``linear``), or the min / mean / max of the sample's
        token states."""
        if self.text_timestep == "linear":
            if sync_state is None:
                raise ValueError("the text stream's timestep is the scheduler's own at this call "
                                 "(model.text_timestep=linear): pass the call's sync_state")
            return torch.as_tensor(sync_state, device=states.device).expand(len(states))
        flat = states.flatten(1)
        if self.text_timestep == "min":
            return flat.amin(dim=1)
        return flat.amax(dim=1) if self.text_timestep == "max" else flat.mean(dim=1)

    def announce(self, states: torch.Tensor) -> None:
        """Find the coming call's distinct timesteps now; their counts reach the host while the calls
        queued before it run (asyndm/token_timesteps.py)."""
        self._announced.append((states, self._find_distinct(states)))

    def _find_distinct(self, states: torch.Tensor) -> DistinctTimesteps:
        return DistinctTimesteps(self.model_timesteps(states).flatten(1))

    def _distinct(self, states: torch.Tensor) -> DistinctTimesteps:
        """The announced map's distinct timesteps; for a map nobody announced, found now (and waited for)."""
        for announced, distinct in self._announced:
            if announced is states:
                return distinct
        self.unannounced_calls += 1
        return self._find_distinct(states)

    def predict(self, latents, states, text, uniform, capture_rows=None, attention=None, sync_state=None):
        tokens = states.shape[-2] * states.shape[-1]
        repeats = self.repeats(latents, states)
        if attention is not None and capture_rows is not None:
            attention.arm(capture_rows)
        try:
            if uniform:  # one timestep for every token: the plain diffusers call
                return self._forward(latents, self.model_timesteps(states)[:, 0, 0].repeat(repeats), text)
            text_timesteps = self.shift.model_timesteps(self._text_states(states, sync_state), tokens).repeat(repeats)
            extended, rows = self._distinct(states).rows(text_timesteps, repeats)
            with self.token_timesteps.active(rows):
                return self._forward(latents, extended, text)
        finally:
            if attention is not None:
                attention.disarm()

    def step(self, prediction: Prediction, latents, states, next_states, eta, generators):
        """The element-wise flow-matching Euler step (§9); deterministic, so ``eta`` and the generators are unused."""
        if prediction.renoise is not None:
            raise NotImplementedError("this guidance rule separates the re-noising output (CFG++-style); the "
                                      "flow-matching Euler step has a single velocity, so it does not apply here")
        return euler_step(prediction.output, latents, self.sigmas(states), self.sigmas(next_states))

    # --------------------------------------------------------------- compiled path (asyndm/compilation.py)

    def compile_regions(self) -> list:
        """The transformer's repeated blocks (diffusers' ``_repeated_blocks`` where the class names them,
        else its ``transformer_blocks`` and ``single_transformer_blocks``), for plain calls (dm, dm_concave,
        the baselines) and per-token ones (asyndm) alike."""
        transformer = self.transformer
        return repeated_blocks(transformer) or [*transformer.transformer_blocks,
                                                *getattr(transformer, "single_transformer_blocks", [])]

    def prepare_compile(self) -> None:
        self.token_timesteps.install()  # per-token wrappers for good, switched per call (asyndm/token_timesteps.py)

    # --------------------------------------------------------------- masks

    @property
    @abstractmethod
    def joint_attention_layers(self) -> list:
        """Attention layer of each block that may be captured, in ``mask.blocks`` numbering."""

    @abstractmethod
    def default_mask_blocks(self) -> list[int]:
        """The blocks whose joint attention makes the masks unless ``mask.blocks`` says otherwise."""

    @property
    @abstractmethod
    def text_segments(self) -> dict[str, tuple[int, int]]:
        """Name → (start, length) of each text encoder's tokens in the model's text sequence."""

    @property
    def text_length(self) -> int:
        return sum(length for _, length in self.text_segments.values())

    def item_weights(self, tokens: ItemTokens) -> torch.Tensor:
        """(L_text, n_items): item i's map averages its tokens in each segment, then the segments (§9)."""
        weights = torch.zeros(self.text_length, len(tokens.positions))
        per_segment = [(self.text_segments[name][0], positions) for name, positions in self._segment_positions(tokens)]
        for item in range(len(tokens.positions)):
            found = [(start, positions[item]) for start, positions in per_segment if positions[item]]
            for start, positions in found:
                weights[[start + p for p in positions], item] += 1.0 / (len(found) * len(positions))
        return weights

    #: the pipeline component that holds its T5 tokenizer (SD3: ``tokenizer_3``, Flux: ``tokenizer_2``)
    t5_tokenizer_name: str

    @property
    @abstractmethod
    def t5_tokenizer(self):
        """The pipeline's T5 tokenizer, None where T5 is not used."""

    @classmethod
    def item_resolver(cls, source: str):
        clip, t5 = sources.load_tokenizer(source), sources.load_t5_tokenizer(source, cls.t5_tokenizer_name)
        return lambda prompt, items, legacy, mode: resolve_items(clip, t5, prompt, items, legacy, mode,
                                                                 cls.max_sequence_length)

    def item_tokens(self, prompt: str, items: list[str], legacy_item_idx: list[int] | None, mode: str) -> ItemTokens:
        return resolve_items(self.pipe.tokenizer, self.t5_tokenizer, prompt, items, legacy_item_idx, mode,
                             self.max_sequence_length)

    @abstractmethod
    def _segment_positions(self, tokens: ItemTokens) -> list[tuple[str, list[list[int]]]]:
        """(segment name, positions per item) for every text segment the joint attention sees."""

    def item_attention(self, tokens: ItemTokens, latents: torch.Tensor, resolution: int | None,
                       blocks=None) -> JointItemAttention:
        grid = self.map_shape(latents)
        if resolution is not None and resolution != grid[0]:
            raise ValueError(f"mask.resolution={resolution}: masks of this model come from its {grid[0]}x{grid[1]} "
                             f"image-token grid; leave mask.resolution unset (null)")
        layers = chosen_layers(self.joint_attention_layers, blocks, self.default_mask_blocks())
        weights = self.item_weights(tokens).to(self.device)
        # compiled: traced in the blocks, queries and keys recomputed, one weight shape for all prompts
        compiled = self.compiled is not None
        return JointItemAttention(layers, weights, grid, type(self).query_keys, self.text_length,
                                  None if compiled else self.recorded_attention(),
                                  COMPILED_ITEM_COLUMNS if compiled else None)

    # --------------------------------------------------------------- decoding

    def decode(self, latents: torch.Tensor, output_type: str = "pil"):
        """As the pipelines decode: latents / scaling + shift, the VAE, postprocess."""
        vae = self.pipe.vae
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(images, output_type=output_type)


# ------------------------------------------------------------------ item words in T5


def resolve_items(clip, t5, prompt, items, legacy, mode, max_length) -> ItemTokens:
    """CLIP positions (``positions``: the initial mask's item order), and the T5 ones the joint
    attention sees in ``extra['t5']`` where T5 is used."""
    positions = item_token_positions(clip, prompt, items, legacy, mode)
    if t5 is None:
        return ItemTokens(positions)
    return ItemTokens(positions, {"t5": sentencepiece_positions(t5, prompt, items, max_length, clip, positions, mode)})


def sentencepiece_positions(tokenizer, prompt: str, items: list[str], max_length: int, clip_tokenizer=None,
                            clip_positions: list[list[int]] | None = None, mode: str = "word") -> list[list[int]]:
    """Each item's token positions in a T5 (SentencePiece) encoding of ``prompt`` (no start token).

    ``word`` mode finds the item word's tokens; ``legacy`` mode takes the characters of the CLIP tokens
    the legacy indices name (``clip_positions``) and returns the T5 tokens that overlap them.
    """
    encoded = tokenizer(prompt, truncation=True, max_length=max_length, return_offsets_mapping=True)
    ids, offsets = encoded.input_ids, encoded.offset_mapping
    if mode == "legacy":
        clip = clip_tokenizer(prompt, truncation=True, max_length=clip_tokenizer.model_max_length,
                              return_offsets_mapping=True).offset_mapping
        result = []
        for item, positions in zip(items, clip_positions):
            spans = [clip[p] for p in positions]
            found = [i for i, (a, b) in enumerate(offsets) if b > a and any(a < e and s < b for s, e in spans)]
            if not found:
                raise PromptError(f"item '{item}' of prompt '{prompt}': its legacy token has no T5 token")
            result.append(found)
        return result
    positions = []
    for item in items:
        word = tokenizer(item, add_special_tokens=False).input_ids
        start = next((i for i in range(len(ids) - len(word) + 1) if ids[i : i + len(word)] == word), -1)
        if not word or start < 0:
            raise PromptError(f"item '{item}' is not a word of prompt '{prompt}' as the T5 tokenizer splits it "
                              f"(or lies past its {max_length}-token limit)")
        positions.append(list(range(start, start + len(word))))
    return positions
