"""The package's parts import downward only: a part uses the ones below it, never one above or beside
it, so each can be read (and tested) with only what is below it in mind."""

import ast
from pathlib import Path

import sasa_lightning

# Lowest first; the parts of one row do not import each other.
LAYERS = (
    ("errors", "atomic", "compat"),
    ("nn", "data", "distributed"),
    ("models",),
    ("checkpoint",),
    ("tasks",),
    ("cli",),
)
ROOT = Path(sasa_lightning.__file__).parent


def part_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[str]:
    """The package's parts a file imports, relative or absolute, at its top or inside functions."""
    package = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = [*package[: len(package) - node.level + 1], *(node.module.split(".") if node.module else [])]
            names = [target[1]] if len(target) > 1 else [alias.name for alias in node.names]
            parts.update(names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sasa_lightning."):
            parts.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            parts.update(a.name.split(".")[1] for a in node.names if a.name.startswith("sasa_lightning."))
    return parts


def test_every_part_is_in_a_layer():
    parts = {part_of(path) for path in ROOT.rglob("*.py")} - {"__init__"}
    assert parts == {part for layer in LAYERS for part in layer}


def test_imports_go_downward_only():
    level = {part: index for index, layer in enumerate(LAYERS) for part in layer}
    upward = sorted(f"{path.relative_to(ROOT.parent)} imports {target}"
                    for path in ROOT.rglob("*.py") if path.name != "__init__.py" or path.parent != ROOT
                    for target in imported_parts(path) if target in level and target != part_of(path)
                    and level[target] >= level[part_of(path)])
    assert upward == []


def test_the_reading_sees_relative_absolute_and_nested_imports():
    assert {"errors", "models", "distributed"} <= imported_parts(ROOT / "checkpoint.py")  # distributed: in a function
    assert "checkpoint" in imported_parts(ROOT / "tasks" / "detection.py")
