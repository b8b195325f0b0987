"""The Python API, in diffusers' style; the ``asyndm`` CLI is built on it (``generate``).

    from asyndm import AsyncPipeline
    pipe = AsyncPipeline.from_pretrained("toy")               # or .from_pipe(a loaded diffusers pipeline)
    out = pipe("a red circle", items=["circle"], k=0.5, generator=torch.Generator().manual_seed(0))
    out.images                                                 # asyndm's images; also .latents and .masks
    paired = pipe("a red circle", items=["circle"], k=0.5, variants=["dm", "asyndm"])
    paired["asyndm"].images                                    # each variant from the same noise

Image j uses the generator seeded ``seed + j`` (METHOD.md §7), exactly as the CLI does, so a list of
generators seeded so gives the CLI's images. Unset sampling settings are the model's own, as the CLI
takes them from its preset (asyndm/presets.py); every setting is checked by the CLI's own validation
before anything is sampled (asyndm/call_checks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from diffusers.utils import BaseOutput

from .backends.base import Backend, ItemTokens
from .call_checks import check_call, python_error
from .compilation import compile_problem
from .capabilities import check_variants
from .callbacks import StepInfo
from .errors import AsyndmError, ConfigError, ModelError, PromptError
from .generators import GeneratorStates
from .models import DTYPES, load_backend, pipeline_dtype, resolve_device, resolve_dtype
from .oracle import OracleFunction, load_oracle
from .oracle import oracle_masks as read_oracle_masks
from .presets import sampling_defaults
from .prompts import PromptSpec, check_spec
from .sampler import AsyncSampler, Callback, SamplingSettings
from .sources import backend_for_pipeline, built_in_names, built_in_source, check_source
from .variants import get_variant, oracle_variants, unknown_variant

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# what callback_on_step_end can ask for in callback_kwargs (callback_on_step_end_tensor_inputs)
STEP_TENSORS = {
    "latents": lambda info: info.latents,  # (B, C, h, w) after the step
    "timesteps": lambda info: info.timesteps(),  # (B, h, w) what the model saw, per pixel (token)
    "states": lambda info: info.states,  # (B, h, w) curve states of the step's model call
    "next_states": lambda info: info.next_states,
    "masks": lambda info: info.assignment,  # (B, h, w) item per cell, -1 background (asyndm); None else
}
SEED = 1234  # conf/config.yaml's seed: image j gets seed + j


class _ModelDefault:
    """The model's own value of a setting (its preset's ``sampling``), as the CLI takes it."""

    def __repr__(self) -> str:
        return "<the model's own>"


MODEL_DEFAULT: Any = _ModelDefault()


@dataclass
class VariantOutput(BaseOutput):
    """One variant's images, as a diffusers pipeline's output: ``.images`` (PIL images; with
    ``output_type`` ``np`` an array (B, H, W, 3), ``pt`` a tensor (B, 3, H, W), ``latent`` the latents),
    and the latents (B, C, h, w) and asyndm's masks (B, h, w; item per cell, -1 background; None for
    variants without masks). ``seeds``: the images' seeds (None where generators were given)."""

    images: Any
    latents: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    seeds: list[int] | None = None


class StepEndCallback:
    """diffusers' ``callback_on_step_end(pipe, step, timestep, callback_kwargs)`` on asyndm's loop:
    called after every step of every variant with the tensors named in ``tensor_inputs``; returned
    ``latents`` replace the latents, as in diffusers. ``timestep`` is the scheduler's own at that step
    (dm's; asyndm's background pixels)."""

    def __init__(self, pipe: "AsyncPipeline", function: Callable, tensor_inputs: Sequence[str], steps: int,
                 semantics: str):
        unknown = [name for name in tensor_inputs if name not in STEP_TENSORS]
        if unknown:
            raise AsyndmError(f"callback_on_step_end_tensor_inputs={list(tensor_inputs)}: '{unknown[0]}' is not "
                              f"one of {list(STEP_TENSORS)}")
        self.pipe, self.function, self.tensor_inputs = pipe, function, list(tensor_inputs)
        self.sync_states = pipe.backend.timeline(steps, semantics).sync_states

    def __call__(self, info: StepInfo) -> torch.Tensor | None:
        sync = torch.full_like(info.states[:1], float(self.sync_states[info.step]))
        timestep = info.backend.model_timesteps(sync).reshape(-1)[0]
        kwargs = {name: STEP_TENSORS[name](info) for name in self.tensor_inputs}
        self.pipe.current_variant = info.variant
        returned = self.function(self.pipe, info.step, timestep, kwargs)
        return (returned or {}).get("latents")


