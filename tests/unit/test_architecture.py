"""The shape of the code: no import cycle anywhere in `services` and `gateway`, and the
import-linter contracts of pyproject.toml (the kernel imports no service, the platform
package nor the gateway; a service imports neither of those, nor another service).

Imports are read from the source (grimp), those inside functions as well as those at the
top: an import moved into a function to dodge a cycle leaves the cycle in place.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from collections import deque
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "gateway")


def ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_edges(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    """Module -> the modules that importing it runs.

    What its code imports, and what Python runs on the way: importing `a.b.c` runs
    `a/__init__` and `a/b/__init__` first, unless they are packages of the importer
    itself (those started before it did). So a package whose `__init__` imports its own
    submodules makes no cycle, while an `__init__` importing a module that imports
    something inside that package again does."""
    edges: dict[str, set[str]] = {m: set() for m in graph.modules}
    for importer in graph.modules:
        own = set(ancestors(importer))
        for imported in graph.find_modules_directly_imported_by(importer):
            edges[importer].add(imported)
            for package in ancestors(imported):
                if package not in own and package != importer and package in edges:
                    edges[importer].add(package)
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    found.append(sorted(component))
    return sorted(found, key=lambda c: (-len(c), c))


def shortest_cycle(edges: dict[str, set[str]], component: list[str]) -> list[str]:
    """One shortest way from the component's first module back to itself."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(edges[node] & members):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"{component} is not a cycle")


def describe(graph: grimp.ImportGraph, path: list[str]) -> list[str]:
    lines = []
    for importer, imported in zip(path, path[1:], strict=False):
        details = graph.get_import_details(importer=importer, imported=imported)
        if details:
            d = details[0]
            lines.append(f"  {importer}:{d['line_number']} {d['line_contents']}")
        else:
            lines.append(f"  {importer} imports a module of the package {imported}")
    return lines


def cycle_report(graph: grimp.ImportGraph) -> str | None:
    """None, or what fails: the first line names a cycle's modules, in import order."""
    edges = import_edges(graph)
    cycles = [c for c in strongly_connected(edges) if len(c) > 1]
    if not cycles:
        return None
    paths = [shortest_cycle(edges, c) for c in cycles]
    head = "import cycle: " + " -> ".join(paths[0])
    if len(cycles) > 1:
        head += f" (and {len(cycles) - 1} more cycle(s) below)"
    body = []
    for component, path in zip(cycles, paths, strict=True):
        body.append(f"{len(component)} modules import one another: {', '.join(component)}")
        body += describe(graph, path)
    return "\n".join([head, *body])


def test_no_import_cycle_in_services_or_gateway():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None, exclude_type_checking_imports=True)
    report = cycle_report(graph)
    assert report is None, report


def test_the_import_contracts_hold():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--no-cache",
            "--no-logo",
        ],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},  # a contract's name on one line
        capture_output=True,
        text=True,
        timeout=120,
    )
    broken = [
        line.removesuffix(" BROKEN").strip()
        for line in done.stdout.splitlines()
        if line.rstrip().endswith(" BROKEN")
    ]
    assert done.returncode == 0 and not broken, (
        f"broken import contract(s): {'; '.join(broken) or '(see below)'}\n"
        + done.stdout
        + done.stderr
    )


# "services.orders", "services/orders/..." or "gateway.app:app"; a plain "gateway" (a
# process's name in logs and metrics) loads nothing
OTHERS = re.compile(
    r"services[./](catalog|orders|leaders|settlement|platform)([.:/]|$)|gateway[.:/]"
)


def names_loaded_by_string(source: str) -> list[str]:
    """What import-linter cannot see: modules named in strings (importlib, `-A x:app`,
    Celery's `imports`), as a literal or as an f-string that starts "services."."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if OTHERS.match(node.value):
                found.append(f"{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if (
                isinstance(first, ast.Constant)
                and re.fullmatch(r"(services|gateway)[./]", str(first.value))
                and len(node.values) > 1
            ):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name.endswith(("import_module", "__import__")):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_kernel_loads_no_service_by_name():
    found = [
        f"{path.relative_to(ROOT)}:{hit}"
        for path in sorted((ROOT / "services" / "common").rglob("*.py"))
        for hit in names_loaded_by_string(path.read_text())
    ]
    assert not found, "the kernel names other code to load: " + "; ".join(found)


def test_the_string_check_sees_the_usual_ways():
    source = textwrap.dedent(
        """
        import importlib
        TASKS = [f"services.{s}.tasks" for s in SERVICES]
        APP = "services.platform.worker:celery"
        mod = importlib.import_module("x")
        DOC = "the gateway and services.common are fine to mention in prose"
        """
    )
    assert sorted(int(hit.split(":")[0]) for hit in names_loaded_by_string(source)) == [3, 4, 5]


# --- the checker itself, on packages written for the purpose --------------------------------


def _package(root: Path, name: str, modules: dict[str, str]) -> None:
    """Write the package `name` under root: {"a": source, "sub/b": source, ...}."""
    for module, source in modules.items():
        path = root / name / f"{module}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in [path.parent, *path.parent.parents]:
            if folder == root:
                break
            (folder / "__init__.py").touch()
        path.write_text(textwrap.dedent(source))


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path, monkeypatch):
    _package(
        tmp_path,
        "cyclic",
        {
            "__init__": "",
            "a": "from cyclic import b\n",
            "b": "def later():\n    from cyclic import c\n",
            "c": "import cyclic.a\n",
            "d": "from cyclic import a\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    report = cycle_report(grimp.build_graph("cyclic", cache_dir=None))
    assert report is not None
    first = report.splitlines()[0]
    assert first == "import cycle: cyclic.a -> cyclic.b -> cyclic.c -> cyclic.a", report
    assert "cyclic.b:2 from cyclic import c" in report  # the import inside a function
    assert "cyclic.d" not in report


def test_a_package_importing_its_own_modules_is_no_cycle(tmp_path, monkeypatch):
    _package(
        tmp_path,
        "tidy",
        {
            "__init__": "",
            "service/__init__": "from .core import one\nfrom .placing import two\n",
            "service/core": "def one():\n    return 1\n",
            "service/placing": "from tidy.service.core import one\n\ndef two():\n    return one()\n",
            "api": "from tidy.service import two\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cycle_report(grimp.build_graph("tidy", cache_dir=None)) is None


def test_an_init_importing_what_imports_its_package_again_is_a_cycle(tmp_path, monkeypatch):
    # importing tangled.service.core runs tangled/service/__init__ first, which imports
    # tangled.api, which imports tangled.service.core: a cycle no import line shows alone
    _package(
        tmp_path,
        "tangled",
        {
            "__init__": "",
            "service/__init__": "from tangled import api\n",
            "service/core": "X = 1\n",
            "api": "from tangled.service.core import X\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    report = cycle_report(grimp.build_graph("tangled", cache_dir=None))
    assert report is not None
    assert report.splitlines()[0] == (
        "import cycle: tangled.api -> tangled.service -> tangled.api"
    ), report
