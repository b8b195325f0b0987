"""Timestep curves (METHOD.md §3): stepping reproduces the closed forms, and a pixel that changes
curve mid-way continues from where it is (the paper's translated curve, Proposition 1)."""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from asyndm.curve_shapes import closed_form
from asyndm.curves import CURVES, SEMANTICS, Curves, concave_step, linear_step, timesteps_from_state

Y, O = 1000, 1.0  # num_train_timesteps and steps_offset of every SD scheduler


def trajectory(curve, k_per_step, num_steps, start=Y + O, semantics="reference", dtype=torch.float64):
    """States after 1, 2, ..., N steps and after the final transition: N + 1 values.

    ``k_per_step`` gives the k used by each transition (x = steps done before it); k = 0 is linear.
    float64 states: the curves' shapes, free of float32 rounding (tests/test_curves_reference.py
    checks the float32 numerics).
    """
    state = torch.tensor([float(start)], dtype=dtype)
    states = []
    for x in range(num_steps + 1):
        k = k_per_step(x)
        steps_left = num_steps - x
        if curve == "linear" or k == 0:
            state = linear_step(state, steps_left, O)
        else:
            state = concave_step(curve, state, steps_left, k, num_steps, Y, O, semantics)
        states.append(float(state))
    return states


def closed(curve, k, num_steps, xs):
    return closed_form(curve, list(xs), k, num_steps, Y, O).tolist()


def test_linear_gives_the_schedulers_own_timesteps():
    states = trajectory("linear", lambda x: 0.0, 50)
    assert states[:-1] == pytest.approx(list(range(981, 0, -20)), abs=1e-9)
    assert states[-1] == 0.0
    ints = timesteps_from_state(torch.tensor(states), Y).tolist()
    assert ints == list(range(981, 0, -20)) + [0]
    scheduler = DDIMScheduler(num_train_timesteps=Y, steps_offset=1, set_alpha_to_one=False)
    scheduler.set_timesteps(50)
    assert ints[:-1] == scheduler.timesteps.tolist()


@pytest.mark.parametrize("num_steps", [10, 50])
def test_linear_closed_form_matches_stepping(num_steps):
    states = trajectory("linear", lambda x: 0.0, num_steps)
    assert states[:-1] == pytest.approx(closed("linear", 0.0, num_steps, range(1, num_steps + 1)), abs=1e-9)


