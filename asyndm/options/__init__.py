"""Each baseline's options and its variant, without torch: the configuration's side of a baseline.

A module here holds one baseline's options dataclass (its defaults, with what each option means)
and the ``Variant`` that names its schedule and its rule in asyndm/baselines/. The options
dataclasses are the structured configs of ``variant.<name>.*`` (asyndm/settings.py registers them),
so the CLI checks and types them before the sampler, or torch, is imported; the rule subclasses them,
so each option is defined once. Each ``VARIANT`` is an ``asyndm.variants`` entry point.
"""
