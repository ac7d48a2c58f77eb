"""Import contracts (docs/ARCHITECTURE.md): imports flow one way, from the entry points down to the core.

Layers, top to bottom: the entry points (``fedsim.cli``, ``engine``, ``plugins``, ``validation``,
``deploy``, ``experiments``) may import anything; the privacy plug-ins (``fedsim.privacy``) may import
the algorithm plug-ins and the core; strategies and clients import the core and never each other
(what both sides share lives in ``fedsim.protocols``); the core (every other ``fedsim`` module)
imports only the core. Imports inside functions count: none may dodge a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fedsim", "strategies", "clients")
ENTRY_POINTS = (
    "fedsim.cli",
    "fedsim.__main__",
    "fedsim.engine",
    "fedsim.plugins",
    "fedsim.validation",
    "fedsim.deploy",
    "fedsim.experiments",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + int(is_package)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names += [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in the file)."""
    files = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        targets = {resolve(n) for n in imported_names(ast.parse(path.read_text()), module, path.name == "__init__.py")}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def layer(module: str) -> int:
    """3 entry points, 2 privacy plug-ins, 1 strategies and clients, 0 core."""
    if any(module == e or module.startswith(e + ".") for e in ENTRY_POINTS):
        return 3
    if module.startswith("fedsim.privacy"):
        return 2
    if module.split(".")[0] in ("strategies", "clients"):
        return 1
    return 0


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports against the layering: upwards, or between strategies and clients."""
    found = []
    for module, targets in graph.items():
        for target in sorted(targets):
            side, other = module.split(".")[0], target.split(".")[0]
            if layer(target) > layer(module) or (layer(module) == layer(target) == 1 and side != other):
                found.append(f"{module} imports {target}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_imports_flow_down_the_layers():
    assert violations(import_graph()) == []


def test_the_checks_fail_on_a_reintroduced_cycle_and_an_upward_import():
    graph = import_graph()
    graph["fedsim.hooks"] = graph["fedsim.hooks"] | {"fedsim.privacy.attacks"}  # the circle issue 23 removed
    assert any({"clients.base", "fedsim.hooks", "fedsim.privacy.attacks"} <= set(c) for c in cycles(graph))
    assert "fedsim.hooks imports fedsim.privacy.attacks" in violations(graph)
    graph = import_graph()
    graph["strategies.fedfed"] = graph["strategies.fedfed"] | {"clients.fedfed"}
    assert violations(graph) == ["strategies.fedfed imports clients.fedfed"]


def test_the_server_side_runs_without_client_modules():
    """A deployment's server needs no client code: no strategy reaches ``clients`` through its imports."""
    graph = import_graph()
    for strategy in (m for m in graph if m.startswith("strategies.")):
        seen, todo = set(), [strategy]
        while todo:
            for target in graph.get(todo.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        assert not any(m.split(".")[0] == "clients" for m in seen), strategy


RECORD_ACCESSORS = {"arrays_of", "config_of", "metrics_of"}


def bare_record_keys(source: str) -> list[str]:
    """Record keys written as string literals: the names of a ``RecordDict``'s records, and a
    record taken out of a message's content by a literal (``content["arrays"]``, ``arrays_of(c, "x")``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = node.args
            if node.func.id == "RecordDict" and args and isinstance(args[0], ast.Dict):
                found += [k.value for k in args[0].keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
            if node.func.id in RECORD_ACCESSORS and len(args) > 1 and isinstance(args[1], ast.Constant):
                found.append(args[1].value)
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            target = node.value
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if name == "content":
                found.append(node.slice.value)
    return found


def test_record_keys_are_named_constants():
    """Both sides name records through fedsim.protocols, never by a literal that could drift."""
    offenders = {
        str(path.relative_to(ROOT)): keys
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if (keys := bare_record_keys(path.read_text()))
    }
    assert offenders == {}


def test_the_record_key_check_finds_literals():
    source = 'RecordDict({"arrays": a, CONFIG: c})\nx = msg.content["metrics"]\ny = arrays_of(content, "shared")'
    assert bare_record_keys(source) == ["arrays", "metrics", "shared"]
