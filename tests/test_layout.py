"""The house rules of the code base, checked on its source: imports run one way
(``models``, ``pacs_adapters`` → gateway kernel → stages → api, dicomweb, dashboard, cli →
``workers``), no two gateway packages import each other, every package says what it owns,
and no module grows past what a newcomer reads in one sitting."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from tests.services import ROOT

KERNEL = frozenset(
    {
        "settings",
        "settings_groups",
        "errors",
        "logs",
        "uids",
        "dimse_status",
        "yaml_files",
        "pixel_data",
        "packaged",
    }
)
EDGE = frozenset({"gateway.api", "gateway.dicomweb", "gateway.dashboard", "gateway.cli"})
LIBRARIES = frozenset({"models", "pacs_adapters"})
OURS = frozenset({"gateway", "workers", "models", "pacs_adapters", "benchmarks", "tests"})
MAX_LINES = 550
# Being split as the regroup goes on; this set only shrinks.
SPLIT_PENDING: frozenset[str] = frozenset()


def _unit(module: str) -> str:
    """The layer a module belongs to: ``kernel``, ``gateway.<stage>``, or a top package."""
    parts = module.split(".")
    if parts[0] != "gateway" or len(parts) == 1:
        return parts[0]
    return "kernel" if parts[1] in KERNEL else f"gateway.{parts[1]}"


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in ("gateway", "workers", "models", "pacs_adapters"):
        for path in sorted((ROOT / package).rglob("*.py")):
            found.append((".".join(path.relative_to(ROOT).with_suffix("").parts), path))
    return found


def _imports(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "gateway":
                names |= {f"gateway.{alias.name}" for alias in node.names}
            else:
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {name for name in names if name.split(".")[0] in OURS}


def _graph() -> dict[str, dict[str, set[str]]]:
    """unit → unit it imports → the importing modules."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for module, path in _modules():
        source = _unit(module)
        for name in _imports(path):
            target = _unit(name)
            if target != source:
                graph[source][target].add(module)
    return graph


def test_imports_run_one_way() -> None:
    graph = _graph()
    wrong = []
    for source, targets in graph.items():
        for target, importers in targets.items():
            if source in LIBRARIES and target not in LIBRARIES:
                wrong.append(f"{source} → {target}: {sorted(importers)}")
            if source == "kernel" and target not in LIBRARIES:
                wrong.append(f"kernel → {target}: {sorted(importers)}")
            if source.startswith("gateway") and target in {"workers", "benchmarks", "tests"}:
                wrong.append(f"{source} → {target}: {sorted(importers)}")
            if source.startswith("gateway.") and source not in EDGE and target in EDGE:
                wrong.append(f"stage {source} → edge {target}: {sorted(importers)}")
    assert wrong == []


def test_no_two_gateway_packages_import_each_other() -> None:
    graph = _graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = {start}, [start]
        while todo:
            for following in graph.get(todo.pop(), {}):
                if following == goal:
                    return True
                if following not in seen:
                    seen.add(following)
                    todo.append(following)
        return False

    cycles = sorted(
        f"{source} ↔ {target} (via {sorted(importers)})"
        for source, targets in graph.items()
        for target, importers in targets.items()
        if reaches(target, source)
    )
    assert cycles == []


def test_every_package_says_what_it_owns_and_lists_its_modules() -> None:
    silent = []
    for init in [*sorted((ROOT / "gateway").rglob("__init__.py")), ROOT / "workers/__init__.py"]:
        package = init.parent
        if package.name in {"migrations", "versions"}:
            continue
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        modules = [p.stem for p in package.glob("*.py") if p.stem != "__init__"]
        unlisted = [m for m in modules if m not in docstring]
        if not docstring or unlisted:
            silent.append(f"{package.relative_to(ROOT)}: missing {unlisted or 'a docstring'}")
    assert silent == []


@pytest.mark.parametrize("package", ["gateway", "workers"])
def test_modules_stay_readable(package: str) -> None:
    long = [
        f"{path.relative_to(ROOT)}: {count} lines"
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in path.parts
        and str(path.relative_to(ROOT)) not in SPLIT_PENDING
        and (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    ]
    assert long == []
