"""The curves against an independent oracle of METHOD.md §3, bit for bit.

The oracle below is written from §3's formulas and its "Numerics" paragraph in NumPy float32 (not
from asyndm/curves.py): float32 states, Python-float coefficients, the reference's operation order.
States often land on x.5, so any other numerics (float64 states, an algebraically equal rewrite)
flips roundings; these tests count the flips and demand zero.
"""

import math

import numpy as np
import pytest
import torch

from asyndm.curves import CURVES, Curves, concave_step, linear_step

Y, O = 1000.0, 1.0
F32 = np.float32


# ------------------------------------------------------------------ the oracle (METHOD.md §3)


def oracle_linear(s, r, o=O):
    """s·(1 - 1/r) + o/r, o a float32 tensor; 0 after the last transition."""
    if r == 0:
        return np.zeros_like(s)
    return s * (1 - 1 / r) + F32(o) / F32(r)


def oracle_concave(curve, s, r, k, n, y=Y, o=O):
    if r == 0:
        return np.zeros_like(s)
    if curve == "bin":  # a = -k·Y/N²; t0 = (a·r² - (o - s)) / (2·a·r); y0 = s - a·t0²; s' = a·(1 - t0)² + y0
        a = -k * (y / (n * n))
        t0 = (a * r**2 - (o - s)) / (2 * a * r)
        y0 = s - a * t0**2
        return a * (1 - t0) ** 2 + y0
    if curve == "lin":  # s' = (k1 + s).clamp(max = k2 + (o - k2·r)), k1 = -(1-k)·Y/N, k2 = -(1+k)·Y/N
        k1 = -(1 - k) * y / n
        k2 = -(1 + k) * y / n
        return np.minimum(k1 + s, F32(k2 + (o - k2 * r)))
    if curve == "exp":  # E = (s - o + b·r) / (a·(1 - e^{r/N})); s' = a·(e^{1/N} - 1)·E + b + s
        lam = 1 / n
        a = -k * y / (math.e - 1)
        b = -(1 - k) * y / n
        e_shift = (s - o + b * r) / (a * (1 - math.e ** (lam * r)))
        return a * (math.e**lam - 1) * e_shift + b + s
    raise ValueError(curve)


def oracle_transition(curve, s, r, assignment, item_k, n):
    """Item j's curve where the mask says j, the linear one elsewhere (the reference's masked sum)."""
    out = oracle_linear(s, r)
    for item, k in enumerate(item_k):
        out = np.where(assignment == item, oracle_concave(curve, s, r, k, n), out)
    return out


# ------------------------------------------------------------------ a million random transitions


def random_cases(seed, cases=1000, per_case=1000):
    """(k, r, N, states): states uniform over [0, Y+o], half of them on x.5 (where rounding flips)."""
    rng = np.random.default_rng(seed)
    for _ in range(cases):
        n = int(rng.choice([10, 25, 30, 50]))
        r = int(rng.integers(1, n + 1))
        k = float(rng.uniform(0.01, 1.0))
        uniform = rng.uniform(0.0, Y + O, per_case // 2).astype(F32)
        halves = (rng.integers(0, 2 * int(Y + O), per_case - per_case // 2) + 0.5).astype(F32) / F32(1)
        yield k, r, n, np.concatenate([uniform, halves])


@pytest.mark.parametrize("curve", CURVES)
def test_a_million_random_transitions_equal_the_oracle_bit_for_bit(curve):
    flips = mismatches = 0
    for k, r, n, states in random_cases(seed=CURVES.index(curve)):
        ours = concave_step(curve, torch.from_numpy(states), r, k, n, Y, O).numpy()
        expected = oracle_concave(curve, states, r, k, n)
        assert expected.dtype == np.float32
        mismatches += int((ours != expected).sum())
        flips += int((np.round(ours) != np.round(expected)).sum())  # round half to even, both
    assert flips == 0 and mismatches == 0, f"{flips} rounded timesteps and {mismatches} states differ"


def test_a_million_random_linear_transitions_equal_the_oracle():
    mismatches = 0
    for _, r, _, states in random_cases(seed=7):
        mismatches += int((linear_step(torch.from_numpy(states), r, O).numpy() != oracle_linear(states, r)).sum())
    assert mismatches == 0


@pytest.mark.parametrize("curve", CURVES)
def test_the_oracle_tells_float64_rewrites_apart(curve):
    """Positive control: the earlier float64 forms flip roundings the oracle catches (hence zero above
    is a real check)."""
    flips = 0
    for k, r, n, states in random_cases(seed=11, cases=300):
        refit = concave_step(curve, torch.from_numpy(states).double(), r, k, n, Y, O, "refit").numpy()
        flips += int((np.round(refit) != np.round(oracle_concave(curve, states, r, k, n))).sum())
    assert flips > 0


# ------------------------------------------------------------------ trajectories with k changes


@pytest.mark.parametrize("curve", CURVES)
def test_trajectories_with_mask_changes_in_both_directions_equal_the_oracle(curve):
    """4,096 pixels, 50 steps, each pixel moved between background, k = 0.7 and k = 0.3 at random
    steps (so k rises and falls, and pixels land above lin's steep line and below its gentle one)."""
    n, item_k = 50, [0.7, 0.3]
    rng = np.random.default_rng(3)
    assignments = np.full((n + 1, 64, 64), -1)
    current = rng.integers(-1, 2, (64, 64))
    for step in range(n + 1):
        change = rng.random((64, 64)) < 0.15
        current = np.where(change, rng.integers(-1, 2, (64, 64)), current)
        assignments[step] = current
    curves = Curves(curve, n, Y, O)
    ours = curves.start((64, 64), "cpu")
    expected = np.full((64, 64), Y + O, dtype=F32)
    for step in range(n + 1):
        r = n - step
        ours = curves.transition(ours, r, torch.from_numpy(assignments[step]), item_k)
        expected = oracle_transition(curve, expected, r, assignments[step], item_k, n)
        assert np.array_equal(ours.numpy(), expected), f"step {step}"
        assert np.array_equal(torch.round(ours).numpy(), np.round(expected))
    assert (ours == 0).all()


def test_lin_clamps_a_state_above_its_steep_line_and_steps_gently_below_the_gentle_line():
    n, k, r = 50, 0.3, 10
    gentle, steep = (1 - k) * Y / n, (1 + k) * Y / n  # 14 and 26 per step
    states = np.array([900.0, 236.0 + gentle, 100.0, 20.0], dtype=F32)
    # 900 is far above the steep line that reaches o in 10 steps: it jumps onto it (1 + 26·9 = 235);
    # 250 lands exactly on it; 100 and 20 are below the gentle line (1 + 14·10 = 141): one gentle step
    expected = [1 + steep * (r - 1), 1 + steep * (r - 1), 100 - gentle, 20 - gentle]
    ours = concave_step("lin", torch.from_numpy(states), r, k, n, Y, O).numpy()
    assert ours.tolist() == pytest.approx(expected, abs=1e-4)
    assert np.array_equal(ours, oracle_concave("lin", states, r, k, n))


def test_reference_states_are_float32():
    assert Curves("bin", 50, Y, O).start((2, 2), "cpu").dtype == torch.float32
    assert Curves("bin", 50, Y, O, semantics="refit").start((2, 2), "cpu").dtype == torch.float64
