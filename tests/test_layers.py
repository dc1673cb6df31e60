"""The package's structure: no import cycles between kmatrix modules, and the layer contract
in pyproject.toml (checked by `lint-imports`, which ./kmx test runs) is kept.

Both checks see every import statement, wherever it stands: grimp (under import-linter too)
reads the whole syntax tree of each module, so an import inside a function or under
TYPE_CHECKING is an edge like a top-level one. A function-level import for lazy loading is
therefore allowed only where a top-level one would be: downward in the layers, or within a
layer without closing a cycle. The throwaway packages below prove both checks fail on one.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest

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


def package_cycle(package: str) -> list[str] | None:
    """One import cycle among `package`'s modules (function-level imports included), or None.

    The package's face (its __init__) imports its public names lazily (PEP 562) and names
    them only under TYPE_CHECKING; modules read only __version__ from it. Its own imports are
    left out, so it cannot close a cycle; imports of it stay. (`remove_module(package)` would
    remove every submodule with it and leave nothing to check.)
    """
    graph = grimp.build_graph(package, cache_dir=None)
    for m in graph.find_modules_directly_imported_by(package):
        graph.remove_import(importer=package, imported=m)
    return _cycle(graph)


def _lint_imports(cwd: Path, *, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "import-linter is not installed (pip install -e '.[dev]')"
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [exe, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_no_import_cycles() -> None:
    assert grimp.build_graph("kmatrix", cache_dir=None).count_imports() > 100
    found = package_cycle("kmatrix")
    assert found is None, " -> ".join(found or [])


def test_layer_contract_is_kept() -> None:
    p = _lint_imports(ROOT)
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


def _package(root: Path, name: str, files: dict[str, str]) -> None:
    """A throwaway package `name` under root, with a lazy face like kmatrix's."""
    pkg = root / name
    pkg.mkdir()
    face = f"""
        from typing import TYPE_CHECKING
        __version__ = "0"
        if TYPE_CHECKING:
            from {name}.cli.main import main
    """
    (pkg / "__init__.py").write_text(textwrap.dedent(face))
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(pkg).parents:
            (pkg / parent / "__init__.py").touch()
        path.write_text(textwrap.dedent(text))


def test_function_level_cycle_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cycle kmatrix/cli once had: main imports bisect inside a function, bisect imports
    main at the top. Without the function-level import there is no cycle."""
    name = "kmx_layers_cycle"
    main = f"""
        from {name} import __version__
        from {name}.cli.values import positive

        def main() -> None:
            from {name}.cli.bisect import bisect  # lazy: bisect is heavy
            bisect(positive("1"))
    """
    bisect = f"""
        from {name}.cli.main import main

        def bisect(n: int) -> None:
            main()
    """
    values = """
        def positive(s: str) -> int:
            return int(s)
    """
    files = {"cli/main.py": main, "cli/bisect.py": bisect, "cli/values.py": values}
    _package(tmp_path, name, files)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = package_cycle(name)
    assert found is not None and found[0] == found[-1], found
    assert {f"{name}.cli.main", f"{name}.cli.bisect"} <= set(found)

    (tmp_path / name / "cli" / "main.py").write_text(
        textwrap.dedent(main).replace(f"from {name}.cli.bisect import bisect", "bisect = print")
    )
    assert package_cycle(name) is None


def test_function_level_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    """A lazy import is allowed downward (cli -> vm) and reported upward (vm -> cli)."""
    name = "kmx_layers_up"
    vm = """
        def boot() -> None:
            pass
    """
    cli = f"""
        def main() -> None:
            from {name}.vm.machine import boot  # downward: allowed
            boot()
    """
    _package(tmp_path, name, {"vm/machine.py": vm, "cli/main.py": cli})
    (tmp_path / ".importlinter").write_text(
        textwrap.dedent(f"""
            [importlinter]
            root_package = {name}

            [importlinter:contract:layers]
            name = layers
            type = layers
            layers =
                {name}.cli
                {name}.vm
        """)
    )
    p = _lint_imports(tmp_path, pythonpath=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]

    upward = (
        vm
        + f"""
        def report() -> None:
            from {name}.cli.main import main  # upward: a layer violation
            main()
    """
    )
    (tmp_path / name / "vm" / "machine.py").write_text(textwrap.dedent(upward))
    p = _lint_imports(tmp_path, pythonpath=tmp_path)
    assert p.returncode != 0 and "BROKEN" in p.stdout, p.stdout[-3000:] + p.stderr[-2000:]
    assert f"{name}.vm.machine -> {name}.cli.main" in p.stdout, p.stdout[-3000:]
