"""The caller's torch generators, replayed for every variant (diffusers' ``generator=``).

Paired sampling needs every variant to start from the same noise, so the generators' states are read
once, when the call starts, and each variant draws from fresh generators in those states; the
caller's own generators are left as they were. One generator for a batch is one stream, as in
diffusers (the batch's noise drawn from it at once); a list gives one generator per image, as the
CLI's seeds do (§7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import AsyndmError


class SharedGenerator(list):
    """One generator for every image of a batch: its noise is drawn from it at once, as diffusers does."""


def noise_generator(generators: list[torch.Generator]):
    """What ``randn_tensor``'s ``generator=`` takes for ``generators``: the one stream of a shared
    generator, or the list (one per image)."""
    return generators[0] if isinstance(generators, SharedGenerator) else generators


@dataclass(frozen=True)
class GeneratorStates:
    """The states of the caller's generators when the call started, one per image (or one shared)."""

    devices: tuple[torch.device, ...]
    states: tuple[torch.Tensor, ...]
    count: int  # images
    shared: bool

    @classmethod
    def of(cls, generator: torch.Generator | list[torch.Generator], count: int) -> "GeneratorStates":
        """``generator``: one for all ``count`` images, or a list of ``count``."""
        gens = list(generator) if isinstance(generator, (list, tuple)) else [generator]
        for g in gens:
            if not isinstance(g, torch.Generator):
                raise AsyndmError(f"generator={g!r}: pass a torch.Generator or a list of them, one per image")
        if len(gens) != 1 and len(gens) != count:
            raise AsyndmError(f"generator: a list of {len(gens)} generators for {count} images; pass one per image "
                             f"(prompts × num_images_per_prompt), or a single one")
        return cls(tuple(g.device for g in gens), tuple(g.get_state() for g in gens), count,
                   shared=len(gens) == 1 and count > 1)

    def __len__(self) -> int:
        return self.count

    def part(self, start: int, stop: int) -> "GeneratorStates":
        """The generators of images ``start:stop`` (one prompt's, of a list of prompts)."""
        if self.shared:
            raise ValueError("one generator for a list of prompts")  # handled by the caller
        return GeneratorStates(self.devices[start:stop], self.states[start:stop], stop - start, False)

    def fresh(self) -> list[torch.Generator]:
        """New generators in the recorded states (a shared one: the same object ``count`` times)."""
        made = []
        for device, state in zip(self.devices, self.states):
            g = torch.Generator(device=device)
            g.set_state(state)
            made.append(g)
        return SharedGenerator(made * self.count) if self.shared else made