@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize("k", [0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("num_steps", [4, 7, 10, 25, 50])
@pytest.mark.parametrize("semantics", SEMANTICS)
def test_stepping_from_the_start_reproduces_the_closed_form(curve, k, num_steps, semantics):
    states = trajectory(curve, lambda x: k, num_steps, semantics=semantics)
    expected = closed(curve, k, num_steps, range(1, num_steps + 1))
    assert states[:-1] == pytest.approx(expected, abs=1e-8)
    assert states[-2] == pytest.approx(O, abs=1e-8), "the last model call runs at steps_offset"
    assert states[-1] == 0.0, "the final transition (r = 0) goes to 0"


def test_bin_closed_form_is_the_papers_mix_of_quadratic_and_linear():
    # METHOD.md §3: k·(Y - Y·x²/N²) + (1-k)·(Y - Y·x/N) (plus o), hand-evaluated at N = 10, k = 0.7
    values = closed("bin", 0.7, 10, [0, 3, 5, 10])
    assert values == pytest.approx([1001, 1 + 0.7 * 910 + 0.3 * 700, 1 + 0.7 * 750 + 0.3 * 500, 1], abs=1e-9)


def test_lin_closed_form_with_k_half_is_the_papers_min_formula():
    # k = 0.5: min(T - i/2, 3T/2 - 3i/2) with i = Y·x/N the linear progress (plus o)
    num_steps = 50
    xs = list(range(num_steps + 1))
    expected = [O + min(Y - (Y * x / num_steps) / 2, 1.5 * Y - 1.5 * Y * x / num_steps) for x in xs]
    assert closed("lin", 0.5, num_steps, xs) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("num_steps", [5, 7, 11])
def test_lin_step_across_an_odd_kink_mixes_the_two_slopes(num_steps):
    # With odd N the kink at N/2 falls inside a step: that one step drops half gentle, half steep.
    k = 0.6
    gentle, steep = (1 - k) * Y / num_steps, (1 + k) * Y / num_steps
    states = [Y + O] + trajectory("lin", lambda x: k, num_steps)[:-1]
    drops = [a - b for a, b in zip(states, states[1:])]
    half = num_steps // 2
    assert drops[:half] == pytest.approx([gentle] * half)
    assert drops[half] == pytest.approx((gentle + steep) / 2)
    assert drops[half + 1 :] == pytest.approx([steep] * (num_steps - half - 1))


@pytest.mark.parametrize(
    "curve,gap,at",
    [("bin", 0.25, 0.5), ("lin", 0.5, 0.5), ("exp", (math.e - 2) / (math.e - 1) - math.log(math.e - 1), None)],
)
@pytest.mark.parametrize("k", [0.3, 0.7])
def test_largest_gap_to_linear(curve, gap, at, k):
    num_steps = 1000  # fine grid: the exp maximum (x/N = ln(e-1) ≈ 0.541) falls between steps of N = 50
    concave = torch.tensor(trajectory(curve, lambda x: k, num_steps)[:-1])
    linear = torch.tensor(trajectory("linear", lambda x: 0.0, num_steps)[:-1])
    gaps = concave - linear
    assert float(gaps.min()) >= -1e-6, "a concave curve never runs ahead of linear"
    assert float(gaps.max()) == pytest.approx(abs(gap) * k * Y, rel=1e-5)
    if at is not None:
        assert (int(gaps.argmax()) + 1) / num_steps == pytest.approx(at, abs=1e-3)
    else:
        assert abs(gap) == pytest.approx(0.123, abs=5e-4)  # the ≈0.123·k·Y of METHOD.md


@pytest.mark.parametrize("curve", CURVES)
def test_k_zero_is_exactly_linear(curve):
    state = torch.tensor([1001.0, 700.3, 412.0, 1.0], dtype=torch.float64)
    for steps_left in (50, 20, 3, 1):
        linear = linear_step(state, steps_left, O)
        assert torch.equal(concave_step(curve, state, steps_left, 0.0, 50, Y, O), linear)


@pytest.mark.parametrize("curve", CURVES)
def test_transition_gives_each_pixel_its_items_curve(curve):
    curves = Curves(curve, 50, Y, O, semantics="refit")
    state = torch.full((2, 3), 801.0, dtype=torch.float64)
    assignment = torch.tensor([[-1, 0, 1], [1, -1, 0]])
    k = [0.3, 0.7]
    out = curves.transition(state, 40, assignment, k)
    for item, k_item in [(-1, 0.0), (0, 0.3), (1, 0.7)]:
        alone = concave_step(curve, torch.tensor([801.0], dtype=torch.float64), 40, k_item, 50, Y, O, "refit")
        assert torch.equal(out[assignment == item], alone.expand(2))


def _switching(curve, switch_at, k_before, k_after, num_steps=50, semantics="reference"):
    return trajectory(curve, lambda x: k_before if x < switch_at else k_after, num_steps, semantics=semantics)


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize("k_before,k_after", [(0.0, 0.7), (0.7, 0.3), (0.3, 0.7), (0.7, 0.0), (0.5, 1.0)])
@pytest.mark.parametrize("switch_at", [10, 25, 40])
def test_switching_curve_mid_way_still_ends_at_offset_then_zero(curve, k_before, k_after, switch_at, semantics):
    states = _switching(curve, switch_at, k_before, k_after, semantics=semantics)
    before = closed(curve if k_before else "linear", k_before, 50, range(1, switch_at + 1))
    assert states[:switch_at] == pytest.approx(before, abs=1e-8), "unchanged up to the switch"
    assert states[-2] == pytest.approx(O, abs=1e-8)
    assert states[-1] == 0.0
    path = torch.tensor([Y + O] + states[:-1])
    assert bool((path[1:] <= path[:-1]).all()), "timesteps never increase"


@pytest.mark.parametrize("k_before,k_after", [(0.0, 0.7), (0.7, 0.3), (0.3, 1.0)])
def test_bin_switch_follows_the_translated_parabola(k_before, k_after):
    # After the switch at x0 the states lie on the parabola with leading coefficient -k·Y/N² through
    # (x0, s0) and (N, o): s(x) = a·(x - x0)·(x - N) + s0 + (o - s0)·(x - x0)/(N - x0).
    num_steps, x0 = 50, 10
    states = [Y + O] + _switching("bin", x0, k_before, k_after, num_steps)[:-1]  # index = steps done
    s0, a = states[x0], -k_after * Y / num_steps**2
    expected = [a * (x - x0) * (x - num_steps) + s0 + (O - s0) * (x - x0) / (num_steps - x0) for x in range(x0, 51)]
    assert states[x0:] == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("k_before,k_after", [(0.0, 0.7), (0.7, 0.3)])
def test_exp_switch_translates_the_fixed_shape_along_x(k_before, k_after):
    # Reference (§3): after the switch s(x) = a·e^{(x-d)/N} + b·x + c with the new k's a and b
    # = -(1-k)·Y/N both fixed: s(x) - b·x is A·e^{x/N} + c, so its increments grow by e^{1/N} a step.
    num_steps, x0, k = 50, 20, k_after
    states = [Y + O] + _switching("exp", x0, k_before, k_after, num_steps)[:-1]
    b = -(1 - k) * Y / num_steps
    residual = [states[x] - b * x for x in range(x0, 51)]
    increments = [r1 - r0 for r0, r1 in zip(residual, residual[1:])]
    ratios = [i1 / i0 for i0, i1 in zip(increments, increments[1:])]
    assert ratios == pytest.approx([math.exp(1 / num_steps)] * len(ratios), rel=1e-7)
    # the shape's own coefficient: A = a·e^{-d/N} < 0, the curve stays concave
    assert increments[0] < 0


@pytest.mark.parametrize("k_before,k_after", [(0.0, 0.7), (0.7, 0.3)])
def test_exp_refit_keeps_a_and_refits_the_linear_coefficient(k_before, k_after):
    # refit semantics: s(x) = a·e^{x/N} + b·x + c with the new a = -k·Y/(e-1); b, c fitted to two points.
    num_steps, x0 = 50, 20
    states = [Y + O] + _switching("exp", x0, k_before, k_after, num_steps, semantics="refit")[:-1]
    a = -k_after * Y / (math.e - 1)
    residual = [states[x] - a * math.exp(x / num_steps) for x in range(x0, 51)]  # must be linear in x
    slopes = [r1 - r0 for r0, r1 in zip(residual, residual[1:])]
    assert slopes == pytest.approx([slopes[0]] * len(slopes), abs=1e-8)


def test_lin_switch_takes_gentle_then_steep_drops():
    num_steps, x0, k = 50, 10, 0.7
    states = [Y + O] + _switching("lin", x0, 0.0, k, num_steps)[:-1]
    drops = [a - b for a, b in zip(states[x0:], states[x0 + 1 :])]
    gentle, steep = (1 - k) * Y / num_steps, (1 + k) * Y / num_steps
    # from 801 at x = 10: 800 to drop in 40 steps, 6·p + 34·(40 - p) = 800 → p = 20 gentle steps
    assert drops[:20] == pytest.approx([gentle] * 20)
    assert drops[20:] == pytest.approx([steep] * 20)


def test_lin_state_above_the_steep_line_jumps_onto_it():
    # Late on k = 0.7 (x = 40, state 341) and switched to k = 0.3: the steep line that reaches o in
    # 10 steps (slope 26) is at 1 + 26·9 = 235 one step on, so the reference clamps the pixel there.
    num_steps = 50
    states = [Y + O] + _switching("lin", 40, 0.7, 0.3, num_steps)[:-1]
    assert states[40] == pytest.approx(341.0)
    assert states[41:] == pytest.approx([1.0 + 26.0 * (9 - i) for i in range(10)])


def test_lin_refit_takes_the_straight_line_where_no_curve_of_its_k_passes():
    # refit semantics: even the steep slope 26/step cannot drop 340 in 10 steps, so the pixel takes
    # the straight line to o (and still ends there).
    num_steps = 50
    states = [Y + O] + _switching("lin", 40, 0.7, 0.3, num_steps, semantics="refit")[:-1]
    assert states[40] == pytest.approx(341.0)
    assert states[40:] == pytest.approx([341.0 - 34.0 * i for i in range(11)])


def test_unknown_curve_raises_naming_it():
    with pytest.raises(ValueError, match="unknown curve 'quadratic'"):
        concave_step("quadratic", torch.tensor([1001.0]), 50, 0.5, 50, Y, O)
    with pytest.raises(ValueError, match="unknown curve 'quadratic'"):
        closed_form("quadratic", [1.0], 0.5, 50, Y, O)


def test_timesteps_round_half_to_even_and_clamp():
    state = torch.tensor([1001.0, 999.5, 998.5, 12.4999, 0.5, -3.0], dtype=torch.float64)
    assert timesteps_from_state(state, Y).tolist() == [999, 1000 - 1, 998, 12, 0, 0]
