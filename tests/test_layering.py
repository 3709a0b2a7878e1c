"""Dependencies point down: the import graph of the package, read from source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import operator_server
from operator_server.wire.values import Face

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


def test_notify_knows_neither_http_nor_operators() -> None:
    # It reads pending requests through a callable ``app.py`` hands it.
    assert offenders("notify", ("operator_server.http", "operator_server.operators")) == []


def test_app_keys_depend_on_neither_side() -> None:
    names = imports_of(PACKAGE / "appkeys.py")
    assert not [
        n for n in names if n.startswith(("operator_server.http", "operator_server.operators"))
    ]


def test_the_shared_wire_layer_depends_on_neither_side() -> None:
    assert offenders("wire", ("operator_server.http", "operator_server.operators")) == []


def test_face_names_are_spelled_once() -> None:
    """Outside ``wire/values.py`` no module spells the three face names as string literals."""
    spelled: list[str] = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE) == Path("wire/values.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in {str(f) for f in Face}:
                spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert spelled == []


# What a program that only imports the client library must not load: the
# daemon's own layers, its database driver, its metrics, and aiohttp's web
# server.  ``import aiohttp`` alone loads only the client half (aiohttp
# imports ``aiohttp.web`` lazily), so every ``aiohttp.web*`` module here means
# someone imported the server.
SERVER_ONLY = (
    "operator_server.engine",
    "operator_server.store",
    "operator_server.http",
    "operator_server.operators",
    "operator_server.app",
    "asyncpg",
    "prometheus_client",
    "aiohttp.web",
    # Tracing: the daemon's spans (its SDK and exporter); a client continues a
    # trace with the OpenTelemetry API alone.
    "operator_server.tracing",
    "opentelemetry.sdk",
    "opentelemetry.exporter",
)


def test_the_client_library_loads_nothing_of_the_server() -> None:
    """``import operator_server.client`` and every module under it, in a fresh
    interpreter: a user writing an operator or a worker gets the wire formats,
    not the daemon."""
    probe = (
        "import importlib, pkgutil, sys, operator_server.client as c\n"
        "for m in pkgutil.iter_modules(c.__path__, 'operator_server.client.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('\\n'.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"operator_server.client.operator", "operator_server.client.mcp"} <= set(out)
    assert [m for m in out if m.startswith(SERVER_ONLY)] == []


def module_name(path: Path) -> str:
    parts = ["operator_server", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, type-checking imports
    included (a cycle there still means neither side can be read alone)."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in paths else base)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {n for n in found if n in paths and n != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_anywhere_in_the_package() -> None:
    graph = import_graph()
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


# A module longer than this says at its top why it is one module.
MODULE_LINES = 500


def says_why_it_is_long(text: str) -> bool:
    head = text.split("\n", 60)[:60]
    docstring = ast.get_docstring(ast.parse(text)) or ""
    return any(line.startswith("# size: ") for line in head) or any(
        paragraph.startswith("Size: ") for paragraph in docstring.split("\n\n")
    )


def test_no_module_is_long_without_a_reason_at_its_top() -> None:
    long = [
        f"{path.relative_to(PACKAGE)} ({lines} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := len((text := path.read_text(encoding="utf-8")).splitlines())) > MODULE_LINES
        and not says_why_it_is_long(text)
    ]
    assert long == [], "add a '# size: <why>' line or a 'Size: <why>' docstring paragraph"


CLUSTER_ONLY = (
    "bus",
    "bury_dead_nodes",
    "task_owner",
    "issue_request",
    "finish_request_soon",
    "attach_socket",
    "detach_socket_soon",
    "pending_of",
)


def test_only_the_postgresql_store_keeps_the_cluster_contract(tmp_path: Path) -> None:
    from operator_server.cluster.store import ClusterStore, cluster_store
    from operator_server.store import MemoryStore, PostgresStore, SQLiteStore, Store

    one_process = (MemoryStore(), SQLiteStore(tmp_path / "db.sqlite"))
    for store in one_process:
        assert not isinstance(store, ClusterStore)
        assert cluster_store(store) is None
    # Not even as methods that raise: a one-process store cannot route between nodes.
    for cls in (Store, MemoryStore, SQLiteStore):
        assert [name for name in CLUSTER_ONLY if hasattr(cls, name)] == []
    shared = PostgresStore("postgresql://nowhere/none")
    assert isinstance(shared, ClusterStore)
    assert cluster_store(shared) is shared


def _chain(node: ast.expr) -> list[str]:
    """``self.cluster.bus`` -> ["self", "cluster", "bus"]."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.insert(0, node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        names.insert(0, node.id)
    return names


