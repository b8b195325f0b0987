"""The sampling loop, and paired sampling of several variants from the same noise (METHOD.md §2–§7).

``denoise`` is the whole method in one short function: per step, take this call's states and the
states the update goes to (computed from the masks known before the call, §6), run the guidance
rule, step the latents element-wise, then let the schedule read the call's item maps. What differs
between model families is the backend's; what differs between variants is the schedule's and the
guidance rule's; observers are callbacks.

Each variant draws its noise from fresh generators seeded ``seed + j``, so all variants start from
identical noise and an image does not depend on the batch it was sampled in.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import torch

from .backends.base import Backend, ItemAttention, ItemTokens
from .capabilities import check_variants, lacks
from .conditioning import PromptConditioning
from .callbacks import MeanItemMaps, ProgressBar, StepInfo
from .curves import Curves
from .generators import GeneratorStates
from .guidance import GuidanceRule, StepContext
from .settings import MASK_MODES, SampleSettings
from .schedules import CurveSchedule, Schedule, SynchronousSchedule
from .variants import VARIANTS, get_variant, oracle_variants

# An observer of each step; one that returns a tensor replaces the latents with it (as diffusers'
# callback_on_step_end may).
Callback = Callable[[StepInfo], "torch.Tensor | None"]


@dataclass(frozen=True)
class SamplingSettings(SampleSettings):
    """Everything that decides the images: the ``sample.*`` keys (inherited, defined once in
    asyndm/settings.py), the curve's and the mask's as ``curve_<key>`` and ``mask_<key>``
    (``curve`` and ``mask_mode`` for their names; ``from_config`` fills them by that rule), and each
    variant's options. Defaults are the paper's (METHOD.md §3, §4, §6)."""

    curve: str = "bin"
    curve_semantics: str = "reference"
    mask_mode: str = "dynamic"
    mask_threshold: float = 1.0
    mask_resolution: int | None = None  # side of the attention grid; None = the backend's default
    mask_blocks: tuple[int, ...] | None = None  # transformer blocks the masks read; None = the backend's default
    mask_time: str = "frame"  # videos: an item's mask per frame, or the union over frames ("union")
    variant_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    show_progress: bool = False

    @classmethod
    def from_config(cls, sample: Mapping, curve: Mapping, mask: Mapping, **rest) -> "SamplingSettings":
        """From the config's plain ``sample``, ``curve`` and ``mask`` groups: every key of theirs this
        class has a field for, by the naming rule above (lists as tuples); ``rest`` for the others."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = dict(sample)
        for group, values in (("curve", curve), ("mask", mask)):
            for key, value in values.items():
                name = {"curve": "curve", "mask": "mask_mode"}[group] if key == "name" else f"{group}_{key}"
                given[name] = tuple(value) if isinstance(value, list) else value
        return cls(**{**{k: v for k, v in given.items() if k in names}, **rest})


@dataclass
class VariantResult:
    latents: torch.Tensor  # (B, C, h, w), before decoding
    assignment: torch.Tensor | None = None  # (B, h, w) final item per cell, -1 background (asyndm)


@torch.no_grad()
def denoise(
    backend: Backend,
    schedule: Schedule,
    guidance: GuidanceRule,
    cond: PromptConditioning,
    latents: torch.Tensor,
    generators: list[torch.Generator],
    eta: float,
    attention: ItemAttention | None = None,
    callbacks: Sequence[Callback] = (),
    variant: str = "",
    tokens: ItemTokens | None = None,
) -> torch.Tensor:
    """One variant's loop over the schedule's model calls; returns the final latents. ``variant``
    names the steps for the callbacks; ``tokens`` reach the rules that act on them (StepContext)."""
    num_steps = schedule.num_steps
    if not schedule.uniform:
        backend.announce(schedule.first_states())
    for step in range(num_steps):
        states, next_states = schedule.states(step)  # (B, h, w) each; t_step → t_step+1 from the masks known now (§6)
        if not schedule.uniform and step + 1 < num_steps:
            backend.announce(next_states)  # the next call's states, before this call is queued
        context = StepContext(step, num_steps, next_states, eta, generators, backend, tokens)
        model = partial(backend.predict, uniform=schedule.uniform, attention=attention,
                        sync_state=schedule.sync_state(step))  # τ_step: the text stream's (§9)
        prediction = guidance(model, latents, states, cond, context)
        start = latents if prediction.sample is None else prediction.sample  # a rule may move them first
        latents = backend.step(prediction, start, states, next_states, eta, generators)
        item_maps = attention.take() if attention is not None else None
        schedule.observe(step, item_maps)  # this call's mask first moves call step + 2
        for callback in callbacks:
            grid = attention.grid if attention is not None else None
            replaced = callback(StepInfo(variant=variant, step=step, latents=latents, states=states,
                                         next_states=next_states, item_maps=item_maps,
                                         assignment=schedule.assignment, grid=grid, backend=backend))
            if isinstance(replaced, torch.Tensor):  # diffusers' callback_on_step_end may return new latents
                latents = replaced
    return latents


