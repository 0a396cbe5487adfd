"""The one-way flow of imports between moesim's packages, read from the source (issue 18).

ARCHITECTURE.md: `model/` imports nothing of the others; `profiling/` and `placement/` import `model/`;
`sim/` imports `model/`, `profiling/` and `placement/`; `dashboard/` may import all of them. Inside one
package no modules import each other, directly (a cycle of two) or round a longer loop.

Every `import` statement counts, wherever it sits: module level, inside a function, under
`if TYPE_CHECKING:` (a type-only import is still a dependency; moving the shared piece fixes a cycle,
hiding the import does not). Relative imports are resolved too, though moesim writes none.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP = "moesim"
PACKAGES = ("model", "profiling", "placement", "sim", "dashboard")

# package -> the moesim packages it may import (itself included)
ALLOWED: dict[str, frozenset[str]] = {
    "model": frozenset({"model"}),
    "profiling": frozenset({"model", "profiling"}),
    "placement": frozenset({"model", "placement"}),
    "sim": frozenset({"model", "profiling", "placement", "sim"}),
    "dashboard": frozenset(PACKAGES),
}


@dataclass(frozen=True)
class Edge:
    """One import of a moesim module: `src` (a file, as `moesim.pkg.mod`) imports `dst` at `path:line`."""

    src: str
    dst: str
    path: str
    line: int

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([TOP, *parts])


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def collect_edges(root: Path, packages: Iterable[str] = PACKAGES) -> list[Edge]:
    """Every import of a `moesim.*` module by a .py file under `root/<package>/`, as edges between modules.

    `from moesim.x import y` is an edge to `moesim.x.y` when that is a module of the tree, else to
    `moesim.x` (a name from the package's `__init__`); `import moesim.x.y` is an edge to `moesim.x.y`.
    """
    files = sorted(p for pkg in packages for p in (root / pkg).rglob("*.py"))
    known = {_module_name(p, root) for p in files}
    edges: list[Edge] = []
    for path in files:
        src = _module_name(path, root)
        rel = path.relative_to(root).as_posix()
        # the package a relative import starts from: the module itself for an __init__, else its parent
        here = src if _is_package(path) else src.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = here.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in known else base)
            for dst in targets:
                if dst == TOP or dst.startswith(TOP + "."):
                    edges.append(Edge(src, dst, rel, node.lineno))
    return edges


def package_of(module: str) -> str | None:
    """`moesim.sim.serving.engine` -> `sim`; the bare `moesim` namespace -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def layer_violations(edges: Iterable[Edge]) -> list[str]:
    """One line per import that goes against the flow (a package importing one it may not)."""
    out = []
    for e in edges:
        src_pkg, dst_pkg = package_of(e.src), package_of(e.dst)
        if src_pkg is None or dst_pkg is None or src_pkg not in ALLOWED:
            continue
        if dst_pkg not in ALLOWED[src_pkg]:
            out.append(f"{e.where()}: {src_pkg}/ imports {e.dst} ({dst_pkg}/ is not below {src_pkg}/)")
    return sorted(set(out))  # `from x import a, b` is one line, however many names


# sim/'s subsystems -> the sim subsystems each may import (itself included); `sim/common.py` and the other
# modules directly under sim/ ("") may import none of them, and every subsystem may import them.
SIM_ALLOWED: dict[str, frozenset[str]] = {
    "": frozenset({""}),
    "serving": frozenset({"", "serving"}),
    "training": frozenset({"", "training"}),
    "sweeps": frozenset({"", "serving", "sweeps"}),
}


def sim_part(module: str) -> str | None:
    """`moesim.sim.serving.engine` -> `serving`; `moesim.sim.common` and `moesim.sim` -> ""; else None."""
    parts = module.split(".")
    if parts[:2] != [TOP, "sim"]:
        return None
    return parts[2] if len(parts) > 2 and parts[2] in SIM_ALLOWED else ""


def sim_violations(edges: Iterable[Edge]) -> list[str]:
    """One line per import between sim/'s subsystems that `SIM_ALLOWED` does not allow (training importing
    serving, serving importing sweeps, common importing any of them)."""
    out = []
    for e in edges:
        src, dst = sim_part(e.src), sim_part(e.dst)
        if src is None or dst is None or src not in SIM_ALLOWED:
            continue
        if dst not in SIM_ALLOWED[src]:
            out.append(f"{e.where()}: sim/{src or '*.py'} imports {e.dst} (sim/{dst or '*.py'} is not below it)")
    return sorted(set(out))


def _cycle_key(cycle: list[str]) -> tuple[str, ...]:
    i = cycle.index(min(cycle))
    return tuple(cycle[i:] + cycle[:i])


def package_cycles(edges: Iterable[Edge]) -> list[str]:
    """One line per import cycle among the modules of one package, each import named by file and line.

    Edges to the bare `moesim` namespace and self-imports are ignored; every elementary cycle found by a
    depth-first search from each module is reported once.
    """
    graph: dict[str, dict[str, list[Edge]]] = {}
    for e in edges:
        if e.src == e.dst or package_of(e.src) is None or package_of(e.src) != package_of(e.dst):
            continue
        graph.setdefault(e.src, {}).setdefault(e.dst, []).append(e)  # every line that imports dst
    seen: set[tuple[str, ...]] = set()
    found: list[tuple[str, ...]] = []

    def dfs(start: str, node: str, stack: list[str], on_stack: set[str]) -> None:
        for nxt in sorted(graph.get(node, {})):
            if nxt == start:
                key = _cycle_key(stack)
                if key not in seen:
                    seen.add(key)
                    found.append(key)
            elif nxt not in on_stack and nxt > start:  # each cycle is found once, from its least module
                stack.append(nxt)
                on_stack.add(nxt)
                dfs(start, nxt, stack, on_stack)
                on_stack.discard(nxt)
                stack.pop()

    for start in sorted(graph):
        dfs(start, start, [start], {start})
    lines = []
    for cyc in sorted(found, key=lambda c: (len(c), c)):
        hops = [graph[a][cyc[(i + 1) % len(cyc)]] for i, a in enumerate(cyc)]
        kind = "two modules import each other" if len(cyc) == 2 else f"a cycle of {len(cyc)}"
        said = [f"{h[0].path}:{','.join(map(str, sorted({e.line for e in h})))} imports {h[0].dst}" for h in hops]
        lines.append(f"{kind}: " + "; ".join(said))
    return lines


def _report(title: str, problems: list[str]) -> str:
    return f"{title} ({len(problems)}):\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------------------------------------
# the repository


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    found = collect_edges(ROOT)
    assert found, "no moesim imports found: has the layout of the repository changed?"
    return found


def test_imports_flow_one_way(edges: list[Edge]) -> None:
    problems = layer_violations(edges)
    assert not problems, _report("imports against model <- profiling, placement <- sim <- dashboard", problems)


def test_no_import_cycles_inside_a_package(edges: list[Edge]) -> None:
    problems = package_cycles(edges)
    assert not problems, _report("import cycles inside a package", problems)


def test_sim_subsystems_stay_apart(edges: list[Edge]) -> None:
    problems = sim_violations(edges)
    assert not problems, _report("sim/ subsystems importing one another (sweeps may import serving)", problems)


def test_every_package_is_scanned(edges: list[Edge]) -> None:
    assert {package_of(e.src) for e in edges} == set(PACKAGES)


# ---------------------------------------------------------------------------------------------------------
# the checker catches what it is for


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


def test_checker_catches_planted_violations(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            # model reaching up, in a function and under TYPE_CHECKING
            "model/a.py": "def f():\n    from moesim.sim.serving.engine import run, step\n",
            "model/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import moesim.profiling.fit\n",
            # profiling reaching sideways into placement, through `from moesim import x`
            "profiling/p.py": "from moesim import placement\n",
            # a two-cycle in profiling, a three-cycle in sim (one edge relative)
            "profiling/c1.py": "from moesim.profiling.c2 import x\n",
            "profiling/c2.py": "def g():\n    from moesim.profiling import c1\n    import moesim.profiling.c1\n",
            "sim/s1.py": "import moesim.sim.s2\nfrom moesim.sim.s2 import a, b\n",
            "sim/s2.py": "from .s3 import y\n",
            "sim/s3.py": "from moesim.sim.s1 import z\nfrom moesim.model.ops import decompose\n",
            "sim/engine.py": "",
            # allowed: dashboard imports everything; sim imports placement; the bare namespace
            "dashboard/d.py": "from moesim.sim.serving.engine import run\nfrom moesim import model, __version__\n",
            "sim/ok.py": "from moesim.placement import api\n",
        },
    )
    edges = collect_edges(root)
    layers = layer_violations(edges)
    assert layers == [
        "model/a.py:2: model/ imports moesim.sim.serving.engine (sim/ is not below model/)",
        "model/b.py:3: model/ imports moesim.profiling.fit (profiling/ is not below model/)",
        "profiling/p.py:1: profiling/ imports moesim.placement (placement/ is not below profiling/)",
    ]
    cycles = package_cycles(edges)
    assert cycles == [
        "two modules import each other: profiling/c1.py:1 imports moesim.profiling.c2; "
        "profiling/c2.py:2,3 imports moesim.profiling.c1",
        "a cycle of 3: sim/s1.py:1,2 imports moesim.sim.s2; sim/s2.py:1 imports moesim.sim.s3; "
        "sim/s3.py:1 imports moesim.sim.s1",
    ]
    assert sim_violations(edges) == []
    sims = sim_violations(
        collect_edges(
            _tree(
                tmp_path / "subsystems",
                {
                    "sim/common.py": "from moesim.sim.serving.scenario import read_yaml\n",
                    "sim/training/__init__.py": "",
                    "sim/training/t.py": "from moesim.sim.common import read_yaml\nfrom moesim.sim.serving import x\n",
                    "sim/serving/__init__.py": "",
                    "sim/serving/scenario.py": "from moesim.sim.common import read_yaml\n",
                    "sim/sweeps/__init__.py": "",
                    "sim/sweeps/s.py": "from moesim.sim.serving.scenario import a\nimport moesim.sim.training.t\n",
                },
            )
        )
    )
    assert sims == [
        "sim/common.py:1: sim/*.py imports moesim.sim.serving.scenario (sim/serving is not below it)",
        "sim/sweeps/s.py:2: sim/sweeps imports moesim.sim.training.t (sim/training is not below it)",
        "sim/training/t.py:2: sim/training imports moesim.sim.serving (sim/serving is not below it)",
    ]
    with pytest.raises(AssertionError, match=r"model/a\.py:2"):
        assert not layers, _report("imports against the flow", layers)


def test_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "model/ops.py": "import numpy\n",
            "model/cap.py": "from moesim.model.ops import decompose\n",
            "placement/api.py": "from moesim.model import ops\n",
            "sim/engine.py": "from moesim.placement.api import x\nfrom moesim.profiling import fit\n",
            "profiling/fit.py": "",
        },
    )
    edges = collect_edges(root)
    assert not layer_violations(edges)
    assert not package_cycles(edges)
