"""The package's structure: no import cycle (lazy imports inside functions included), and the
layering DESIGN.md draws: the outbox knows nothing of HTTP, the HTTP side nothing of the outbox,
only drain.py (and the facade above it) joins them; low layers never import high ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "tracker_agent"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """The tracker_agent modules an import statement loads (submodules where they exist)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith(PACKAGE)]
    if node.level:
        base = module.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    if not target.startswith(PACKAGE):
        return []
    found = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return found or [target]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges: set[str] = set()
        for node in ast.walk(tree):  # function-level (lazy) imports count too
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_resolve(name, node, path.name == "__init__.py"))
        edges.discard(name)
        graph[name] = {e for e in edges if e in MODULES}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_package_has_no_import_cycle():
    graph = _graph()
    assert len(graph) > 40  # the walk found the package
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


#: (importer prefix, forbidden prefixes): what each layer must never import.
HTTP_SIDE = tuple(
    f"tracker_agent.{m}"
    for m in (
        "transport",
        "client",
        "api",
        "responses",
        "deadline",
        "http_adapter",
        "bodies",
        "testguard",
    )
)
HIGH = tuple(
    f"tracker_agent.{m}"
    for m in (
        "drain",
        "drain_group",
        "sending",
        "window",
        "landing",
        "pruning",
        "agent",
        "queueing",
        "delivery",
        "drainer_outbox",
        "undrained",
        "lifecycle",
        "durable",
        "importing",
        "scheduler",
        "cli",
        "outcomes",
    )
)
RULES = [
    ("tracker_agent.outbox", HTTP_SIDE + HIGH + ("tracker_agent.testing",)),
    (
        "tracker_agent.transport",
        ("tracker_agent.outbox", "tracker_agent.api", "tracker_agent.validation", *HIGH),
    ),
    ("tracker_agent.responses", ("tracker_agent.outbox", "tracker_agent.api", *HIGH)),
    ("tracker_agent.api", ("tracker_agent.outbox", "tracker_agent.client", *HIGH)),
    ("tracker_agent.client", ("tracker_agent.outbox", *HIGH)),
    ("tracker_agent.config", ("tracker_agent.outbox", *HTTP_SIDE, *HIGH)),
    ("tracker_agent.validation", ("tracker_agent.outbox", *HTTP_SIDE, *HIGH)),
    ("tracker_agent.policy", ("tracker_agent.outbox", *HTTP_SIDE, *HIGH)),
    ("tracker_agent.exceptions", ("tracker_agent",)),
    ("tracker_agent.constants", ("tracker_agent",)),
    ("tracker_agent.wire", ("tracker_agent",)),
]


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p.rstrip(".") + ".") for p in prefixes)


@pytest.mark.parametrize(("importer", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_low_layers_import_nothing_from_high_ones(importer, forbidden):
    graph = _graph()
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _under(module, (importer,))
        for target in targets
        if _under(target, forbidden) and not _under(target, (importer,))
    )
    assert wrong == []
