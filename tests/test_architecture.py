"""The layout the code promises (docs/architecture.md): no import cycle, dependencies pointing one way.

Every ``import`` in ``nowcast/`` and ``service/`` is read with ``ast`` (those inside
functions too, since a lazy import is still a dependency), and checked against the layers
below: a module may import its own layer and the ones under it, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("nowcast", "service")

# Lowest first. A module belongs to the layer of the longest prefix that matches its name.
LAYERS: list[tuple[str, ...]] = [
    ("nowcast.errors", "nowcast.paths", "nowcast.config", "nowcast.quiet", "nowcast.files"),
    ("nowcast.sequence", "nowcast.transforms", "nowcast.motion", "nowcast.ensemble", "nowcast.products",
     "nowcast.io.safety"),
    ("nowcast.io", "nowcast.synthetic", "nowcast.feed"),
    ("nowcast.artifacts", "nowcast.forecasters", "nowcast.gan"),
    ("nowcast.verification", "nowcast.bootstrap", "nowcast.plots", "nowcast.render", "nowcast.report"),
    ("nowcast.evaluate", "nowcast.demo", "nowcast.gan.train", "nowcast.gan.export", "nowcast.watch",
     "nowcast.spread_gain", "nowcast.rate_map", "nowcast.neighbourhood_fit", "nowcast.retrain"),
    ("nowcast.cli", "nowcast"),
    ("service.core",),
    ("service.inference", "service.feed"),
    ("service.schemas", "service.nested", "service.codec", "service.frames"),
    ("service.api",),
    ("service.main",),
    ("service",),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def layer_of(module: str) -> int:
    matches = [(len(prefix), index) for index, prefixes in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and to docs/architecture.md")
    return max(matches)[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_there_is_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_library_never_imports_the_service() -> None:
    offenders = {m: sorted(t for t in targets if t.startswith("service"))
                 for m, targets in import_graph().items() if m.startswith("nowcast")}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_dependencies_point_down_the_layers() -> None:
    upward = [f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
              for module, targets in import_graph().items() for target in targets
              if layer_of(target) > layer_of(module)]
    assert upward == []


def test_the_checks_see_a_cycle_and_an_upward_import() -> None:
    """The checks themselves can fail."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("nowcast.cli") > layer_of("nowcast.forecasters.base")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("elsewhere.module")