class AsyncPipeline:
    """Paired sampling of dm, dm_concave, asyndm and the baselines (any registered variant) with one model."""

    def __init__(self, backend: Backend, source: str | None = None, backend_options: dict | None = None,
                 model: str | None = None):
        """``source``: the folder or hub id the backend was loaded from; ``model``: the name it was asked
        for (a built-in name, a hub id), whose preset gives the defaults (None: ``source``)."""
        self.backend = backend
        self.source = source
        self.backend_options = dict(backend_options or {})
        self.defaults = sampling_defaults(model or source)  # steps, guidance_scale, mask_resolution: the model's own
        self.progress_bar_config: dict = {"disable": True}
        self.current_variant: str | None = None  # the variant whose step a callback_on_step_end sees

    # ------------------------------------------------------------------ making one

    @classmethod
    def from_pretrained(
        cls, source: str, torch_dtype: torch.dtype | str = torch.float32, device: str | torch.device = "auto",
        **options,
    ) -> "AsyncPipeline":
        """A diffusers folder, a hub id, or a built-in name (``"tiny"``, ``"toy"``, ``"tiny_sd3"``, ``"tiny_flux"``,
        ``"tiny_wan"``).

        ``options``: ``skip_components`` (e.g. SD3's ``["text_encoder_3", "tokenizer_3"]``) and family
        settings (``text_timestep`` for SD3 and Flux; ``num_frames`` and ``default_size`` for Wan), as the
        ``model.*`` config keys. A Wan model's ``images`` are videos: one list of PIL frames each.
        """
        try:
            resolved = _built_in(source) or check_source(str(source))
            device = device if isinstance(device, torch.device) else resolve_device(str(device))
            backend = load_backend(resolved, device, resolve_dtype(torch_dtype), **options)
        except AsyndmError as err:
            raise python_error(err) from None
        options.pop("skip_components", None)
        return cls(backend, resolved, options, model=str(source))

    @classmethod
    def from_pipe(cls, pipeline, device: str | torch.device | None = None, torch_dtype: torch.dtype | None = None,
                  **options) -> "AsyncPipeline":
        """Wrap a diffusers pipeline already loaded (SD 1.x/2.x, SDXL, SD3/3.5, FLUX.1): its modules as
        they are (LoRA weights, swapped components, offloading hooks), shared, not copied.

        asyndm samples from a new pipeline object over the same modules (diffusers' ``from_pipe``) with
        its own scheduler (DDIM for SD/SDXL, a copy of the flow scheduler for SD3/Flux), so ``pipeline``
        keeps its scheduler and works as before. Without ``device``/``torch_dtype`` the modules stay
        where and as they are; with them the shared modules move, for ``pipeline`` too.
        ``options``: family settings (``text_timestep``). Defaults of a call: ``model=local``'s (50 steps,
        guidance 5.0) unless the pipeline was loaded from a hub id a preset names.
        """
        name = type(pipeline).__name__
        try:
            backend_cls = backend_for_pipeline(name)
        except ModelError as err:
            raise ModelError(f"from_pipe({name}): {str(err).split(': ', 1)[-1]}") from None
        model = getattr(pipeline, "unet", None)
        model = getattr(pipeline, "transformer", None) if model is None else model  # the denoiser: its dtype
        device = torch.device(device) if device is not None else pipeline._execution_device
        dtype = resolve_dtype(torch_dtype) if torch_dtype is not None else model.dtype
        scheduler = pipeline.scheduler
        own = type(pipeline).from_pipe(pipeline, scheduler=type(scheduler).from_config(scheduler.config),
                                       **pipeline_dtype(model.dtype))  # from_pipe casts to float32 unless told
        try:
            backend = backend_cls(own, device, dtype, **options)
        except AsyndmError as err:
            raise python_error(err) from None
        return cls(backend, pipeline.config.get("_name_or_path"), options)

    # ------------------------------------------------------------------ diffusers' pipeline surface

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backend.dtype

    @property
    def pipe(self):
        """The diffusers pipeline asyndm samples with (its modules are the ones given or loaded)."""
        return self.backend.pipe

    def to(self, *args, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "AsyncPipeline":
        """Move to a device and/or dtype, as diffusers' ``pipe.to("cuda")``, ``pipe.to(torch.float16)``."""
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            else:
                device = arg
        device = self.device if device is None else (device if isinstance(device, torch.device)
                                                    else resolve_device(str(device)))
        dtype = self.dtype if dtype is None else dtype
        if (device, dtype) != (self.device, self.dtype):
            self.backend = type(self.backend)(self.backend.pipe, device, dtype, **self.backend_options)
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        """As diffusers': ``disable=False`` shows a progress bar per variant (off by default)."""
        self.progress_bar_config.update(kwargs)

    # ------------------------------------------------------------------ the CLI's entry

    def item_tokens(self, spec: PromptSpec, mode: str = "word") -> ItemTokens:
        if not spec.items:
            return ItemTokens([])
        return self.backend.item_tokens(spec.prompt, spec.items, spec.legacy_item_idx, mode)

    def generate(
        self,
        spec: PromptSpec,
        seeds: Sequence[int] | GeneratorStates,
        settings: SamplingSettings,
        variants: Sequence[str] = ("dm", "dm_concave", "asyndm"),
        item_tokens: str = "word",
        masks: torch.Tensor | None = None,
        callbacks: Sequence[Callback] = (),
        output_type: str = "pil",
        oracle_masks: OracleFunction | str | None = None,
    ) -> dict[str, VariantOutput]:
        """Paired samples of ``variants`` for one prompt spec and explicit seeds (what the CLI calls), or
        the caller's generators (``GeneratorStates``).

        ``oracle_masks``: for ``asyndm_oracle``, the function (or ``"module:function"``) that reads
        the item cells off a finished dm image (asyndm/oracle.py).
        """
        if output_type not in OUTPUT_TYPES:
            raise AsyndmError(f"output_type={output_type!r}: choose one of {', '.join(map(repr, OUTPUT_TYPES))}")
        self._check_capabilities(variants)
        sampler = AsyncSampler(self.backend, settings)
        if not isinstance(seeds, GeneratorStates):
            seeds = [int(s) for s in seeds]
        tokens = self.item_tokens(spec, item_tokens)
        decoded: dict[tuple, Any] = {}  # the oracle's dm images are dm's output too: decode them once

        def decode(latents: torch.Tensor, kind: str = "pil"):
            if (id(latents), kind) not in decoded:
                decoded[id(latents), kind] = sampler.decode(latents) if kind == "pil" else sampler.decode(latents, kind)
            return decoded[id(latents), kind]

        oracle = None
        if oracle_masks is not None:
            function = load_oracle(oracle_masks)
            oracle = lambda latents: read_oracle_masks(  # noqa: E731
                function, decode(latents), spec, self.backend.map_shape(latents))
        results = sampler.sample(spec.prompt, tokens, list(spec.k), seeds, list(variants), masks, callbacks, oracle)
        return {
            name: VariantOutput(
                images=result.latents if output_type == "latent" else decode(result.latents, output_type),
                latents=result.latents,
                masks=result.assignment,
                seeds=None if isinstance(seeds, GeneratorStates) else seeds,
            )
            for name, result in results.items()
        }

    def __call__(
        self,
        prompt: str | Sequence[str],
        items: Sequence[str] | Sequence[Sequence[str]] | None = None,
        k: float | Sequence[float] | Sequence[Sequence[float]] | None = None,
        *,
        variants: Sequence[str] | None = None,
        variant: str | None = None,
        num_images_per_prompt: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        eta: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        num_images: int | None = None,
        seed: int | None = None,
        curve: str = "bin",
        mask: str | torch.Tensor = "dynamic",
        mask_threshold: float = 1.0,
        mask_resolution: int | None = MODEL_DEFAULT,
        mask_blocks: Sequence[int] | None = None,
        mask_time: str = "frame",
        true_cfg_scale: float = 1.0,
        item_tokens: str = "word",
        legacy_item_idx: Sequence[int] | None = None,
        curve_semantics: str = "reference",
        callbacks: Sequence[Callback] = (),
        show_progress: bool | None = None,
        variant_options: dict[str, dict] | None = None,
        oracle_masks: OracleFunction | str | None = None,
        compile: bool = False,
    ):
        """Sample as a diffusers pipeline is called; returns one variant's output (asyndm unless
        ``variant=`` names another) with ``.images``, or with ``variants=[...]`` a dict of paired
        outputs by variant, every variant from the same noise.

        ``items`` and ``k``: the prompt's object words and how much later each settles (0 < k ≤ 1); one
        list for every prompt, or one per prompt. dm and the baselines other than Attend-and-Excite run
        without them. ``generator``: one (all images one stream, as diffusers) or one per image
        (prompts × ``num_images_per_prompt``); without, image j of each prompt is seeded ``seed + j``
        (``seed``: 1234), as the CLI. ``num_images`` is ``num_images_per_prompt``; ``callbacks`` take a
        ``StepInfo`` (asyndm/callbacks.py). ``num_inference_steps``, ``guidance_scale`` and
        ``mask_resolution`` default to the model's own. ``mask``: ``"dynamic"``, ``"static"`` or a
        (images, h, w) tensor of item indices (-1 background) fixing asyndm's masks. ``mask_time``:
        videos (Wan): an item's mask per frame (``"frame"``) or the union over its frames.
        ``variant_options``: the baselines' options, e.g. ``{"cfgpp": {"scale": 0.4}}``. ``compile``:
        torch.compile the model call, in place and for the model's lifetime (the first call compiles;
        docs/performance.md).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if prompt is not None else []
        if not prompts:
            raise PromptError("prompt: give a prompt, or a list of prompts")
        names, paired = self._variants(variants, variant)
        per_prompt = _images_per_prompt(num_images_per_prompt, num_images)
        negatives = _per_prompt(negative_prompt, len(prompts), "negative_prompt")
        steps = self.defaults["steps"] if num_inference_steps is None else num_inference_steps
        scale = self.defaults["guidance_scale"] if guidance_scale is None else guidance_scale
        resolution = self.defaults["mask_resolution"] if mask_resolution is MODEL_DEFAULT else mask_resolution
        given = mask if isinstance(mask, torch.Tensor) else None
        mask_mode = "dynamic" if given is not None else mask
        oracles = oracle_variants(names) if all(unknown_variant(v) is None for v in names) else []
        if oracles and oracle_masks is None:
            raise AsyndmError(f"variant '{oracles[0]}' reads its masks off dm's finished images: pass oracle_masks= "
                              f"(a function of (image, spec, grid), or 'module:function'; asyndm/oracle.py)")
        if seed is not None and generator is not None:
            raise AsyndmError("seed= and generator= both given: pass one (image j of seed s is seeded s + j)")
        check_call(variants=names, variant_options=variant_options, curve=curve, curve_semantics=curve_semantics,
                   mask=mask_mode, mask_threshold=mask_threshold, mask_resolution=resolution, mask_blocks=mask_blocks,
                   mask_time=mask_time, k=None, steps=steps, guidance_scale=scale, eta=eta,
                   negative_prompt=negatives[0], images=per_prompt,
                   height=height, width=width, true_cfg_scale=true_cfg_scale, item_tokens=item_tokens,
                   oracle_masks=oracle_masks, precision=_precision(self.dtype))
        self._check_capabilities(names)
        if compile and (problem := compile_problem(type(self.backend))):
            raise python_error(ConfigError(problem))
        specs = self._specs(prompts, items, k, legacy_item_idx, names)
        if output_type not in OUTPUT_TYPES:
            raise AsyndmError(f"output_type={output_type!r}: choose one of {', '.join(map(repr, OUTPUT_TYPES))}")
        self._check_model_settings(height, width, resolution)
        noise = None
        if generator is not None:
            noise = GeneratorStates.of(generator, len(prompts) * per_prompt)
            if noise.shared and len(prompts) > 1:
                raise AsyndmError(f"generator: one generator for {len(prompts)} prompts; pass a list of "
                                  f"{len(prompts) * per_prompt} (one per image), or call once per prompt")
        show = not self.progress_bar_config.get("disable", True) if show_progress is None else show_progress
        step_end = []
        if callback_on_step_end is not None:
            step_end = [StepEndCallback(self, callback_on_step_end, callback_on_step_end_tensor_inputs, steps,
                                        curve_semantics)]
        outputs = []
        for position, (spec, negative) in enumerate(zip(specs, negatives)):
            settings = SamplingSettings(
                steps=steps, eta=eta, guidance_scale=scale, negative_prompt=negative, curve=curve,
                curve_semantics=curve_semantics, mask_mode=mask_mode, mask_threshold=mask_threshold,
                mask_resolution=resolution, mask_blocks=tuple(mask_blocks) if mask_blocks is not None else None,
                mask_time=mask_time, height=height, width=width, true_cfg_scale=true_cfg_scale,
                variant_options=variant_options or {}, show_progress=show, compile=compile,
            )
            first = SEED if seed is None else int(seed)
            seeds = (noise if noise.shared else noise.part(position * per_prompt, (position + 1) * per_prompt)) \
                if noise is not None else [first + j for j in range(per_prompt)]
            try:
                outputs.append(self.generate(spec, seeds, settings, names, item_tokens, given,
                                             [*callbacks, *step_end], output_type, oracle_masks))
            except AsyndmError as err:
                raise python_error(err) from None
        merged = {name: _joined([out[name] for out in outputs], output_type) for name in names}
        if not return_dict:
            merged = {name: (out.images,) for name, out in merged.items()}
        return merged if paired else merged[names[0]]

    # ------------------------------------------------------------------ the call's pieces

    def _check_capabilities(self, variants: Sequence[str]) -> None:
        """Refuse a variant whose rule needs a capability this model's family lacks (asyndm/capabilities.py),
        before anything is sampled."""
        try:
            check_variants(variants, type(self.backend))
        except AsyndmError as err:
            raise python_error(err) from None

    @staticmethod
    def _variants(variants, variant) -> tuple[list[str], bool]:
        """The variants to sample, and whether the caller asked for them paired (a dict by variant)."""
        if variants is not None and variant is not None:
            raise AsyndmError("variants= and variant= both given: variant='dm' for one output, variants=[...] for "
                              "paired ones")
        if isinstance(variants, str):
            raise AsyndmError(f"variants={variants!r}: a list of variants (variants=[{variants!r}]), or variant={variants!r}")
        names = list(variants) if variants is not None else [variant or "asyndm"]
        return names, variants is not None

    def _specs(self, prompts, items, k, legacy_item_idx, variants) -> list[PromptSpec]:
        """One checked spec per prompt; items (and k) may be absent where no variant needs them."""
        nested = isinstance(items, (list, tuple)) and len(items) > 0 and all(isinstance(i, (list, tuple)) for i in items)
        if items is not None and not nested and (not isinstance(items, (list, tuple)) or
                                                   not all(isinstance(i, str) for i in items)):
            raise PromptError(f"items={items!r}: a list of the prompt's object words (items=['cat', 'sandwich']), "
                              f"or one such list per prompt")
        item_lists = list(items) if nested else [items] * len(prompts)
        if len(item_lists) != len(prompts):
            raise PromptError(f"items: {len(item_lists)} lists for {len(prompts)} prompts; give one per prompt")
        nested_k = isinstance(k, (list, tuple)) and len(k) > 0 and all(isinstance(v, (list, tuple)) for v in k)
        k_lists = list(k) if nested_k else [k] * len(prompts)
        if len(k_lists) != len(prompts):
            raise PromptError(f"k: {len(k_lists)} lists for {len(prompts)} prompts; give one per prompt")
        needs = [v for v in variants if get_variant(v).needs_items]
        specs = []
        for index, (text, words, values) in enumerate(zip(prompts, item_lists, k_lists)):
            where = "prompt" if len(prompts) == 1 else f"prompt[{index}]"
            if not words:
                if needs:
                    raise PromptError(f"variant '{needs[0]}' needs the prompt's items: pass items=[...] (its object "
                                      f"words) and k (0.5, or one per item); dm and the baselines run without")
                if not isinstance(text, str) or not text.strip():
                    raise PromptError(f"{where}: the prompt is empty")
                specs.append(PromptSpec(index, text, [], []))
                continue
            if values is None:
                raise PromptError(f"items={list(words)} need k: one per item (k=[0.5, 0.5]) or one for all (k=0.5)")
            if isinstance(values, (int, float)) and not isinstance(values, bool):
                values = [float(values)] * len(words)
            spec = PromptSpec(index, text, [str(w) for w in words], list(values),
                              list(legacy_item_idx) if legacy_item_idx is not None else None)
            check_spec(spec, where)
            specs.append(spec)
        return specs

    def _check_model_settings(self, height, width, resolution) -> None:
        """What the CLI checks from the model's configs before loading (Backend.check_sizes), in Python
        terms. Where the model came from a folder; an in-memory pipeline is checked by its first call."""
        if not self.source or not _is_folder(self.source):
            return
        try:
            self.backend.check_sizes(self.source, height, width, resolution)
        except ValueError as err:
            raise python_error(ConfigError(str(err))) from None


def _images_per_prompt(num_images_per_prompt, num_images) -> int:
    if num_images_per_prompt is not None and num_images is not None and num_images_per_prompt != num_images:
        raise AsyndmError(f"num_images_per_prompt={num_images_per_prompt} and num_images={num_images}: pass one")
    count = num_images_per_prompt if num_images_per_prompt is not None else num_images
    count = 1 if count is None else count
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise AsyndmError(f"num_images_per_prompt={count}: must be a whole number, at least 1")
    return count


def _per_prompt(value, count: int, name: str) -> list[str]:
    """A setting given once or once per prompt, as a list per prompt."""
    if value is None or isinstance(value, str):
        return [value or ""] * count
    values = list(value)
    if len(values) != count:
        raise AsyndmError(f"{name}: {len(values)} values for {count} prompts; give one, or one per prompt")
    return [v or "" for v in values]


def _joined(parts: list[VariantOutput], output_type: str) -> VariantOutput:
    """One variant's outputs of several prompts as one output, prompt after prompt."""
    if len(parts) == 1:
        return parts[0]
    images = [p.images for p in parts]
    if output_type == "pil":
        images = [image for part in images for image in part]
    elif output_type == "np":
        images = np.concatenate(images)
    else:
        images = torch.cat(images)
    masks = None if parts[0].masks is None else torch.cat([p.masks for p in parts])
    seeds = None if parts[0].seeds is None else [s for p in parts for s in p.seeds]
    return VariantOutput(images=images, latents=torch.cat([p.latents for p in parts]), masks=masks, seeds=seeds)


def _precision(dtype: torch.dtype) -> str:
    """The ``precision`` name of a dtype (the CLI's choices); fp32 for any other."""
    return next((name for name, value in DTYPES.items() if value == dtype), "fp32")


def _is_folder(source: str) -> bool:
    from pathlib import Path

    return (Path(source) / "model_index.json").is_file()


def _built_in(source) -> str | None:
    """The folder of a built-in model name, or None for paths and hub ids."""
    return built_in_source(str(source)) if str(source) in built_in_names() else None
