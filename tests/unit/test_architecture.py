"""The shape of the code (docs/architecture.md): rooms without import cycles, drivers that never import the agent,
and files and functions a reader can hold in their head."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "drivers")
#: Simulators that model a vendor's firmware, command by command: long because the firmware is.
FIRMWARE_MODELS = {"drivers/sim/rak3172.py", "drivers/sim/es920lr.py"}
FILE_MAX_LINES = 600
FUNCTION_MAX_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports_at_load(tree: ast.Module, known: dict[str, Path]) -> set[str]:
    """Modules of ours a module imports when it is loaded (top level; imports inside functions and
    ``if TYPE_CHECKING:`` blocks run later or never, which is how a plugin registry stays cycle-free)."""
    found: set[str] = set()
    statements: list[ast.stmt] = []
    for node in tree.body:
        statements.extend(node.body if isinstance(node, ast.Try) else [node])
    for node in statements:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
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
    return found


def _graph() -> dict[str, set[str]]:
    return {name: _imports_at_load(ast.parse(path.read_text(encoding="utf-8")), MODULES) - {name}
            for name, path in MODULES.items()}


def test_the_walk_sees_the_rooms() -> None:
    # Guards the walk: with nothing found, the checks below would pass vacuously.
    for room in ("agent.gateway.core", "agent.tools.doctor", "agent.config.loader", "agent.rules.engine",
                 "agent.bridge.bridge", "drivers.registry", "drivers.all", "drivers.codec.frame"):
        assert room in MODULES, room
    assert "drivers.registry" in _graph()["drivers.rak3172"]


def test_no_module_imports_itself_back_when_loaded() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_drivers_never_import_the_agent() -> None:
    # Anywhere in the module, deferred imports included: drivers are the lower layer (docs/architecture.md).
    offenders = []
    for name, path in MODULES.items():
        if not name.startswith("drivers"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{name}:{node.lineno} {m}" for m in modules if m == "agent" or m.startswith("agent.")]
    assert offenders == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_files_and_functions_stay_readable(name: str) -> None:
    path = MODULES[name]
    relative = str(path.relative_to(ROOT))
    if relative in FIRMWARE_MODELS:
        pytest.skip("models a vendor's firmware")
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= FILE_MAX_LINES, f"{relative}: {text.count(chr(10))} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > FUNCTION_MAX_LINES]
    assert long == [], f"{relative}: {long}"


def _gateway_private_uses(tree: ast.AST) -> list[str]:
    """``gw._x`` where ``gw`` is bound to ``Gateway(...)`` in the same function, or is a parameter (a fixture)
    named ``gw`` or ``gateway``: what a test may not touch, so that the core can change inside."""
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        names = {a.arg for a in fn.args.args if a.arg in ("gw", "gateway")}
        for node in ast.walk(fn):
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "id", getattr(node.value.func, "attr", None)) == "Gateway"):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        found += [f"{fn.name}:{node.lineno} {node.value.id}.{node.attr}" for node in ast.walk(fn)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names
                  and node.attr.startswith("_") and not node.attr.startswith("__")]
    return found


def test_no_test_touches_a_private_attribute_of_the_gateway() -> None:
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        offenders += [f"{path.relative_to(ROOT)}:{o}" for o in _gateway_private_uses(ast.parse(path.read_text("utf-8")))]
    assert offenders == []
    # The finder finds one.
    assert _gateway_private_uses(ast.parse("def t():\n    gw = Gateway(c)\n    gw._step(0)\n")) == ["t:3 gw._step"]
    assert _gateway_private_uses(ast.parse("def t(gw):\n    gw._session = 1\n")) == ["t:2 gw._session"]