class AsyncSampler:
    """Samples paired images of any registered variants with one backend and one set of settings."""

    def __init__(self, backend: Backend, settings: SamplingSettings):
        if settings.mask_mode not in MASK_MODES:
            raise ValueError(f"unknown mask mode '{settings.mask_mode}': choose mask=dynamic or mask=static")
        self.backend = backend
        self.settings = settings
        if settings.compile:
            backend.compile()  # once per model: later samplers on it reuse the compiled regions
        self.height, self.width = settings.height or backend.default_size[0], settings.width or backend.default_size[1]

    def guidance(self, variant: str) -> GuidanceRule:
        """The variant's rule with the run's scale and its options (``variant_options[options_name]``);
        the family's own guidance (variants without options) takes the run's ``true_cfg_scale``."""
        spec = get_variant(variant)
        check_variants([variant], type(self.backend))  # a family without what the rule needs: refused here
        options = self.settings.variant_options.get(spec.options_name) or {}
        spec.check_options(options)
        if spec.options is None:
            options = {"true_cfg_scale": self.settings.true_cfg_scale}
        return spec.guidance(self.backend, self.settings.guidance_scale, options)

    @torch.no_grad()  # as the pipelines encode: no autograd graph, and the same inference kernels
    def encode(self, prompt: str, batch: int, variants: Sequence[str] | None = None) -> PromptConditioning:
        """The prompt's conditioning; the negative prompt's too where a variant's guidance needs it."""
        if variants is None:  # every variant this family can sample
            variants = [v for v in VARIANTS if not lacks(v, type(self.backend))]
        guided = any(self.guidance(v).guided for v in variants)
        return self.backend.encode(prompt, batch, self.settings.negative_prompt, guided)

    def _schedule(self, kind: str, latents, tokens: ItemTokens, item_k: list[float], masks,
                  attention: ItemAttention | None) -> Schedule:
        backend, s = self.backend, self.settings
        timeline = backend.timeline(s.steps, s.curve_semantics)
        map_shape = (len(latents), *backend.map_shape(latents))
        if kind == "sync":
            return SynchronousSchedule(timeline, map_shape)
        curves = Curves(s.curve, s.steps, timeline.num_train_timesteps, timeline.offset, s.curve_semantics)
        if kind == "concave":
            return CurveSchedule(curves, timeline, map_shape, backend.device, item_k, background_k=max(item_k))
        if masks is not None:  # static masks, or masks given by the caller
            if tuple(masks.shape) != map_shape:
                raise ValueError(f"masks of shape {tuple(masks.shape)} do not match the timestep grid {map_shape}")
            return CurveSchedule(curves, timeline, map_shape, backend.device, item_k,
                                 assignment=masks.to(backend.device))
        k_items = torch.tensor(item_k, dtype=torch.float32, device=backend.device)  # once, not per step
        update = partial(backend.item_masks, item_k=k_items, threshold=s.mask_threshold, grid=attention.grid,
                         latent=map_shape[1:], time=s.mask_time)
        initial = torch.full(map_shape, tokens.last_item, dtype=torch.long, device=backend.device)
        return CurveSchedule(curves, timeline, map_shape, backend.device, item_k, assignment=initial,
                             update_masks=update)

    def sample_variant(
        self,
        variant: str,
        cond: PromptConditioning,
        seeds: list[int] | GeneratorStates,
        tokens: ItemTokens,
        item_k: list[float],
        masks: torch.Tensor | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> VariantResult:
        """Denoise one batch as ``variant``. ``masks`` (B, h, w) fixes asyndm's item assignment.
        ``seeds``: one per image (generators seeded ``seed + j``), or the caller's generators' states."""
        backend, s = self.backend, self.settings
        kind = get_variant(variant).schedule
        dynamic = kind == "async" and masks is None
        if dynamic and s.mask_mode == "static":
            raise ValueError("static masks come from the dm pass of the same seeds: sample with "
                             "AsyncSampler.sample(...), or pass masks=")
        generators = (seeds.fresh() if isinstance(seeds, GeneratorStates)  # the caller's, replayed per variant
                      else backend.generators(seeds, s.generator_device))
        latents = backend.initial_latents(generators, self.height, self.width)
        capture = dynamic or any(getattr(cb, "needs_item_maps", False) for cb in callbacks)
        attention = backend.item_attention(tokens, latents, s.mask_resolution, s.mask_blocks) if capture else None
        schedule = self._schedule(kind, latents, tokens, item_k, masks, attention)
        if s.show_progress:
            callbacks = [*callbacks, ProgressBar(variant, schedule.num_steps)]
        with attention if attention is not None else nullcontext():
            latents = denoise(backend, schedule, self.guidance(variant), cond, latents, generators, s.eta,
                              attention, callbacks, variant, tokens)
        return VariantResult(latents=latents, assignment=schedule.assignment if kind == "async" else None)

    def static_masks(self, mean_maps: MeanItemMaps, item_k: list[float], latents_hw: tuple[int, int]) -> torch.Tensor:
        """§6 static masks: the dm pass's maps averaged over all steps, binarised, prioritised, upsampled."""
        k_items = torch.tensor(item_k, dtype=torch.float32, device=self.backend.device)
        return self.backend.item_masks(mean_maps.mean(), k_items, self.settings.mask_threshold, mean_maps.grid,
                                       latents_hw, self.settings.mask_time)

    def sample(
        self,
        prompt: str,
        tokens: ItemTokens,
        item_k: list[float],
        seeds: list[int] | GeneratorStates,
        variants: Sequence[str],
        masks: torch.Tensor | None = None,
        callbacks: Sequence[Callback] = (),
        oracle: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, VariantResult]:
        """Paired samples of ``variants`` for one prompt and one batch of seeds.

        With static masks, asyndm's mask comes from a dm pass of the same seeds (§6), run first;
        its images are dm's own, so it counts as the dm result when dm is asked for too. Oracle
        variants (``asyndm_oracle``) take ``oracle(dm latents)`` as their masks, from the same dm pass.
        """
        oracles = oracle_variants(variants)
        if oracles and oracle is None:
            raise ValueError(f"variant {oracles[0]} reads its masks off dm's finished image: pass oracle= "
                             f"(the prompt set's prompts.oracle_masks, asyndm/oracle.py)")
        cond = self.encode(prompt, len(seeds), variants)
        results: dict[str, VariantResult] = {}
        asynchronous = [v for v in variants if get_variant(v).schedule == "async" and v not in oracles]
        dm_callbacks = callbacks if "dm" in variants else ()
        if asynchronous and masks is None and self.settings.mask_mode == "static":
            mean_maps = MeanItemMaps()
            dm = self.sample_variant("dm", cond, seeds, tokens, item_k, callbacks=[*dm_callbacks, mean_maps])
            masks = self.static_masks(mean_maps, item_k, self.backend.map_shape(dm.latents))
            results["dm"] = dm
        if oracles:
            dm = results.get("dm") or self.sample_variant("dm", cond, seeds, tokens, item_k, callbacks=dm_callbacks)
            results["dm"] = dm
            truth = oracle(dm.latents).to(self.backend.device)
            for name in oracles:
                results[name] = self.sample_variant(name, cond, seeds, tokens, item_k, masks=truth, callbacks=callbacks)
        for name in variants:
            if name not in results:
                results[name] = self.sample_variant(name, cond, seeds, tokens, item_k,
                                                    masks=masks if name in asynchronous else None, callbacks=callbacks)
        return {name: results[name] for name in variants}

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, output_type: str = "pil"):
        """Images from latents: PIL, or ``np`` / ``pt`` arrays in [0, 1] (diffusers' output types)."""
        return self.backend.decode(latents) if output_type == "pil" else self.backend.decode(latents, output_type)
