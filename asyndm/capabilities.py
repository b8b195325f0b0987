"""Which model families can sample which variants: what a guidance rule needs of its backend, refused
before any weights load (docs/baselines.md, "Which families run which baselines").

A ``Variant`` declares the backend capabilities its rule needs (``needs``, asyndm/variants.py; a
composed ``schedule+rule`` needs what its rule needs). A backend class offers a capability when it
overrides the base ``Backend`` method of that name (``attention_probabilities``,
``blurred_self_attention``, ``latent_gradients``), or names it in its ``capabilities`` class
attribute (``renoised_step``, or a plugin's own capability); ``classifier_free_guidance`` is
offered unless the class names it in ``lacking`` (FLUX.1, which embeds the guidance scale). Both sides are declarations read off
classes, so a plugin variant or backend takes part without an edit here. No torch at import: the
checks take the backend class, which the callers have loaded (asyndm/run.py before the weights,
asyndm/pipeline.py before sampling).
"""

from __future__ import annotations

from collections.abc import Iterable

from . import plugins
from .errors import ConfigError
from .variants import FAMILY_GUIDANCE, VARIANTS, get_variant

#: the capabilities the built-in rules need, and what each is (docs/baselines.md)
CAPABILITIES = {
    "classifier_free_guidance": "model calls without an embedded guidance scale, so that the rule combines "
                                "the conditional and unconditional passes itself (every baseline)",
    "attention_probabilities": "recorded attention probabilities (S-CFG, Attend-and-Excite)",
    "blurred_self_attention": "blurred self-attention queries (SEG)",
    "latent_gradients": "gradients through the model to the latents (Attend-and-Excite)",
    "renoised_step": "a DDIM step that re-noises along a separate output (CFG++)",
}
#: what every backend offers unless it names the capability in its ``lacking`` class attribute
OFFERED_BY_DEFAULT = ("classifier_free_guidance",)


def offers(backend_cls) -> frozenset[str]:
    """The capabilities ``backend_cls`` offers: those offered by default, those named in the
    ``capabilities`` attribute of the class or any of its bases, and every method the base Backend
    defines as a refusing stub that the class overrides; less those its ``lacking`` attribute names."""
    mro = getattr(backend_cls, "__mro__", (backend_cls,))
    declared = {name for c in mro for name in (vars(c).get("capabilities") or ())}
    base = _base(backend_cls)
    overridden = {name for name in CAPABILITIES
                  if base is not None and callable(getattr(base, name, None))
                  and getattr(backend_cls, name, None) is not getattr(base, name)}
    lacking = set(getattr(backend_cls, "lacking", ()) or ())
    return frozenset((set(OFFERED_BY_DEFAULT) | declared | overridden) - lacking)


def _base(backend_cls):
    """The class asyndm.backends.base.Backend among ``backend_cls``'s bases (None: not a Backend)."""
    return next((c for c in getattr(backend_cls, "__mro__", ()) if c.__module__ == "asyndm.backends.base"
                 and c.__name__ == "Backend"), None)


def needs(variant: str) -> tuple[str, ...]:
    """What ``variant``'s rule needs (a composed name: its rule's)."""
    return tuple(get_variant(variant).needs)


def lacks(variant: str, backend_cls) -> list[str]:
    """The capabilities ``variant`` needs that ``backend_cls`` does not offer, in the variant's order."""
    offered = offers(backend_cls)
    return [need for need in needs(variant) if need not in offered]


def families() -> dict[str, type]:
    """Family name → backend class, of every installed backend (asyndm.backends entry points)."""
    found: dict[str, type] = {}
    for name in plugins.declared(plugins.BACKENDS):
        cls = plugins.load(plugins.BACKENDS, name)
        found.setdefault(getattr(cls, "family", name), cls)
    return dict(sorted(found.items()))


def supporting(variant: str) -> list[str]:
    """The installed families that offer everything ``variant`` needs."""
    return [family for family, cls in families().items() if not lacks(variant, cls)]


def refusal(variant: str, backend_cls, where: str = "variants") -> str | None:
    """One line saying why ``backend_cls``'s family cannot sample ``variant`` and what to do; None if it can."""
    missing = lacks(variant, backend_cls)
    if not missing:
        return None
    rule = variant.split("+")[-1]
    whose = f" ({rule}'s rule)" if rule != variant else ""
    family = getattr(backend_cls, "family", backend_cls.__name__)
    what = (f"capability {missing[0]}" if len(missing) == 1
            else f"capabilities {', '.join(missing[:-1])} and {missing[-1]}")
    it = "it" if len(missing) == 1 else "them"
    others = supporting(variant)
    instead = (f", or sample it with a model of a family that has {it} ({', '.join(others)})" if others
               else f"; no installed family has {it}")
    return (f"variant '{variant}'{whose} needs the backend {what}, which the {family} family lacks: "
            f"drop '{variant}' from {where}{instead}")


def check_variants(variants: Iterable[str], backend_cls, where: str = "variants") -> None:
    """Raise ConfigError (one line) for the first of ``variants`` that ``backend_cls`` cannot sample."""
    for variant in variants:
        problem = refusal(variant, backend_cls, where)
        if problem:
            raise ConfigError(problem)


def table(variants: Iterable[str] | None = None) -> str:
    """A markdown table of ``variants`` (default: every registered variant with a rule of its own, the
    baselines) and what each needs, one column per installed family: ✓ where the family samples it."""
    names = list(variants) if variants is not None else [v for v in VARIANTS if VARIANTS[v].rule != FAMILY_GUIDANCE]
    found = families()
    lines = ["| variant | needs | " + " | ".join(found) + " |", "|---|---|" + "---|" * len(found)]
    for name in names:
        marks = ["✓" if not lacks(name, cls) else "–" for cls in found.values()]
        lines.append(f"| `{name}` | {', '.join(f'`{n}`' for n in needs(name)) or '—'} | " + " | ".join(marks) + " |")
    return "\n".join(lines)
