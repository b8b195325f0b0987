"""The paper's baselines (and Attend-and-Excite) as guidance rules: one module each.

Each module defines a guidance rule (asyndm/guidance.py's surface) that subclasses the baseline's
options (asyndm/options/, where its ``Variant`` is declared), cites the method's paper and official
code, and says how pairing (METHOD.md §7) is kept; its factory builds the rule for a run
(docs/baselines.md, "Adding a sixth baseline").
"""
