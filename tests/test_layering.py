"""Dependencies point down: the import graph of the package, read from source."""

from __future__ import annotations

import ast
from pathlib import Path

import operator_server
from operator_server.engine.faces import Face

PACKAGE = Path(operator_server.__file__).parent


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def imports_under(folder: str) -> dict[str, set[str]]:
    return {
        str(path.relative_to(PACKAGE)): imports_of(path)
        for path in (PACKAGE / folder).rglob("*.py")
    }


def offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, names in imports_under(folder).items()
        for name in sorted(names)
        if name.startswith(forbidden)
    ]


def test_http_never_imports_operators() -> None:
    assert offenders("http", ("operator_server.operators",)) == []


def test_operators_never_import_http() -> None:
    assert offenders("operators", ("operator_server.http",)) == []


def test_engine_knows_neither_http_nor_operators() -> None:
    assert offenders("engine", ("operator_server.http", "operator_server.operators")) == []


def test_app_keys_depend_on_neither_side() -> None:
    names = imports_of(PACKAGE / "appkeys.py")
    assert not [
        n for n in names if n.startswith(("operator_server.http", "operator_server.operators"))
    ]


def test_the_shared_wire_layer_depends_on_neither_side() -> None:
    assert offenders("wire", ("operator_server.http", "operator_server.operators")) == []


def test_face_names_are_spelled_once() -> None:
    """Outside ``faces.py`` no module spells the three face names as string literals."""
    spelled: list[str] = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "faces.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in {str(f) for f in Face}:
                spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert spelled == []
