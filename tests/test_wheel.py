"""kmatrix installed from its wheel, used from a directory that is not the checkout.

The wheel is built from a copy of the source tree, installed into a fresh venv outside the
checkout (packages from pip's cache or the package index, as any install), and then, in an
empty directory: `kmatrix init`, `kmatrix list`, `kmatrix run` collecting the built-in
suites plus the directory's own tests, and a real TCG boot of one cell through plain
`pytest -k`, which runs a built-in test and the starter's example tests in it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, junit_cases

# Left out of the copy the wheel is built from: what a clone has not (run output, caches,
# the venv, an earlier in-tree build whose stale files setuptools would package).
TOP_LEVEL_JUNK = {".git", ".venv", "build", "dist", "reports", ".pytest_cache", ".mypy_cache",
                  ".ruff_cache"}  # fmt: skip


BUNDLED = (
    "kmatrix/_data/matrix/default.yaml",
    "kmatrix/_data/matrix/devices/virtio.yaml",
    "kmatrix/_data/images/recipe.yaml",
    "kmatrix/_data/testcases/test_boot.py",
    "kmatrix/reports/__init__.py",
    "kmatrix/reports/assets/report.css",
)


def _ignore(directory: str, names: list[str]) -> set[str]:
    top = Path(directory) == ROOT
    return {
        n for n in names
        if (top and n in TOP_LEVEL_JUNK) or n == "__pycache__" or n.endswith(".egg-info")
    }  # fmt: skip


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    p = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert p.returncode == 0, f"{argv}: exit {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """(venv bin directory, environment) of a fresh venv with only the wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_ignore)
    dist = tmp / "dist"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)],
        tmp, dict(os.environ))  # fmt: skip
    (wheel,) = dist.glob("kmatrix-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for bundled in BUNDLED:
        assert bundled in names, f"{bundled} is not in {wheel.name}"
    venv = tmp / "venv"
    # The venv gets no pip of its own (faster); this interpreter's pip installs into it.
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, dict(os.environ))
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
         str(wheel)], tmp, dict(os.environ))  # fmt: skip
    env = {
        k: v for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_ADDOPTS")
    }  # fmt: skip
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    yield venv / "bin", env
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.boot
def test_init_list_run_and_boot_from_an_empty_directory(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    bin_dir, env = installed
    work = tmp_path / "repo"
    work.mkdir()
    kmatrix = str(bin_dir / "kmatrix")

    # The installed package is the one in use, with its own copy of the bundled data.
    code = "import kmatrix.resources as r; print(r.data_dir('testcases'))"
    where = run([str(bin_dir / "python"), "-c", code], work, env)
    assert where.strip().startswith(str(bin_dir.parent)), where

    out = run([kmatrix, "init"], work, env)
    assert "wrote matrix/default.yaml" in out, out
    assert (work / "testcases" / "conftest.py").is_file()
    p = subprocess.run([kmatrix, "init"], cwd=work, env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "writes no file that exists already" in p.stderr, p.stderr

    listing = run([kmatrix, "list"], work, env)
    cells = [ln.split()[0] for ln in listing.splitlines() if not ln.startswith("#")]
    assert len(cells) == 2, listing
    nehalem = next(c for c in cells if "/Nehalem/" in c)

    # kmatrix run: the built-in suites and the directory's own tests; -k as in the checkout.
    collected = run([kmatrix, "run", "-n", "1", "--", "--collect-only", "-q", "-k", "sched"],
                    work, env)  # fmt: skip
    ids = [ln for ln in collected.splitlines() if "::" in ln]
    assert ids and all(ln.startswith("test_sched.py::") for ln in ids), collected
    assert {ln.split("[")[1] for ln in ids} == {f"{c}]" for c in cells}
    collected = run([kmatrix, "run", "-n", "1", "--", "--collect-only", "-q"], work, env)
    assert "testcases/test_example.py::test_scratch_disk_is_writable" in collected, collected

    # Plain pytest: one real boot of one cell, a built-in test and the example's.
    expr = f"{nehalem.split('/')[1]} and (boot and userspace or example)"
    junit = work / "junit.xml"
    out = run([str(bin_dir / "pytest"), "-k", expr, "--kmatrix-accel=tcg", f"--junitxml={junit}",
               "-p", "no:cacheprovider"], work, env)  # fmt: skip
    outcomes = {name: case.outcome for name, case in junit_cases(junit).items()}
    assert outcomes == {
        f"test_userspace_reached[{nehalem}]": "passed",
        f"test_guest_runs_the_kernel_of_the_cell[{nehalem}]": "passed",
        f"test_scratch_disk_is_writable[{nehalem}]": "passed",
    }, out
    results = json.loads((work / "reports" / "latest" / "results.json").read_text())
    assert {r["cell"] for r in results["results"]} == {nehalem}
    assert (work / "reports" / "latest" / "index.html").is_file()
