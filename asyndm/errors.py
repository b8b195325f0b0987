"""Errors about user input. Each message names the bad input and the fix; the CLI prints it
without a traceback and exits with status 2, before any expensive work where possible. ``--debug``
(or ``ASYNDM_DEBUG=1``) shows the traceback instead."""

from __future__ import annotations

import os
import sys
from typing import Callable

DEBUG_FLAG = "--debug"
DEBUG_VARIABLE = "ASYNDM_DEBUG"


class AsyndmError(ValueError):
    """Base class: bad input, not a bug."""


class ConfigError(AsyndmError):
    """A setting that cannot be used."""


class PromptError(AsyndmError):
    """A prompt file or prompt override that cannot be used."""


class ModelError(AsyndmError):
    """A model that cannot be had; the message says which path or id to provide instead."""


class RunFolderError(AsyndmError):
    """A run folder that cannot be written (a full disk, a read-only one): what to do, in one line."""


def debugging() -> bool:
    """Whether the user asked for tracebacks (ASYNDM_DEBUG set to anything but empty or 0)."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def take_debug_flag(argv: list[str]) -> list[str]:
    """``argv`` without ``--debug``; where it was there, ASYNDM_DEBUG=1 (for this process and its children)."""
    if DEBUG_FLAG in argv:
        os.environ[DEBUG_VARIABLE] = "1"
    return [arg for arg in argv if arg != DEBUG_FLAG]


def exit_status(prog: str, body: Callable[[], int], catch: tuple[type[BaseException], ...] = (AsyndmError,)) -> int:
    """A console script's body, run: its status, or where it raises an error of ``catch`` (bad input:
    a missing or damaged file, a bad value) that error as one line, ``<prog>: error: ...``, and status 2;
    under ``--debug`` / ASYNDM_DEBUG=1 the error propagates with its traceback."""
    try:
        return body()
    except catch as error:
        if debugging():
            raise
        print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
        return 2
