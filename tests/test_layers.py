"""The house (mosaics_lab/__init__.py): every layer imports only from the layers below it, at module
level and inside functions alike."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mosaics_lab"

# Bottom to top; a layer may import from any layer before it (and from the package's shared
# modules: constants, envcheck, the package root).
LAYERS = ["config", "ops", "models", "data", "training", "evaluation", "analysis", "bench", "sweeps", "cli"]
SHARED = {"constants", "envcheck", ""}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "mosaics_lab"]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_imports_upward(path):
    own = layer_of(module_name(path))
    if own in SHARED:
        allowed = {"config", *SHARED} if own == "" else SHARED  # the root and shared modules stay bare
    else:
        allowed = {*LAYERS[: LAYERS.index(own) + 1], *SHARED}
    upward = [f"line {line}: {name}" for line, name in imports_of(path) if layer_of(name) not in allowed]
    assert not upward, f"{module_name(path)} ({own or 'root'}) imports from above itself: {upward}"


def test_every_subpackage_and_module_is_a_known_layer():
    # A new top-level package or module must take its place in LAYERS (or SHARED) first.
    names = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in SOURCES}
    assert names - {"__init__"} <= set(LAYERS) | SHARED, names - set(LAYERS) - SHARED
