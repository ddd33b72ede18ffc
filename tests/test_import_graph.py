"""The project's import graph has no loop: no module imports, directly or through others, a module that imports it.

``make lint`` checks the layers of docs/DESIGN.md with import-linter (including loops between sibling packages);
this checks the module graph itself, every import counted (those inside functions too), so a loop between two
files of different packages is named by its files.
"""

from __future__ import annotations

import grimp

PACKAGES = ("service", "workers", "trainer")


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """The module sets of more than one module that all reach one another (Tarjan, iterative)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = [t for t in edges[node] if t in edges]
            if i < len(targets):
                work.append((node, i + 1))
                target = targets[i]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
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
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def test_no_module_imports_itself_back() -> None:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert len(graph.modules) > 100  # the whole project was read
    assert strongly_connected(graph) == []


def test_the_check_finds_a_loop() -> None:
    graph = grimp.ImportGraph()
    for importer, imported in (("a.x", "a.y"), ("a.y", "b.z"), ("b.z", "a.x"), ("b.z", "b.w")):
        graph.add_import(importer=importer, imported=imported)
    assert strongly_connected(graph) == [["a.x", "a.y", "b.z"]]
