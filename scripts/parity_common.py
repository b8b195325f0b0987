"""Shared parts of the parity scripts: the fixed inputs, the official-stage launcher, the comparison.

A parity script runs in two interpreters. Its `official` stage runs in a throwaway environment
with the official package and its pins (never the project's venv, never CI): it builds the
official model with random weights from a fixed seed, saves its checkpoint and scores the fixed
images and prompts with the official API. Its `port` stage runs in the project's venv: it loads
the same checkpoint through the project's evaluator and compares the scores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOLERANCE = 1e-4
SEED = 0
# Lengths around the truncation limits (ImageReward 35 tokens, CLIP 77), case, punctuation, digits, accents.
PROMPTS = [
    "a cat eating a sandwich",
    "A dog playing basketball, photo.",
    "two horses riding bicycles on the beach at sunset",
    "a monkey reading a book",
    "a red bird on a blue car",
    "the rabbit and the bear are sitting in a café with 3 cups",
    " ".join(["a very long prompt about a lion and a tiger eating a sandwich in the park"] * 8),
]


def make_images(folder: Path) -> list[Path]:
    """Fixed test images: odd sizes and aspect ratios (resize, crop, padding), grey and RGBA modes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(SEED)
    folder.mkdir(parents=True, exist_ok=True)
    specs = [((512, 512), "RGB"), ((384, 256), "RGB"), ((224, 224), "RGB"), ((60, 100), "RGB"),
             ((300, 301), "L"), ((257, 200), "RGBA"), ((64, 64), "RGB")]
    paths = []
    for index, ((width, height), mode) in enumerate(specs):
        y, x = np.mgrid[0:height, 0:width]
        smooth = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 255
        noise = rng.integers(0, 256, (height, width, 3))
        pixels = (0.6 * smooth + 0.4 * noise).astype(np.uint8)  # structure plus noise: resampling matters
        image = Image.fromarray(pixels, "RGB")
        if mode == "L":
            image = image.convert("L")
        elif mode == "RGBA":
            image = image.convert("RGBA")
            image.putalpha(Image.fromarray(rng.integers(128, 256, (height, width), dtype=np.uint8)))
        path = folder / f"{index}_{mode}_{width}x{height}.png"
        image.save(path)
        paths.append(path)
    return paths


def pairs(images: list[Path]) -> list[tuple[str, str]]:
    """(image file, prompt): every image with two prompts, every prompt used."""
    return [(str(image), PROMPTS[(index + shift) % len(PROMPTS)])
            for index, image in enumerate(images) for shift in (0, 3)]


def run_official(script: Path, python: str, workdir: Path, extra: list[str] | None = None) -> dict:
    """Run `script official --workdir W` with the throwaway environment's python; returns W/official.json."""
    command = [python, str(script), "official", "--workdir", str(workdir), *(extra or [])]
    print("official stage:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return json.loads((workdir / "official.json").read_text())


def compare(name: str, official: list[float], port: list[float], versions: dict, workdir: Path) -> dict:
    """Print and save the comparison; the result's `ok` says whether max |diff| <= TOLERANCE."""
    diffs = [abs(a - b) for a, b in zip(official, port)]
    result = {"metric": name, "pairs": len(diffs), "max_abs_diff": max(diffs), "tolerance": TOLERANCE,
              "official_range": [min(official), max(official)], "ok": max(diffs) <= TOLERANCE,
              "versions": versions, "python": sys.version.split()[0]}
    for a, b in zip(official, port):
        print(f"  official {a:+.7f}   port {b:+.7f}   |diff| {abs(a - b):.2e}")
    print(json.dumps(result, indent=2))
    (workdir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def versions(*modules: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for module in modules:
        try:
            out[module] = version(module)
        except PackageNotFoundError:
            out[module] = None
    return out


def main(description: str, default_workdir: str, official, port) -> int:
    """The two stages of a parity script: ``official`` (run by the official package's venv, writes
    its scores) and ``port`` (the default: runs that stage, scores the same images with ours, compares)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("stage", nargs="?", default="port", choices=["port", "official"])
    parser.add_argument("--workdir", type=Path, default=Path(default_workdir))
    parser.add_argument("--official-python", default="/tmp/parity-venv/bin/python")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.stage == "official":
        official(args.workdir)
        return 0
    return port(args.workdir, args.official_python)
