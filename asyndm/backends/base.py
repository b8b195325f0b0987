"""What a model family must provide so that one sampling loop serves them all (METHOD.md §9).

A backend owns everything that differs between families: prompt encoding, initial latents, the
model call with a per-pixel (per-token) timestep map, attention capture for masks, the update step
(DDIM today, flow-matching Euler next), decoding, and the map from a curve state to what the model
sees. The loop (asyndm/sampler.py) never asks which family it drives.

Curve states live in the scheduler's own timestep space (§9): a (B, h, w) float tensor per step,
one value per cell of the timestep grid (latent pixels for UNets, image tokens for transformers).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .. import sources
from ..compilation import compile_regions
from ..conditioning import PromptConditioning, TextConditioning
from ..guidance import ClassifierFreeGuidance, Prediction
from ..masks import masks_from_attention
from ..timeline import Timeline
from ..tokens import item_token_positions


@dataclass(frozen=True)
class ItemTokens:
    """Where each item's words sit in the prompt's token sequence (METHOD.md §6).

    ``positions[i]`` lists item i's token positions in the first text encoder's sequence (several
    when the tokenizer splits the word: their maps are averaged). Families whose attention also
    sees other encoders' tokens (SD3's T5) keep those in ``extra``.
    """

    positions: list[list[int]]
    extra: dict[str, list[list[int]]] = field(default_factory=dict)
    length: int | None = None  # tokens of the prompt in that sequence, start and end included (where known)

    @property
    def last_item(self) -> int:
        """The item with the largest token index: the whole initial dynamic mask (§6). First on ties."""
        return max(range(len(self.positions)), key=lambda i: max(self.positions[i]))


class ItemAttention(AbstractContextManager):
    """Capturing attention processors installed on the layers a mask reads (§6, §9).

    Inside the ``with`` block, a model call made with ``capture_rows`` adds the item maps of those
    batch rows (the conditional half under guidance); ``take()`` returns the last call's maps,
    averaged over heads and layers: (B, n_items, grid_h * grid_w). A family's subclass builds
    the three parts and hands them here: the ``grid`` of the maps, the ``store`` the processors write
    into (``reset``, ``rows``, ``item_maps``) and ``capture``, the context manager that installs them.
    """

    def __init__(self, grid: tuple[int, int], store, capture: AbstractContextManager):
        self.grid = grid
        self.store = store
        self._capture = capture

    def __enter__(self):
        self._capture.__enter__()
        return self

    def __exit__(self, *exc):
        return self._capture.__exit__(*exc)

    def arm(self, rows: slice) -> None:
        """The next model call records the maps of these batch rows."""
        self.store.reset()
        self.store.rows = rows

    def disarm(self) -> None:
        self.store.rows = None

    def take(self) -> torch.Tensor:
        return self.store.item_maps()


def repeated_blocks(model) -> list:
    """The modules of the classes diffusers names in ``model._repeated_blocks`` (the units its regional
    compilation compiles), in module order; empty where the class names none."""
    names = set(getattr(model, "_repeated_blocks", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]


def chosen_layers(layers: list, blocks, default: list[int]) -> list:
    """The layers of the blocks ``mask.blocks`` names (``default`` when unset), refused in one line when an
    index lies outside ``layers``."""
    chosen = list(blocks) if blocks is not None else default
    bad = [b for b in chosen if not (isinstance(b, int) and 0 <= b < len(layers))]
    if bad or not chosen:
        raise ValueError(f"mask.blocks={chosen}: choose block indices from 0 to {len(layers) - 1}")
    return [layers[b] for b in chosen]


def offloaded(pipe) -> bool:
    """Whether accelerate's offloading hooks drive the pipeline's modules (``enable_model_cpu_offload``,
    ``enable_sequential_cpu_offload``): they move each module to the device when it runs."""
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return any(hasattr(sub, "_hf_hook") for m in modules for sub in m.modules())


def place(pipe, device: torch.device, dtype: torch.dtype, model) -> None:
    """Put the pipeline on ``device`` in ``dtype`` (``model``: its denoiser, whose dtype tells whether a
    cast is needed: from_pretrained already applied the dtype). An offloaded pipeline stays as its hooks
    keep it; asking it for another dtype is refused, since a cast would move the offloaded weights."""
    if offloaded(pipe):
        if model.dtype != dtype:
            raise ValueError(f"torch_dtype={dtype}: this pipeline is offloaded in {model.dtype}; load it in "
                             f"{dtype} before enabling offloading, or pass torch_dtype={model.dtype}")
        return
    if model.device != device:
        pipe.to(device)
    if model.dtype != dtype:
        pipe.to(dtype=dtype)


class Backend(ABC):
    """One model family behind the surface the sampling loop uses."""

    family: ClassVar[str]
    #: the pipeline classes (model_index.json ``_class_name``) this backend loads
    pipeline_classes: ClassVar[tuple[str, ...]]
    #: capabilities the family offers that no method override shows (asyndm/capabilities.py): e.g.
    #: ``renoised_step``, a step that takes ``Prediction.renoise`` (a subclass adds to its bases').
    #: Overriding one of the optional methods below (``attention_probabilities`` ...) offers that
    #: capability by itself.
    capabilities: ClassVar[tuple[str, ...]] = ()
    #: capabilities offered by default that the family withholds (``classifier_free_guidance``)
    lacking: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pipe, device: torch.device, dtype: torch.dtype):
        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self.compiled: str | None = None  # the torch.compile mode once compiled (sample.compile), else None

    # --------------------------------------------------------------- sizes

    @property
    @abstractmethod
    def default_size(self) -> tuple[int, int]:
        """(height, width) in pixels that the family's pipeline samples by default."""

    @abstractmethod
    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Shape of one image's latents (without the batch) at that image size."""

    @abstractmethod
    def map_shape(self, latents: torch.Tensor) -> tuple[int, int]:
        """(h, w) of the timestep grid for these latents (one state per cell)."""

    # --------------------------------------------------------------- prompts

    @abstractmethod
    def encode(self, prompt: str, batch: int, negative_prompt: str, guided: bool) -> PromptConditioning:
        """The prompt's (and under guidance the negative prompt's) conditioning, as the pipeline encodes it."""

    @classmethod
    @abstractmethod
    def load_pipeline(cls, source: str, **kwargs):
        """The family's diffusers pipeline from a folder or hub id (``torch_dtype`` among the kwargs)."""

    @classmethod
    def item_resolver(cls, source: str):
        """A function (prompt, items, legacy_item_idx, mode) → ItemTokens that loads only tokenizers,
        so a prompt set is checked before any weights load. Default: the first CLIP tokenizer."""
        tokenizer = sources.load_tokenizer(source)
        return lambda prompt, items, legacy, mode: ItemTokens(item_token_positions(tokenizer, prompt, items, legacy, mode))

    @classmethod
    def size_step(cls, source: str) -> int | None:
        """Image height and width must be multiples of this many pixels for this model, from its configs
        alone (no weights), so a wrong ``sample.height`` is refused before loading; None: not known."""
        return None

    @classmethod
    def check_options(cls, source: str, options: dict) -> None:
        """Refuse, from the configs alone (no weights), family settings (``model.*``, as ``load_backend``
        passes them) that the model cannot take, in one line naming the key and the fix. Default: none."""

    @classmethod
    def mask_resolutions(cls, source: str, height: int | None, width: int | None) -> list[int] | None:
        """The grid sides a mask can be read at for that image size, from the configs alone (no
        weights), so ``mask.resolution`` is checked before loading; None where not known cheaply."""
        return None

    @classmethod
    def check_sizes(cls, source: str, height: int | None, width: int | None, mask_resolution: int | None) -> None:
        """Refuse, from the configs alone (no weights), an image size off the model's grid and a mask grid
        it has no attention layer on: one ValueError line naming the config key (``sample.height``,
        ``mask.resolution``; the Python API rewords it) and the fix."""
        step = cls.size_step(source)
        for side, value in (("height", height), ("width", width)):
            if value is not None and step and value % step:
                below, above = max(step, value // step * step), (value // step + 1) * step
                raise ValueError(f"sample.{side}={value}: this model needs a multiple of {step} pixels (its VAE, "
                                 f"and the grids its timesteps and masks live on); use {below} or {above}")
        if mask_resolution is not None:
            available = cls.mask_resolutions(source, height, width)
            if available is not None and mask_resolution not in available:
                raise ValueError(f"mask.resolution={mask_resolution}: this model has no attention layer on a "
                                 f"{mask_resolution}-sided grid at this image size; choose one of {available} "
                                 f"(or null: latent side / 4)")

    @abstractmethod
    def item_tokens(self, prompt: str, items: list[str], legacy_item_idx: list[int] | None, mode: str) -> ItemTokens:
        """Resolve item words to token positions with the family's own tokenizer(s)."""

    # --------------------------------------------------------------- sampling

    @abstractmethod
    def initial_latents(self, generators: list[torch.Generator], height: int, width: int) -> torch.Tensor:
        """The starting noise, drawn from one generator per image exactly as the pipeline draws it (§7)."""

    @abstractmethod
    def timeline(self, num_steps: int, semantics: str = "reference") -> Timeline:
        """Where the scheduler calls the model, and the curves' Y and o (METHOD.md §9). ``semantics``
        is ``curve.semantics``: under ``reference`` SD 1.x/2.x keep the release's Y and o (§3)."""

    @abstractmethod
    def model_timesteps(self, states: torch.Tensor) -> torch.Tensor:
        """What the model sees for curve states (SD: round(), §3; flow matching: the shifted time)."""

    def announce(self, states: torch.Tensor) -> None:
        """The states of a coming model call, named one call ahead by the sampling loop, so a backend can
        prepare what it needs from them without waiting on the device. Default: nothing to prepare."""

    @staticmethod
    def repeats(latents: torch.Tensor, states: torch.Tensor) -> int:
        """How many conditionings a call batches: a rule passes the step's (B, h, w) states once for
        latents of m·B rows ([negative; positive]), and each copy of the latents reads them."""
        if len(latents) % len(states):
            raise ValueError(f"{len(latents)} latent rows for states of {len(states)} images: pass the step's "
                             f"states once per image (they repeat for each conditioning of a batched pass)")
        return len(latents) // len(states)

    @abstractmethod
    def predict(
        self,
        latents: torch.Tensor,
        states: torch.Tensor,
        text: TextConditioning,
        uniform: bool,
        capture_rows: slice | None = None,
        attention: ItemAttention | None = None,
        sync_state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The model output for ``latents`` with per-cell timesteps from ``states`` (B, h, w); latents
        of m·B rows (a batched pass of m conditionings) read the B images' states m times over.

        ``uniform``: every cell of every image shares one state, so the plain model call is used.
        ``capture_rows``: the batch rows whose item maps ``attention`` keeps for this call.
        ``sync_state``: τᵢ, the scheduler's own timestep at this call (dm's, the linear curve's): what a
        stream with one timestep per sample sees (the MMDiT text stream, §9). UNets have none.
        """

    @abstractmethod
    def item_attention(self, tokens: ItemTokens, latents: torch.Tensor, resolution: int | None,
                       blocks: list[int] | None = None) -> ItemAttention:
        """A context manager that captures item maps on a ``resolution``-sided grid (None: the default).

        ``blocks``: the transformer blocks whose attention makes the masks (``mask.blocks``; None: the
        family's default). UNet families, whose layers are chosen by ``resolution``, refuse it.
        """

    def item_masks(self, item_maps: torch.Tensor, item_k: torch.Tensor, threshold: float, grid: tuple[int, int],
                   latent: tuple[int, int], time: str = "frame") -> torch.Tensor:
        """(B, n_items, cells) item maps → (B, *latent) item per cell, -1 background (§6). ``time``
        (``mask.time``): per frame or the union over frames, for families whose grid holds frames."""
        return masks_from_attention(item_maps, item_k, threshold, grid, latent)

    @abstractmethod
    def step(
        self,
        prediction: Prediction,
        latents: torch.Tensor,
        states: torch.Tensor,
        next_states: torch.Tensor,
        eta: float,
        generators: list[torch.Generator],
    ) -> torch.Tensor:
        """Move every cell from its state to its next state (element-wise update)."""

    @abstractmethod
    def decode(self, latents: torch.Tensor, output_type: str = "pil"):
        """Latents → images as the pipeline decodes them: PIL images, or with ``output_type`` ``np``
        (B, H, W, 3) or ``pt`` (B, 3, H, W) in [0, 1], as diffusers' image processor gives them."""

    # --------------------------------------------------------------- compiled path (asyndm/compilation.py)

    @classmethod
    def has_compiled_path(cls) -> bool:
        """Whether the family names compile regions (``sample.compile=true`` is refused before loading otherwise)."""
        return cls.compile_regions is not Backend.compile_regions

    def compile_regions(self) -> list:
        """The modules ``sample.compile=true`` compiles in place. A family without a compiled path raises."""
        raise NotImplementedError(f"the {self.family} backend has no compiled path: set sample.compile=false")

    def prepare_compile(self) -> None:
        """Install, once, what lets the per-call changes reach the regions without recompiling (the
        per-pixel / per-token switches). Default: nothing to install."""

    def compile(self, mode: str | None = None) -> None:
        """Compile the model call's regions in place, once per backend: later calls do nothing."""
        wanted = mode or "default"
        if self.compiled is not None:
            if self.compiled != wanted:
                raise ValueError(f"this model is already compiled with mode={self.compiled}; load it again to "
                                 f"compile with mode={wanted}")
            return
        regions = self.compile_regions()
        self.prepare_compile()
        compile_regions(regions, mode)
        self.compiled = wanted

    # --------------------------------------------------------------- optional capabilities (the baselines')
    # Each is a context manager that leaves the model as it found it. A family that lacks one
    # raises, naming it; only the guidance rules that need it (asyndm/baselines/) call it, and a
    # variant declares it in its ``needs`` so that the family is refused before loading
    # (asyndm/capabilities.py: a family offers the ones it overrides).

    def attention_probabilities(self, latents: torch.Tensor, sides: list[int], kinds=("attn1", "attn2"),
                                explicit: bool = False):
        """Record, in each model call inside the block, the head-averaged attention probabilities of the
        self- (``attn1``) and/or cross-attention (``attn2``) layers whose grid side is in ``sides``:
        yields an ``AttentionRecord`` (asyndm/attention_control.py). S-CFG and Attend-and-Excite.
        ``explicit``: every attention layer computes its output from explicit probabilities meanwhile
        (S-CFG's released arithmetic) instead of the fused kernel."""
        raise NotImplementedError(f"the {self.family} backend cannot record attention probabilities")

    def blurred_self_attention(self, latents: torch.Tensor, sigma: float, places=("mid",)):
        """Inside the block, the self-attention queries of the model's ``places`` are Gaussian-blurred
        with ``sigma`` (above 9999: replaced by their mean). Smoothed energy guidance."""
        raise NotImplementedError(f"the {self.family} backend cannot blur self-attention queries")

    def latent_gradients(self):
        """Inside the block, model calls build autograd graphs to their inputs (parameters frozen).
        Attend-and-Excite's latent update."""
        raise NotImplementedError(f"the {self.family} backend cannot differentiate through its model")

    def guidance_rule(self, guidance_scale: float, true_cfg_scale: float = 1.0):
        """The family's own guidance at the run's scale (the pipeline's default behaviour): classifier-
        free guidance here; guidance-distilled families embed the scale instead, and may add classifier-
        free guidance on top at ``true_cfg_scale`` (``sample.true_cfg_scale``; 1 = off)."""
        if true_cfg_scale != 1:
            raise ValueError(f"sample.true_cfg_scale={true_cfg_scale} applies to guidance-distilled models (FLUX.1-dev); "
                             f"this model's classifier-free guidance scale is sample.guidance_scale")
        return ClassifierFreeGuidance(guidance_scale)

    # --------------------------------------------------------------- helpers shared by the families

    def generators(self, seeds: list[int], device: str | None = None) -> list[torch.Generator]:
        """One generator per image, seeded ``seed + j`` on the sampling device (§7), or on ``device``
        (cpu: the same noise on any machine)."""
        where = torch.device(device) if device else self.device
        return [torch.Generator(device=where).manual_seed(int(s)) for s in seeds]
