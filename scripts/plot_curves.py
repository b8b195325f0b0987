"""Plot the timestep curves (METHOD.md §3) and a pixel that switches curve mid-way.

    python scripts/plot_curves.py docs/figures/curves.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from asyndm.curves import concave_step  # noqa: E402

STEPS, Y, OFFSET = 50, 1000, 1


def trajectory(curve: str, k_per_step) -> list[float]:
    """Model-call timesteps of one pixel whose k may change at each step (0 = linear)."""
    state = torch.tensor([Y + OFFSET], dtype=torch.float64)
    state = concave_step(curve, state, STEPS, k_per_step(0), STEPS, Y, OFFSET)
    calls = []
    for i in range(STEPS):
        calls.append(float(torch.round(state)))
        state = concave_step(curve, state, STEPS - i - 1, k_per_step(i + 1), STEPS, Y, OFFSET)
    return calls


def main(out: str = "docs/figures/curves.png") -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    steps = range(1, STEPS + 1)
    left.plot(steps, trajectory("bin", lambda i: 0.0), color="grey", label="linear (background, dm)")
    for curve, colour in [("bin", "tab:red"), ("lin", "tab:blue"), ("exp", "tab:green")]:
        left.plot(steps, trajectory(curve, lambda i: 0.5), color=colour, label=f"{curve}, k=0.5 (items)")
    left.set(title="Curves from the start", xlabel="step", ylabel="timestep the model sees")
    left.legend(fontsize=8)
    right.plot(steps, trajectory("bin", lambda i: 0.0), color="grey", label="linear")
    right.plot(steps, trajectory("bin", lambda i: 0.7), color="tab:red", label="bin, k=0.7")
    right.plot(steps, trajectory("bin", lambda i: 0.7 if i >= 15 else 0.0), "--", color="black",
               label="background until step 15, then item")
    right.set(title="A pixel joins an item mid-way (translated curve)", xlabel="step")
    right.legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
