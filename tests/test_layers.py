"""The package's layers (docs/architecture.md): imports point down only, no module imports
itself back through others, and the longest import chain stays short. Read from the source
(imports under `if TYPE_CHECKING:` do not run, and do not count)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "container_kernel"
# Top to bottom; a module may import from its own layer and the layers below it.
LAYERS = ("faces", "placements", "images", "launch", "settings", "runtimes", "ground")
MOST_FLOORS = 9  # the longest chain, ground to the package itself (13 before the layers)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The package's modules `name` imports when it runs."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = here.split(".")[: len(here.split(".")) - (node.level - 1)] if node.level else []
            source = ".".join([*base, node.module] if node.module else base)
            for alias in node.names:
                whole = f"{source}.{alias.name}"
                found.add(whole if whole in MODULES else source)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    # (a package's own __init__ runs first anyway: not an edge)
    return {m for m in found if m in MODULES and m != name and not name.startswith(m + ".")}


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_imports_point_down_only():
    upward = [
        f"{name} imports {other}"
        for name in MODULES
        for other in imports(name)
        if layer(name) is not None and layer(other) is not None and layer(other) < layer(name)
    ]
    assert upward == []


def test_no_import_circle():
    state: dict[str, str] = {}
    circles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for other in sorted(imports(name)):
            if state.get(other) == "open":
                circles.append(" -> ".join([*path[path.index(other) :], other]))
            elif other not in state:
                visit(other, [*path, other])
        state[name] = "done"

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_the_longest_import_chain():
    @functools.cache
    def floor(name: str) -> int:
        return 1 + max((floor(other) for other in imports(name)), default=0)

    deepest = max(MODULES, key=floor)
    chain = [deepest]
    while imports(chain[-1]):
        chain.append(max(imports(chain[-1]), key=floor))
    assert floor(deepest) <= MOST_FLOORS, " -> ".join(chain)
