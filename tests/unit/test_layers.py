"""The house's layers, checked by import-linter (contracts in pyproject.toml), import cycles and module size."""

import os
import shutil
import subprocess
import sys

import grimp

from tests.conftest import REPO

MAX_LINES = 400
PACKAGES = ("backend", "ilastik_desktop", "viewer")


def test_import_contracts_are_kept():
    lint = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
    result = subprocess.run([lint, "--config", os.path.join(REPO, "pyproject.toml")], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "7 kept, 0 broken" in result.stdout


def strongly_connected(nodes, edges) -> list[set[str]]:
    """The groups of nodes that import each other, directly or through others (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        work = [(node, iter(sorted(edges(node))))]
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        while work:
            current, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[current])
                if low[current] == index[current]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == current:
                            break
                    groups.append(group)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges(child)))))
            elif child in on_stack:
                low[current] = min(low[current], index[child])

    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return [group for group in groups if len(group) > 1]


def test_no_import_cycles_between_modules_or_packages():
    graph = grimp.build_graph(*PACKAGES)
    modules = graph.modules
    cycles = strongly_connected(modules, graph.find_modules_directly_imported_by)
    assert cycles == [], f"modules importing each other: {cycles}"
    packages = {m for m in modules if graph.find_children(m)}
    for package in sorted(packages):  # among the children of each package, each child with all below it
        children = graph.find_children(package)

        def edges(child, children=children):
            below = {child} | graph.find_descendants(child) if child in packages else {child}
            targets = set().union(*(graph.find_modules_directly_imported_by(m) for m in below))
            return {c for c in children if c != child and targets & ({c} | graph.find_descendants(c)
                                                                     if c in packages else {c})}

        cycles = strongly_connected(children, edges)
        assert cycles == [], f"in {package}, these import each other: {cycles}"


def test_no_module_is_over_400_lines():
    long = []
    for top in PACKAGES:
        for folder, _, names in os.walk(os.path.join(REPO, top)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path) as f:
                        count = sum(1 for _ in f)
                    if count > MAX_LINES:
                        long.append(f"{os.path.relpath(path, REPO)}: {count}")
    assert long == []
