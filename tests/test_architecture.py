"""The package's layers import one way: core <- inference <- simulate <- maps, planning <- cli.

The layering of docs/development.md: the core (``density_db/``'s own modules: configuration,
errors, database, tables, views, FITS input, sky, labels, flags, results,
runs, flag thresholds) imports no other layer; ``inference/`` never imports the
simulator; the simulator may use ``inference``'s public names (it makes the
model input the way preprocessing does); ``maps/`` and ``planning/`` sit on
both and the CLI on everything.  The check reads every import statement of
the sources, those inside functions too, so that a lazy import cannot hide a
cycle; and no module may import one that imports it back, within a layer
too.  (import-linter cannot check this layout: three of the subpackages
live outside ``density_db/`` and install into it through ``package-dir``.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

SOURCE_LAYERS = {
    "density_db": "core",
    "migrations": "core",
    "inference": "inference",
    "density_db/simulate": "simulate",
    "maps": "maps",
    "density_db/planning": "planning",
    "cli": "cli",
}
"""Source folders (relative to the repository root) and their layer; a deeper folder wins."""

RANKS = {"core": 0, "inference": 1, "simulate": 2, "maps": 3, "planning": 3, "cli": 4}
"""A module may import its own layer and those of a lower rank; maps and planning do not import each other."""


def _layer_of_file(path: Path) -> str:
    relative = path.relative_to(ROOT).as_posix()
    folders = sorted((folder for folder in SOURCE_LAYERS if relative.startswith(folder + "/")), key=len)
    return SOURCE_LAYERS[folders[-1]]


def _layer_of_module(name: str) -> str | None:
    """The layer of an imported ``density_db`` module, None for anything else."""
    parts = name.split(".")
    if parts[0] != "density_db":
        return None
    if len(parts) > 1 and parts[1] in ("inference", "simulate", "maps", "planning", "cli"):
        return parts[1]
    return "core"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _sources() -> list[Path]:
    return sorted(path for folder in SOURCE_LAYERS for path in (ROOT / folder).glob("*.py"))


def test_every_source_folder_is_assigned_a_layer() -> None:
    assert len(_sources()) > 50
    for folder in SOURCE_LAYERS:
        assert any((ROOT / folder).glob("*.py")), folder


@pytest.mark.parametrize("path", _sources(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_imports_run_one_way(path: Path) -> None:
    layer = _layer_of_file(path)
    wrong = []
    for line, name in _imports(path):
        imported = _layer_of_module(name)
        if imported is None or imported == layer:
            continue
        if RANKS[imported] >= RANKS[layer]:
            wrong.append(f"line {line}: {name} ({layer} -> {imported})")
    assert not wrong, "imports against the layers: " + "; ".join(wrong)


PACKAGES = {
    "density_db": "density_db",
    "migrations": "density_db.migrations",
    "inference": "density_db.inference",
    "maps": "density_db.maps",
    "density_db/simulate": "density_db.simulate",
    "density_db/planning": "density_db.planning",
    "cli": "density_db.cli",
}
"""Source folders and the package each installs as."""


def _module_graph() -> dict[str, set[str]]:
    """Every module and the density-db modules it imports (at the top or inside a function)."""
    modules = {
        package if path.stem == "__init__" else f"{package}.{path.stem}": path
        for folder, package in PACKAGES.items()
        for path in (ROOT / folder).glob("*.py")
    }
    graph = {}
    for name, path in modules.items():
        imported = set()
        for _line, target in _imports(path):
            while target and target not in modules:  # `from package import name` names a module or a member
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a package's own __init__
                imported.add(target)
        graph[name] = imported
    return graph


def test_no_module_imports_one_that_imports_it_back() -> None:
    # An import inside a function hides a cycle from the interpreter until both modules are half-loaded.
    graph = _module_graph()
    assert len(graph) > 50
    cycles = []

    def visit(module: str, path: list[str], done: set[str]) -> None:
        for imported in graph[module]:
            if imported in path:
                cycles.append(" -> ".join([*path[path.index(imported) :], imported]))
            elif imported not in done:
                visit(imported, [*path, imported], done)
        done.add(module)

    done: set[str] = set()
    for module in graph:
        if module not in done:
            visit(module, [module], done)
    assert not cycles, "import cycles: " + "; ".join(sorted(set(cycles)))
