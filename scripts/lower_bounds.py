"""Build a virtual environment at asyndm's dependency lower bounds (``make lower-bounds``).

Every ``name>=X`` of pyproject.toml's dependencies (and of the ``dev`` and ``cluster`` extras, which
``make venv`` installs too) is installed at exactly
``X``, so the fast tests then run against the oldest releases the bounds allow. torch and
torchvision are the exception: they stay at the versions of the main environment (the machine's own
CUDA or CPU build), since a torch wheel is a platform choice more than an API bound.

    python scripts/lower_bounds.py .venv-lower     # builds it; prints the installed versions
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import venv
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLATFORM = ("torch", "torchvision")  # kept at the main environment's versions
# Dependencies of dependencies held to the releases the oldest bounds were made with. pyparsing 3.3
# deprecates names that matplotlib before 3.10.8 calls: a DeprecationWarning (hidden outside tests),
# which the wandb logger's tests, turning UserWarnings into errors, would see as a failure.
CONTEMPORARY = ("pyparsing<3.3",)


def lower_bounds() -> dict[str, str]:
    """name → its ``>=`` bound, from pyproject.toml's dependencies and the ``dev`` and ``cluster`` extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {}
    extras = project["optional-dependencies"]
    for requirement in [*project["dependencies"], *extras["dev"], *extras["cluster"]]:
        match = re.match(r"([A-Za-z0-9_.-]+)\s*(?:\[[^]]*])?\s*>=\s*([\w.]+)", requirement)
        if not match:
            sys.exit(f"lower_bounds: {requirement!r} in pyproject.toml has no '>=' lower bound; add one")
        bounds[match.group(1).lower()] = match.group(2)
    return bounds


def main(target: str) -> None:
    folder = Path(target)
    if not (folder / "bin" / "python").is_file():
        venv.create(folder, with_pip=True)
    python = str(folder / "bin" / "python")
    bounds = lower_bounds()
    pins = [f"{name}=={metadata.version(name)}" if name in PLATFORM else f"{name}=={version}"
            for name, version in bounds.items()]
    constraints = folder / "lower-bounds.txt"
    pins += CONTEMPORARY
    constraints.write_text("\n".join(pins) + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "-c", str(constraints), *pins], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)], check=True)
    subprocess.run([python, "-m", "pip", "check"], check=True)
    installed = subprocess.run([python, "-m", "pip", "freeze"], check=True, capture_output=True, text=True).stdout
    (folder / "freeze.txt").write_text(installed)
    print("lower bounds installed:", ", ".join(pins))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".venv-lower")
