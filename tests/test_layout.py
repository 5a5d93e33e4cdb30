"""lab/'s imports point down the data's path: no package imports one above it, no two modules
import each other, and nothing in lab/ imports pytest or the plugin (README's "Layout")."""

from __future__ import annotations

import ast
import pathlib

import pytest

LAB = pathlib.Path(__file__).resolve().parent.parent / "lab"

# Bottom first. A module may import its own floor and those below it; lab's top-level modules
# (options, config, profiles, process) read everything.
FLOORS = (
    ("lab.errors", "lab.measurements"),
    ("lab.runtime",),
    ("lab.inputs",),
    ("lab.networks",),
    ("lab.finetune",),
    ("lab.report",),
)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(LAB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(LAB.rglob("*.py"))}


def _floor(module: str) -> int:
    for floor, packages in enumerate(FLOORS):
        if any(module == package or module.startswith(package + ".") for package in packages):
            return floor
    return len(FLOORS)


def _imported(module: str) -> set[str]:
    """Every name `module` imports anywhere in its file (inside functions and TYPE_CHECKING too)."""
    path = MODULES[module]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}:{node.lineno}: lab imports by absolute names"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _lab_imports(module: str) -> set[str]:
    return {name for name in _imported(module) if name in MODULES and name != module}


def test_every_subpackage_sits_on_a_floor():
    unplaced = sorted(module for module in MODULES if module.count(".") > 1 and _floor(module) == len(FLOORS))

    assert "lab.measurements" in MODULES and not unplaced


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    upward = sorted(name for name in _lab_imports(module) if _floor(name) > _floor(module))

    assert not upward, f"{module} imports {upward}, above it"


def test_no_two_modules_import_each_other():
    mutual = sorted(
        (module, other) for module in MODULES for other in _lab_imports(module)
        if module < other and module in _lab_imports(other)
    )

    assert not mutual


@pytest.mark.parametrize("module", sorted(MODULES))
def test_lab_holds_no_pytest(module):
    assert not {name for name in _imported(module) if name.split(".")[0] in ("pytest", "pytest_lab", "_pytest")}
