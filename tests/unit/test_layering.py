"""Layering contracts over the source, read with ``ast`` (nothing is imported):

- a core (``zsc_<service>.core``) reaches neither grpc, nor MLflow, nor protobuf, nor zsc's runtime, nor a
  service module, however deep the chain of zsc imports: cores are pure PyTorch, usable without a server;
- the library (``zsc``) never imports a service (the server loads servicers by name, at run time);
- a service never imports another service (each one deploys alone; what two share lives in ``zsc``);
- no module imports itself through others (an import cycle), counting imports inside functions and under
  ``TYPE_CHECKING``: a deferred import hides a cycle, it does not remove it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Each folder is its import name: shared/zsc is zsc, services/<name>/zsc_<name> is that service.
ROOTS = {"zsc": REPO / "shared" / "zsc"} | {
    package.name: package for package in sorted((REPO / "services").glob("*/zsc_*"))
}
SERVICES = tuple(name for name in ROOTS if name != "zsc")
CORE_FORBIDDEN = ("grpc", "grpc_health", "grpc_reflection", "mlflow", "google.protobuf", "zsc.runtime")
# Breaks still open (issue #17 item 9). Each test fails once its break is gone too, so the list only shrinks.
KNOWN_CORE_BREAKS: dict[str, str] = {}
KNOWN_LIBRARY_BREAKS: dict[str, list[str]] = {}
KNOWN_SERVICE_BREAKS: dict[str, list[str]] = {}
KNOWN_CYCLES: list[list[str]] = []


def _is_generated(path: Path) -> bool:
    return path.stem.endswith(("_pb2", "_pb2_grpc"))


@cache
def modules() -> dict[str, Path]:
    """Every first-party module name -> its file (generated stubs included: they are import targets)."""
    found: dict[str, Path] = {}
    for package, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path) -> Iterator[str]:
    """Absolute names this module imports (``from a import b`` gives ``a.b`` when that is a module, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in modules() else base


@cache
def graph() -> dict[str, frozenset[str]]:
    return {name: frozenset(_imports(name, path)) for name, path in modules().items()}


def _first_party(target: str) -> str | None:
    """The first-party module an import name refers to (its deepest known prefix), or None for third-party."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules():
            return ".".join(parts[:n])
    return None


def _matches(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def _chain(start: str, bad: tuple[str, ...]) -> list[str] | None:
    """The shortest import chain from ``start`` to a forbidden name, through first-party modules."""
    parents: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        current = queue.pop(0)
        for target in sorted(graph()[current]):
            if _matches(target, bad):
                chain, at = [target], current
                while at is not None:
                    chain.append(at)
                    at = parents[at]
                return chain[::-1]
            module = _first_party(target)
            if module is not None and module not in parents:
                parents[module] = current
                queue.append(module)
    return None


def _cores() -> list[str]:
    return [m for m in modules() if m.startswith(SERVICES) and ".core" in m and not _is_generated(modules()[m])]


def test_the_walk_sees_the_layout() -> None:
    # guards the contracts below against passing vacuously on a moved tree
    assert {"zsc.runtime.server", "zsc.registry", "zsc_classification.core.downstream"} <= set(modules())
    assert len(_cores()) >= 20
    assert set(SERVICES) == {"zsc_synthesis", "zsc_recovery", "zsc_generative", "zsc_classification"}
    assert "zsc.errors" in graph()["zsc_generative.core.common"] | graph()["zsc.registry"]
    assert _service_of("zsc_recovery.core") == "zsc_recovery" and _service_of("zsc.registry") is None


@pytest.mark.parametrize("core", _cores())
def test_a_core_reaches_no_server_no_mlflow_no_protobuf(core: str) -> None:
    own_core = core.rpartition(".core")[0] + ".core"
    services = sorted(t for t in graph()[core] if _matches(t, SERVICES) and not _matches(t, (own_core,)))
    if core in KNOWN_CORE_BREAKS:
        assert services == [KNOWN_CORE_BREAKS[core]]
        return
    chain = _chain(core, CORE_FORBIDDEN)
    assert chain is None, " -> ".join(chain or [])
    assert not services, f"{core} imports service modules {services}"


def test_the_library_imports_no_service() -> None:
    broken = {
        name: sorted(t for t in targets if _matches(t, SERVICES))
        for name, targets in graph().items()
        if name.startswith("zsc.") or name == "zsc"
    }
    assert {k: v for k, v in broken.items() if v} == KNOWN_LIBRARY_BREAKS


def _service_of(module: str) -> str | None:
    return next((s for s in SERVICES if _matches(module, (s,))), None)


def test_a_service_imports_no_other_service() -> None:
    # each service deploys alone (its own image and process): what two services share belongs in zsc
    crossing = {
        name: sorted(t for t in targets if _service_of(t) not in (None, _service_of(name)))
        for name, targets in graph().items()
        if _service_of(name) is not None
    }
    assert {k: v for k, v in crossing.items() if v} == KNOWN_SERVICE_BREAKS


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges = {m: sorted({f for t in ts if (f := _first_party(t)) is not None and f != m}) for m, ts in graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(edges[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_no_import_cycles() -> None:
    # package __init__ files are not edges here: they import nothing of their children
    assert _cycles() == KNOWN_CYCLES


def test_the_cycle_finder_finds_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {"zsc.a": frozenset({"zsc.b"}), "zsc.b": frozenset({"zsc.c.x"}), "zsc.c": frozenset({"zsc.a"})}
    monkeypatch.setitem(globals(), "graph", lambda: fake)
    monkeypatch.setitem(globals(), "modules", lambda: dict.fromkeys(fake, REPO))
    assert _cycles() == [["zsc.a", "zsc.b", "zsc.c"]]
