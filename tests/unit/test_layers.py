"""The package's shape: no import cycle, and PostgreSQL's server binaries run only in `pg/`.

Both read the source with `ast` (nothing is imported or run). Every import counts: at
module level, inside functions (a lazy import still makes the two modules depend on
each other), and under `if TYPE_CHECKING:` (a type-only cycle is still a cycle of
layers). Importing `a.b.c` also runs the `a.b` package's `__init__`, so that is an edge
too, unless the importer lives inside that package (it is then already being loaded).
The one import by name that `ast` cannot see, the storage backends registered by URL
scheme (`chainlens_ops.storage.BACKENDS`, imported on first use), is read from that
registry and counted as an edge of `chainlens_ops.storage`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "chainlens_ops"
SERVER_BINARIES = ("initdb", "pg_ctl", "pg_waldump")
# Modules outside pg/ that may start processes, and what they start.
SUBPROCESS_ALLOWED = {
    "chainlens_ops.daemon.runner": "the daemon's job: chainlens-ops itself",
}


def module_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_names(module: str, path: Path) -> Iterator[str]:
    """Every module name `module` imports, anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names)


def registered_imports() -> dict[str, set[str]]:
    """Modules imported by a name built at run time: the registered storage backends."""
    from chainlens_ops.storage import BACKENDS

    return {
        "chainlens_ops.storage": {f"chainlens_ops.storage.{b.module}" for b in BACKENDS.values()}
    }


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    graph: dict[str, set[str]] = {}
    registered = registered_imports()
    for module, path in modules.items():
        edges: set[str] = set()
        for name in [*imported_names(module, path), *registered.get(module, ())]:
            if name not in modules:
                continue  # a third-party module, or `from pkg import function`
            parts = name.split(".")
            for depth in range(2, len(parts) + 1):  # the packages on the way run too
                target = ".".join(parts[:depth])
                inside = module == target or module.startswith(target + ".")
                if target in modules and not inside:
                    edges.add(target)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 80 and graph["chainlens_ops.repository"]  # the walk saw the package
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    """The check above can fail: a loop through three modules, and one through a lazy
    import from a package's __init__ to its own backend, are both reported."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"p": {"p.x"}, "p.x": {"p.y"}, "p.y": {"p"}}) == [["p", "p.x", "p.y"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_lazy_imports_count_as_edges() -> None:
    graph = import_graph()
    # chainlens_ops.storage imports its backends by their registered names, on first use
    assert "chainlens_ops.storage.local" in graph["chainlens_ops.storage"]
    assert "chainlens_ops.storage.s3" in graph["chainlens_ops.storage"]
    # the repository imports its codec's Sealer inside a method
    assert "chainlens_ops.repository.crypto" in graph["chainlens_ops.repository"]
    # importing pg.walnames runs the pg package's __init__ too
    assert "chainlens_ops.pg" in graph["chainlens_ops.repository"]


def string_constants(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def names_a_server_binary(text: str) -> bool:
    """A string that is (the path of) initdb, pg_ctl or pg_waldump: an argv element or a
    `find_binary` argument. Prose that mentions them ("start it with: pg_ctl ...") is not."""
    return text.strip().rsplit("/", 1)[-1] in SERVER_BINARIES


def test_only_pg_runs_initdb_pg_ctl_and_pg_waldump() -> None:
    """No module outside chainlens_ops/pg (nor the tests' harness, nor a benchmark)
    names one of these binaries to run it: they go through pg.cluster / pg.waldump."""
    files = [p for p in PACKAGE.rglob("*.py") if "pg" not in p.relative_to(PACKAGE).parts[:1]]
    files += list((ROOT / "tests" / "integration").glob("*.py"))
    files += list((ROOT / "bench").glob("*.py"))
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in files
        for line, text in string_constants(path)
        if names_a_server_binary(text)
    ]
    assert offenders == []


def test_only_pg_and_the_daemon_open_subprocesses() -> None:
    offenders = []
    for module, path in module_files().items():
        if module.startswith("chainlens_ops.pg.") or module in SUBPROCESS_ALLOWED:
            continue
        if "subprocess" in set(imported_names(module, path)):
            offenders.append(module)
    assert offenders == []


def test_the_binary_check_can_fail() -> None:
    assert names_a_server_binary("pg_ctl")
    assert names_a_server_binary("/usr/lib/postgresql/15/bin/initdb")
    assert not names_a_server_binary("start it with: pg_ctl -D /x start")
    assert not names_a_server_binary("pg_dump")


# The repository's own packages: the only modules that may hold a raw Storage.
STORAGE_OWNERS = ("chainlens_ops.repository", "chainlens_ops.storage")
RAW_DOORS = ("storage", "backend")  # Repository.storage (the codec), Repository.backend
PROTOCOL_MODULES = ("chainlens_ops.storage", "chainlens_ops.storage.protocol")


def raw_storage_uses(path: Path) -> Iterator[tuple[int, str]]:
    """Where `path` reaches past the typed stores: an attribute `storage` or `backend`
    read on anything (`repo.storage`, `self.backend`), or the Storage protocol imported
    (the error types and ObjectInfo from chainlens_ops.storage are fine)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in RAW_DOORS:
            yield node.lineno, f".{node.attr}"
        elif isinstance(node, ast.ImportFrom) and node.module in PROTOCOL_MODULES:
            for alias in node.names:
                if alias.name == "Storage":
                    yield node.lineno, f"from {node.module} import Storage"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "chainlens_ops.storage.protocol":
                    yield node.lineno, "import chainlens_ops.storage.protocol"


def test_operations_code_reaches_the_repository_only_through_its_stores() -> None:
    """Outside repository/ and storage/, every stored byte goes through a typed store
    (`repo.wal`, `.points`, `.proofs`, `.backups`, `.locks`): no module holds the
    codec door (`repo.storage`), the raw backend (`repo.backend`) or a `Storage`."""
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for module, path in sorted(module_files().items())
        if not any(module == o or module.startswith(o + ".") for o in STORAGE_OWNERS)
        for line, what in raw_storage_uses(path)
    ]
    assert offenders == []


def test_the_raw_storage_check_can_fail(tmp_path: Path) -> None:
    source = tmp_path / "offender.py"
    source.write_text(
        "from chainlens_ops.storage import NotFound, ObjectInfo\n"
        "from chainlens_ops.storage.protocol import Storage\n"
        "def f(repo):\n"
        "    repo.storage.put('x', None)\n"
        "    return repo.backend\n"
    )
    assert sorted(raw_storage_uses(source)) == [
        (2, "from chainlens_ops.storage.protocol import Storage"),
        (4, ".storage"),
        (5, ".backend"),
    ]
