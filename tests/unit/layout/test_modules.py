"""The package layout: every module imports on its own, and packages depend
on each other one way only (docs/architecture.md draws the layers)."""

from __future__ import annotations

import ast
import concurrent.futures
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import fsev

# Bottom first. A module may import from its own package and from packages
# on lower layers, never from a higher layer or a sibling on its own layer.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"bpf", "errors"}),  # the C (package data), FsevError
    frozenset({"events"}),
    frozenset({"kernel"}),
    frozenset({"linux"}),
    frozenset({"probes"}),
    frozenset({"points"}),
    frozenset({"thresholds"}),
    frozenset({"session"}),
    frozenset({"journal"}),
    frozenset({"service"}),
    frozenset({"top"}),
    frozenset({"testing"}),
    frozenset({"cli"}),
)
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
ROOT = Path(fsev.__file__).resolve().parent  # the installed package, cli/ as fsev/cli


def modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(ROOT)], "fsev."))


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "fsev" else None


def imports_of(module: str) -> set[str]:
    """Every fsev module this one imports, at any depth of its code (lazy and
    TYPE_CHECKING imports count: they are dependencies all the same)."""
    rel = module.split(".")[1:]
    path = ROOT.joinpath(*rel)
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fsev.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: cli's own modules
                base = module.split(".")[: -node.level] if not path.name == "__init__.py" else module.split(".")
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module and node.module.startswith("fsev"):
                found.add(node.module)  # `from fsev import __version__`: fsev itself, on no layer
                found |= {f"{node.module}.{a.name}" for a in node.names if not a.name.startswith("__")}
    return {m for m in found if m.startswith("fsev.")}


def test_there_are_modules_to_check():
    got = modules()
    assert len(got) > 60 and "fsev.points.registry" in got and "fsev.cli.main" in got


def test_every_package_has_a_layer():
    assert {package_of(m) for m in modules()} - {None} <= set(RANK)


def test_packages_depend_one_way_only():
    wrong = []
    for m in modules():
        own = package_of(m)
        if own is None:
            continue
        for dep in imports_of(m):
            other = package_of(dep)
            if other is None or other == own:
                continue
            if other not in RANK or RANK[other] >= RANK[own]:
                wrong.append(f"{m} imports {dep} ({own} -> {other})")
    assert not wrong, "\n".join(sorted(wrong))


def _import_alone(module: str) -> tuple[str, int, str]:
    p = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120,
                       cwd="/", env={**os.environ, "PYTHONPATH": ""})
    return module, p.returncode, (p.stderr.strip().splitlines() or [""])[-1]


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    """No module works only when another was imported first (an import cycle
    shows here as the ImportError of a partly initialised module)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(_import_alone, modules()))
    failed = [f"{m}: {err}" for m, rc, err in results if rc != 0]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("module", ["fsev.points.read_only", "fsev.thresholds.gate", "fsev.session.trace"])
def test_a_module_that_once_needed_an_import_order_imports_alone(module):
    assert _import_alone(module)[1] == 0