def cluster_message_knowledge(path: Path) -> list[str]:
    """Where ``path`` builds, sends or handles a cross-node message itself."""
    from operator_server.cluster.messages import KINDS

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = _chain(node.func.value)
            if owner[-1:] in (["bus"], ["cluster"]) and node.func.attr in ("send", "inline", "on"):
                found.append(f"line {node.lineno}: {'.'.join(owner)}.{node.func.attr}(...)")
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if {"k", "f", "b"} <= keys:
                found.append(f"line {node.lineno}: a message envelope")
        # The kinds no other layer has a word for ("answer", "events", "call"
        # and "delivered" are ordinary words elsewhere).
        elif (
            isinstance(node, ast.Constant)
            and node.value in KINDS
            and node.value
            in (
                "nodes_gone",
                "session_gone",
                "withdraw",
                "replaced",
                "deliver",
            )
        ):
            found.append(f"line {node.lineno}: the kind {node.value!r}")
    return found


def test_nothing_outside_the_cluster_package_knows_cluster_message_shapes() -> None:
    outside = {
        str(path.relative_to(PACKAGE)): cluster_message_knowledge(path)
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0] != "cluster"
    }
    assert {module: found for module, found in outside.items() if found} == {}
    # Messages are built only from their declarations: the cluster package, and
    # the PostgreSQL store whose transactions send notices as they commit.
    importers = [
        module
        for module, names in imports_under(".").items()
        if "operator_server.cluster.messages" in names
        and not module.startswith(("cluster/", "store/postgres/"))
    ]
    assert importers == []


CLUSTER_WORDS = ("relay", "cluster", "shared")


def _asks_clustered(test: ast.expr) -> bool:
    """``relay``, ``not self.relay``, ``x.shared and ...``, ``self._relay is not None``:
    a test of whether a relay, a cluster or a shared store is there."""
    if isinstance(test, ast.BoolOp):
        return any(_asks_clustered(value) for value in test.values)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return _asks_clustered(test.operand)
    if isinstance(test, ast.Compare) and all(isinstance(op, ast.Is | ast.IsNot) for op in test.ops):
        return _asks_clustered(test.left)
    name = _chain(test)[-1:]
    return any(word in name[0].lower() for word in CLUSTER_WORDS) if name else False


def branches_on_cluster(path: Path) -> list[str]:
    """Where ``path`` asks "am I clustered": an ``if``, a conditional
    expression, a ``while`` or an ``assert`` whose test is whether a relay, a
    cluster or a shared store is there."""
    return [
        f"line {node.lineno}: {ast.unparse(node.test)}"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.If | ast.IfExp | ast.While | ast.Assert)
        and _asks_clustered(node.test)
    ]


def test_sessions_and_the_directory_never_ask_whether_they_are_clustered() -> None:
    """One process or many, the session and the directory run the same code:
    what differs is the relay they were handed at start-up (``NoRelay`` or
    the cluster's), never a branch of their own."""
    found = {
        module: branches
        for module in ("operators/session.py", "operators/directory.py")
        if (branches := branches_on_cluster(PACKAGE / module))
    }
    assert found == {}
