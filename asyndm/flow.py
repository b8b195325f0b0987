"""Flow matching (SD3, Flux): the scheduler's timeline in unshifted time, the shift, the Euler step.

Pure functions of tensors and the scheduler's config (METHOD.md §9). Curve states live in the
scheduler's *unshifted* timestep space τ (SD3: the linspace ``set_timesteps`` builds before it shifts,
1000 … 2.994 for shift 3; Flux: the sigmas its pipeline passes, × 1000). A state s is seen by the
model as σ(s)·num_train_timesteps with σ(s) = shift(min(s, τ₀) / num_train_timesteps), unrounded, and
moves the latents by the element-wise Euler step x' = x + (σ(s') - σ(s))·v in the scheduler's
arithmetic. σ never exceeds σ(τ₀) = 1: a state above τ₀ (concave tokens start at Y + o > τ₀) is pure
noise and is seen as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .timeline import Timeline
# FlowMatchEulerDiscreteScheduler options that change the sigmas in ways §9 does not cover.
_UNSUPPORTED = {
    "shift_terminal": "a stretched terminal shift",
    "use_karras_sigmas": "Karras sigmas",
    "use_exponential_sigmas": "exponential sigmas",
    "use_beta_sigmas": "beta sigmas",
    "invert_sigmas": "inverted sigmas",
    "stochastic_sampling": "stochastic sampling",
}


def check_scheduler(scheduler) -> None:
    """Refuse, before sampling, scheduler settings whose sigmas are not a shift of the linear τ."""
    name = type(scheduler).__name__
    if name != "FlowMatchEulerDiscreteScheduler":
        raise NotImplementedError(f"scheduler {name}: asyndm's flow-matching families use FlowMatchEulerDiscreteScheduler")
    for key, what in _UNSUPPORTED.items():
        if scheduler.config.get(key):
            raise NotImplementedError(f"the scheduler config sets {key} ({what}); asyndm supports the plain or "
                                      f"dynamically shifted flow-matching Euler schedule only")


@dataclass(frozen=True)
class FlowShift:
    """σ(s) = shift(s / num_train_timesteps): the scheduler's static shift, or its resolution-dependent
    (dynamic) shift with the ``mu`` the pipelines compute from the image's token count.

    ``precision``: the dtype the scheduler shifts in. It shifts float64 numpy sigmas when it builds them
    itself (SD3) and float32 ones when a pipeline passes sigmas (Flux); shifting in the same precision
    gives the scheduler's sigmas bit for bit. ``ceiling``: τ₀, the scheduler's first timestep (the
    same for every N); states above it are seen as τ₀, so σ ≤ σ(τ₀) = 1 (METHOD.md §9).
    """

    num_train_timesteps: float
    shift: float = 1.0
    dynamic: bool = False
    time_shift_type: str = "exponential"
    base_seq_len: int = 256
    max_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15
    precision: torch.dtype = torch.float64
    ceiling: float = float("inf")

    @classmethod
    def from_scheduler(cls, scheduler, precision: torch.dtype = torch.float64,
                       ceiling: float = float("inf")) -> "FlowShift":
        config = scheduler.config
        return cls(
            ceiling=ceiling,
            num_train_timesteps=float(config.num_train_timesteps),
            shift=float(config.get("shift", 1.0)),
            dynamic=bool(config.get("use_dynamic_shifting", False)),
            time_shift_type=config.get("time_shift_type", "exponential"),
            base_seq_len=int(config.get("base_image_seq_len", 256)),
            max_seq_len=int(config.get("max_image_seq_len", 4096)),
            base_shift=float(config.get("base_shift", 0.5)),
            max_shift=float(config.get("max_shift", 1.15)),
            precision=precision,
        )

    def mu(self, tokens: int) -> float:
        """The pipelines' ``calculate_shift``: linear in the image's token count."""
        slope = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len)
        return tokens * slope + (self.base_shift - slope * self.base_seq_len)

    def sigmas(self, states: torch.Tensor, tokens: int) -> torch.Tensor:
        """float32 σ of each state, shifted in ``precision`` as the scheduler shifts; 0 at 0, 1 above τ₀."""
        t = (states.double().clamp(min=0, max=self.ceiling) / self.num_train_timesteps).to(self.precision)
        if not self.dynamic:
            sigma = self.shift * t / (1 + (self.shift - 1) * t)
        else:
            mu = self.mu(tokens)
            scale = math.exp(mu) if self.time_shift_type == "exponential" else mu
            # a tensor numerator: Python-scalar / tensor would be a reciprocal times the scalar
            sigma = torch.full_like(t, scale) / (scale + (1 / t - 1))  # 1/0 = inf: σ(0) = 0
        return sigma.float()

    def model_timesteps(self, states: torch.Tensor, tokens: int) -> torch.Tensor:
        """What the transformer sees: σ·num_train_timesteps in float32 (the scheduler's ``timesteps``)."""
        return self.sigmas(states, tokens) * self.num_train_timesteps


def scheduler_timesteps(scheduler, num_steps: int) -> np.ndarray:
    """τ as ``set_timesteps`` builds it without given sigmas (SD3): linspace(σ_max, σ_min)·num_train_timesteps.

    σ_max and σ_min are the scheduler's own (for a static shift, already shifted: SD3's 1000 … 2.994).
    """
    return np.linspace(scheduler._sigma_to_t(scheduler.sigma_max), scheduler._sigma_to_t(scheduler.sigma_min), num_steps)


def flux_timesteps(scheduler, num_steps: int) -> np.ndarray:
    """τ as ``FluxPipeline`` passes it: sigmas linspace(1, 1/N, N), float32 in the scheduler, × num_train_timesteps.

    A scheduler config with ``use_flow_sigmas`` makes the pipeline pass none: the scheduler's own τ then.
    """
    if scheduler.config.get("use_flow_sigmas"):
        return scheduler_timesteps(scheduler, num_steps)
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps).astype(np.float32)
    return sigmas.astype(np.float64) * scheduler.config.num_train_timesteps


