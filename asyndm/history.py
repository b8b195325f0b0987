"""history.jsonl: one line per invocation of a run folder, so a folder says how it was made.

Each invocation appends a ``start`` line (time, command line, package versions, the project's git
commit when it runs from a checkout, device, host) and an ``end`` line (completed, or failed with
the error). Lines are appended and flushed to disk: an interrupted run keeps its ``start`` line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Iterator

from .paths import PROJECT_ROOT

HISTORY_FILE = "history.jsonl"
PACKAGES = ("asyndm", "torch", "diffusers", "transformers", "hydra-core", "open_clip_torch", "wandb")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The checkout's commit (with '+dirty' for uncommitted changes); None outside a git checkout."""
    if not (PROJECT_ROOT / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def append(run_dir: Path, record: dict) -> None:
    path = Path(run_dir) / HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **record}, default=str)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


@contextmanager
def invocation(run_dir: Path, device: str) -> Iterator[None]:
    """Append this invocation's start and end to the run folder's history."""
    start = time.monotonic()
    append(run_dir, {"event": "start", "argv": sys.argv, "versions": package_versions(), "git_commit": git_commit(),
                     "device": device, "host": socket.gethostname(), "pid": os.getpid()})
    try:
        yield
    except BaseException as err:
        append(run_dir, {"event": "end", "status": "failed", "error": f"{type(err).__name__}: {err}",
                         "seconds": round(time.monotonic() - start, 1)})
        raise
    append(run_dir, {"event": "end", "status": "completed", "seconds": round(time.monotonic() - start, 1)})
