"""Evaluator registry: config name -> evaluator class, built once per process.

An evaluator turns images and their prompts into per-image metric values. The classes are
``asyndm.evaluators`` entry points (asyndm's own in its pyproject.toml, a plugin's in its own), imported
only when used; ``register`` adds one in this process (a notebook, a test). Building one loads model
weights, so `build` caches instances by their configuration: a sweep of many runs in one process
loads CLIP once.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Protocol

from PIL import Image

from asyndm import plugins


class Evaluator(Protocol):
    """What `scoring.score_run` needs from an evaluator."""

    def score(self, images: list[Image.Image], prompts: list[str]) -> dict[str, list[float]]:
        """Metric name -> one value per image, in the order of `images`."""
        ...


# Evaluator classes take their config dict as keyword arguments and have a classmethod
# `metric_names(**cfg) -> list[str]`, so that resuming can tell which metrics are missing
# without loading any weights.
_REGISTRY: dict[str, type] = {}
_INSTANCES: dict[tuple[str, str], Any] = {}

# Keys of an evaluator config that select the evaluator rather than configure it.
SELECTOR_KEY = "evaluator"


def register(name: str) -> Callable[[type], type]:
    """Class decorator: `@register("clip")` makes `eval.clip` (or `evaluator: clip`) build it."""

    def decorator(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"evaluator name {name!r} is registered twice "
                             f"({_REGISTRY[name].__qualname__} and {cls.__qualname__}); rename one")
        _REGISTRY[name] = cls
        return cls

    return decorator


def known_evaluators() -> list[str]:
    """Every evaluator name: the installed entry points and those registered in this process."""
    return sorted({*plugins.declared(plugins.EVALUATORS), *_REGISTRY})


def _evaluator_class(kind: str) -> type | None:
    if kind not in _REGISTRY and kind in plugins.declared(plugins.EVALUATORS):
        _REGISTRY[kind] = plugins.load(plugins.EVALUATORS, kind)
    return _REGISTRY.get(kind)


def resolve(name: str, cfg: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    """The evaluator class for config entry `eval.<name>` and its constructor arguments.

    The class is `cfg["evaluator"]` when given (so that `eval.clip_b32: {evaluator: clip, ...}`
    can sit beside `eval.clip`), else `name` itself.
    """
    kwargs = dict(cfg or {})
    kind = kwargs.pop(SELECTOR_KEY, None) or name
    cls = _evaluator_class(kind)
    if cls is None:
        raise KeyError(f"unknown evaluator {kind!r} (config entry eval.{name}); known evaluators: "
                       f"{', '.join(known_evaluators())}. Fix the name or add a conf/eval/<name>.yaml "
                       f"whose '{SELECTOR_KEY}' key names one of them")
    return cls, kwargs


def metric_names(name: str, cfg: dict[str, Any]) -> list[str]:
    """Names of the metrics the evaluator of `eval.<name>` writes, without building it."""
    cls, kwargs = resolve(name, cfg)
    return list(cls.metric_names(**kwargs))


def check(name: str, cfg: dict[str, Any]) -> None:
    """Fail now where the evaluator of ``eval.<name>`` cannot be had: an unknown setting, or weights that
    are neither a local file nor in the cache while offline (downloaded now when online). Runs before
    any image is sampled; evaluators without weights (a ``check_weights`` classmethod) pass."""
    cls, kwargs = resolve(name, cfg)
    try:
        bound = inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"eval.{name}: {err}; see conf/eval/{name}.yaml for its settings") from None
    bound.apply_defaults()
    checker = getattr(cls, "check_weights", None)
    if checker is not None:
        checker(**bound.arguments)


def build(name: str, cfg: dict[str, Any]) -> Evaluator:
    """The evaluator for config entry `eval.<name>`; one instance per distinct config and process."""
    cls, kwargs = resolve(name, cfg)
    key = (f"{cls.__module__}.{cls.__qualname__}", json.dumps(kwargs, sort_keys=True, default=str))
    if key not in _INSTANCES:
        _INSTANCES[key] = cls(**kwargs)
    return _INSTANCES[key]


def clear_cache() -> None:
    """Forget built evaluators (frees their weights)."""
    _INSTANCES.clear()
