"""The paper's baselines (and Attend-and-Excite) as variants: one module each.

Each module defines a guidance rule (asyndm/guidance.py's surface), cites the method's paper and
official code, states every default, says how pairing (METHOD.md §7) is kept, and registers a
variant with ``register_variant``; conf/variant/<name>.yaml holds the same defaults for the
command line. Importing this package registers every module in it, so a new baseline is one module
here and one config file there (docs/baselines.md).
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
