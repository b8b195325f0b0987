"""The packages import one way (docs/architecture.md, "Layers").

Every import statement of asyndm and evaluation, at the top of a file or inside a function, is an edge
of the import graph; the test fails on a cycle, and on an import from a lower layer into a higher one:

    foundation     errors, paths, plugins, devices, run_folder, the toy worlds' definitions
    configuration  settings, curve_shapes, variants, options, sources, config, overrides, prompts, tokens, plan,
                   dry_run, sweep_plan, resume, sweep, history: no torch (tests/test_cheap_commands.py)
    models         asyndm.offline: the tiny models the project builds
    sampler        everything else in asyndm: curves, steps, schedules, guidance, backends, baselines,
                   the sampler and its pipeline
    evaluation     the evaluation package: reads run folders through asyndm.run_folder, never the sampler
    orchestration  run, shard, cli, the package's own namespace: sampling, then evaluation

A layer imports its own and lower layers; evaluation and the sampler stand side by side and never
import each other.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("asyndm", "evaluation")

FOUNDATION = {"asyndm.errors", "asyndm.paths", "asyndm.plugins", "asyndm.devices", "asyndm.run_folder",
              "asyndm.shapes_world", "asyndm.context_world"}
CONFIGURATION = {"asyndm.settings", "asyndm.curve_shapes", "asyndm.variants", "asyndm.sources", "asyndm.config", "asyndm.overrides",
                 "asyndm.prompts", "asyndm.tokens", "asyndm.plan", "asyndm.dry_run", "asyndm.sweep_plan", "asyndm.sweep", "asyndm.history", "asyndm.resume",
                 "asyndm.presets", "asyndm.call_checks"}
ORCHESTRATION = {"asyndm", "asyndm.__main__", "asyndm.run", "asyndm.shard", "asyndm.cli"}
RANK = {"foundation": 0, "configuration": 1, "models": 2, "sampler": 3, "evaluation": 3, "orchestration": 4}


def layer(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    if module in CONFIGURATION or module.startswith("asyndm.options"):
        return "configuration"
    if module.startswith("asyndm.offline"):
        return "models"
    if module in ORCHESTRATION:
        return "orchestration"
    return "evaluation" if module.startswith("evaluation") else "sampler"


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # ``from package import module`` depends on the module; ``from module import name`` on the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports(name, path, set(modules())) for name, path in modules().items()}


def _allowed(source: str, target: str) -> bool:
    a, b = layer(source), layer(target)
    if {a, b} == {"sampler", "evaluation"}:
        return False
    return RANK[b] <= RANK[a]


def test_every_module_has_a_layer_and_the_graph_is_not_empty():
    assert len(GRAPH) > 60 and sum(map(len, GRAPH.values())) > 150
    assert layer("asyndm.sampler") == "sampler" and layer("evaluation.io") == "evaluation"


@pytest.mark.parametrize("source", sorted(GRAPH))
def test_no_upward_or_sideways_import(source):
    wrong = sorted(t for t in GRAPH[source] if not _allowed(source, t))
    assert not wrong, f"{source} ({layer(source)}) imports {[f'{t} ({layer(t)})' for t in wrong]}"


def test_no_import_cycle():
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)


def test_the_check_sees_an_upward_import_and_a_cycle():
    """The rules above can fail: an import of the sampler from the configuration, and from evaluation."""
    assert not _allowed("asyndm.config", "asyndm.sampler")
    assert not _allowed("evaluation.io", "asyndm.curves")
    assert not _allowed("asyndm.sampler", "evaluation.pipeline")
    assert _allowed("asyndm.run", "evaluation.pipeline") and _allowed("evaluation.io", "asyndm.run_folder")
