"""The package's structure: no import cycles between kmatrix modules, and the layer contract
in pyproject.toml (checked by `lint-imports`, which ./kmx test runs) is kept."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def _cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import cycle among the package's modules, or None."""
    modules = sorted(graph.modules)
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.find_modules_directly_imported_by(m)):
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in modules:
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("kmatrix")
    # The package's face imports its public names lazily (PEP 562); it is not part of the
    # pipeline, and modules read only __version__ from it.
    graph.remove_module("kmatrix")
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_layer_contract_is_kept() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "import-linter is not installed (pip install -e '.[dev]')"
    p = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]


def test_a_cycle_is_found() -> None:
    """The check can fail: the cycle this package once had (matrix -> patches -> sources ->
    kernel -> build -> matrix) is reported."""
    g = grimp.ImportGraph()
    chain = ["p.matrix", "p.patches", "p.sources", "p.kernel", "p.build", "p.matrix"]
    for a, b in itertools.pairwise(chain):
        g.add_import(importer=a, imported=b)
    g.add_import(importer="p.cli", imported="p.matrix")
    found = _cycle(g)
    assert found is not None and found[0] == found[-1] and set(found) == set(chain)
