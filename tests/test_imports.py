"""Imports run one way: no module imports one that imports it back, and no package does.

Every import counts, those inside functions too (a lazy import is still a dependency). At each
folder level the children (modules and subpackages) must form no cycle: `kernels` never imports
`realtime`, `realtime.audio` never imports `realtime.engine` back, and so on down the tree.
"""

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

import realtime

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("realtime", "kernels", "benchmarks")


def modules() -> dict[str, Path]:
    """Every module of our packages by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ours that the module `name` at `path` imports."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upward
                package = name.split(".") if is_package else name.split(".")[:-1]
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import module` imports that module; else the name is an attribute
            targets |= {f"{base}.{alias.name}" for alias in node.names} | {base}
    ours = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            ours.add(target)
    return ours


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as err:
        return err.args[1]
    return None


def test_no_module_imports_one_that_imports_it_back():
    edges = graph()
    assert cycle(edges) is None, " -> ".join(cycle(edges))


def levels() -> list[str]:
    """Every folder whose children are compared: '' (the repository's packages) and each package."""
    packages = [name for name, path in modules().items() if path.name == "__init__.py"]
    return ["", *sorted(packages)]


def child(name: str, parent: str) -> str | None:
    """The child of `parent` that holds module `name`, or None when it is not below it."""
    if parent == "":
        return name.split(".")[0]
    if not name.startswith(parent + "."):
        return None
    return parent + "." + name[len(parent) + 1 :].split(".")[0]


@pytest.mark.parametrize("parent", levels())
def test_no_package_imports_one_that_imports_it_back(parent):
    edges = graph()
    siblings: dict[str, set[str]] = {}
    for name, targets in edges.items():
        source = child(name, parent)
        if source is None:
            continue
        siblings.setdefault(source, set())
        for target in targets:
            other = child(target, parent)
            if other is not None and other != source:
                siblings[source].add(other)
    found = cycle(siblings)
    assert found is None, f"inside {parent or 'the repository'}: " + " -> ".join(found)


def test_the_walk_sees_imports():
    """The checks above would pass on an empty graph: the walk must see known imports."""
    edges = graph()
    assert "realtime.model.tokens" in edges["realtime.model.config"]
    assert "kernels" in edges["realtime.decoding.runtime"]  # `from kernels import ...`
    assert "realtime.decoding.gpu.step" in edges["realtime.decoding.gpu.decoder"]
    assert "realtime.server" in edges["realtime.cli"]  # imported inside a function


def test_the_api_loads_on_first_use():
    probe = (
        "import sys, realtime; light = 'torch' not in sys.modules; "
        "from realtime import Engine, EngineOptions, SessionOptions, Runtime, Request, "
        "DecodingOptions, ServerOptions, serve; "
        "from realtime.engine.engine import Engine as E; print(light, Engine is E)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["True", "True"], out.stderr
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        realtime.Nothing  # noqa: B018
