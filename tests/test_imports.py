"""The import structure of DESIGN.md, checked on the source (nothing is imported).

Every module of mmtx is parsed with `ast`; every import counts, those inside functions too
(relative ones resolved; `from . import x` with x a submodule imports x). Then:
(a) no import cycle between mmtx modules;
(b) imports flow one way: layers <- models <- diffusion <- train <- experiments <- cli (a module
    imports its own layer or layers to its left); layers imports nothing else of mmtx; data,
    eval and viz never import train, experiments or cli; models never imports eval (a model
    does not judge itself: the measures sit above it). `mmtx/__init__` and `__main__` are
    exempt; a new top-level module must be given a place here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mmtx"

# DESIGN.md's one-way chain, left to right.
# The commands that use trained runs (predict: caption, zeroshot; sample) sit with the CLI.
# mmtx.io (atomic writes, the directory lock) and mmtx.keys (the option-name check) sit below
# everything and import nothing of mmtx.
CHAIN = {"io": -1, "keys": -1, "layers": 0, "models": 1, "diffusion": 2, "train": 3,
         "experiments": 4, "cli": 5, "predict": 5, "sample": 5}
SIDE = {"data", "eval", "viz"}  # used from above; never import train, experiments or cli
EXEMPT = {"", "__main__"}  # mmtx/__init__.py, mmtx/__main__.py
NEVER_FROM_SIDE = {"train", "experiments", "cli", "predict", "sample"}
NEVER = {("models", "eval")}  # (importer, imported) pairs forbidden beyond the chain's rules


def find_modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """module name -> (file, is_package) for every .py file under `root` (package `package`)."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join([package, *parts])] = (path, is_pkg)
    return mods