def flow_timeline(unshifted: np.ndarray, device):
    """§9's Timeline from the scheduler's N unshifted timesteps τ₀ > … > τ_{N-1}, then 0 (``Timeline.through``).

    ``sync_states`` keep τ in float64 (SD3's scheduler computes them so).
    """
    tau = torch.as_tensor(np.asarray(unshifted, dtype=np.float64), device=device)
    return Timeline.through(tau, torch.cat([tau[1:], tau.new_zeros(1)]))


def token_map(values: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """(B, h, w) per-token values → (B, 1, H, W) on the latent grid (each token covers a p×p patch)."""
    height, width = latents.shape[-2:]
    grid_h, grid_w = values.shape[-2:]
    if height % grid_h or width % grid_w:
        raise ValueError(f"token grid {grid_h}x{grid_w} does not divide the latents {height}x{width}")
    return values.repeat_interleave(height // grid_h, dim=-2).repeat_interleave(width // grid_w, dim=-1)[:, None]


def euler_step(output: torch.Tensor, latents: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor):
    """x' = x + (σ' - σ)·v per token (§9), in FlowMatchEulerDiscreteScheduler.step's arithmetic.

    The scheduler multiplies v by a 0-dim float32 dt, which is cast to v's dtype first and keeps the
    product there, then adds it to the float32 latents and casts the sum back: the per-token dt is
    cast the same way, so a constant map gives the scheduler's step bit for bit in every precision.
    ``sigma``, ``sigma_next``: float32 (B, h, w) on the token grid.
    """
    delta = token_map(sigma_next - sigma, latents)  # (B, 1, H, W) float32
    return (latents.float() + delta.to(output.dtype) * output).to(output.dtype)
