"""Errors about user input. Each message names the bad input and the fix; the CLI prints it
without a traceback and exits with status 2, before any expensive work where possible."""


class AsyndmError(ValueError):
    """Base class: bad input, not a bug."""


class ConfigError(AsyndmError):
    """A setting that cannot be used."""


class PromptError(AsyndmError):
    """A prompt file or prompt override that cannot be used."""


class ModelError(AsyndmError):
    """A model that cannot be had; the message says which path or id to provide instead."""