def _known(name: str, mods) -> str | None:
    """`name` itself if it is a module, else its longest prefix that is (an attribute import)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, is_pkg: bool, mods, package: str):
    """[(imported module of `package`, line)] for every import statement anywhere in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from base import x`: x is a submodule (that module) or a name of base (base).
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                       for a in node.names]
        else:
            continue
        for name in targets:
            if name == package or name.startswith(package + "."):
                target = _known(name, mods)
                if target is not None and target != module:
                    out.append((target, node.lineno))
    return out


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line importing it}."""
    mods = find_modules(root, package)
    graph = {}
    for name, (path, is_pkg) in mods.items():
        edges = {}
        for target, line in imports_of(name, path, is_pkg, mods, package):
            edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) per strongly connected component with more than one module."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def strongconnect(v):  # Tarjan; the graph is small, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    cycles = []
    for comp in comps:  # breadth-first from one module: a shortest way back to it
        start = min(comp)
        prev, queue = {start: None}, [start]
        for v in queue:
            if start in graph[v]:
                break
            for w in sorted(graph[v]):
                if w in comp and w not in prev:
                    prev[w] = v
                    queue.append(w)
        path = [v]
        while prev[path[-1]] is not None:
            path.append(prev[path[-1]])
        cycles.append(path[::-1] + [start])
    return cycles


def layer_of(module: str) -> str | None:
    """The DESIGN.md layer of an mmtx module ("" / "__main__" for the exempt ones)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top in EXEMPT or top in CHAIN or top in SIDE:
        return top
    return None


def direction_errors(graph: dict[str, dict[str, int]], files) -> list[str]:
    errors = []
    for module, edges in sorted(graph.items()):
        src = layer_of(module)
        where = files[module][0].relative_to(ROOT.parent)
        if src is None:
            errors.append(f"{module}: not in any layer of DESIGN.md (place it in test_imports)")
            continue
        if src in EXEMPT:
            continue
        for target, line in sorted(edges.items()):
            dst = layer_of(target)
            if dst is None or dst in EXEMPT:
                bad = dst is not None and dst != src  # importing the root package: everything
            elif src == "layers":
                bad = dst != "layers"
            elif src in SIDE:
                bad = dst in NEVER_FROM_SIDE
            elif (src, dst) in NEVER:
                bad = True
            elif dst in SIDE:
                bad = False  # chain modules above layers use data, eval and viz
            else:
                bad = CHAIN[dst] > CHAIN[src]
            if bad:
                errors.append(f"{where}:{line}: {module} ({src}) imports {target} "
                              f"({dst or 'mmtx'})")
    return errors


def test_no_import_cycles():
    graph = import_graph(ROOT, "mmtx")
    cycles = find_cycles(graph)
    lines = []
    for cycle in cycles:  # one cycle per knot; name the knot's other modules too
        others = sorted(m for m in graph if m not in cycle and m in _knot(graph, cycle[0]))
        lines.append(" -> ".join(cycle) + (f" (same knot: {', '.join(others)})" if others else ""))
    assert not cycles, "import cycles:\n" + "\n".join(lines)


def _knot(graph, start) -> set[str]:
    """The modules that both reach `start` and are reached from it."""
    def reach(edges_of):
        seen, todo = {start}, [start]
        while todo:
            for w in edges_of(todo.pop()):
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen

    return reach(lambda v: graph[v]) & reach(lambda v: [u for u in graph if v in graph[u]])


def test_imports_follow_the_layers():
    graph = import_graph(ROOT, "mmtx")
    errors = direction_errors(graph, find_modules(ROOT, "mmtx"))
    assert not errors, "imports against DESIGN.md's direction:\n" + "\n".join(errors)


def test_layers_import_nothing_else_of_mmtx():
    graph = import_graph(ROOT, "mmtx")
    outside = {f"{m} -> {t}" for m, edges in graph.items() if layer_of(m) == "layers"
               for t in edges if layer_of(t) != "layers"}
    assert not outside, f"mmtx.layers imports other mmtx modules: {sorted(outside)}"


# --- the checker itself, on a package written here ---------------------------------------------


@pytest.fixture
def fake_package(tmp_path):
    def write(files: dict[str, str]) -> Path:
        root = tmp_path / "pkg"
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        return root

    return write


def test_checker_sees_cycles_through_functions_and_submodule_imports(fake_package):
    root = fake_package({
        "__init__.py": "",
        "a/__init__.py": "from . import b  # b is a submodule\n",
        "a/b.py": "def f():\n    from ..c import thing\n",
        "c.py": "import os\nfrom .a import helper  # a name of a's __init__\nthing = 1\n",
        "d.py": "from pkg.c import thing\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {"pkg.a.b": 1}
    assert graph["pkg.a.b"] == {"pkg.c": 2}
    assert graph["pkg.c"] == {"pkg.a": 2}
    assert graph["pkg.d"] == {"pkg.c": 1}
    assert find_cycles(graph) == [["pkg.a", "pkg.a.b", "pkg.c", "pkg.a"]]
    del graph["pkg.c"]["pkg.a"]
    assert find_cycles(graph) == []


def test_checker_sees_imports_against_the_direction():
    graph = {"mmtx.layers.x": {"mmtx.models.vit": 3},
             "mmtx.models.vit": {"mmtx.train": 5, "mmtx.eval.retrieval": 6, "mmtx.data": 7},
             "mmtx.viz.y": {"mmtx.experiments.grid": 7, "mmtx.models": 8},
             "mmtx.train.z": {"mmtx.data": 1, "mmtx.models": 2}, "mmtx.cli": {"mmtx.train": 1}}
    files = {m: (ROOT / "x.py", False) for m in graph}
    errors = direction_errors(graph, files)
    assert [e.split(": ", 1)[1] for e in errors] == [
        "mmtx.layers.x (layers) imports mmtx.models.vit (models)",
        "mmtx.models.vit (models) imports mmtx.eval.retrieval (eval)",
        "mmtx.models.vit (models) imports mmtx.train (train)",
        "mmtx.viz.y (viz) imports mmtx.experiments.grid (experiments)",
    ]
