"""Shared fixtures of the project's own tests (run with the plugin off: -p no:kmatrix)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kmatrix.guest import Guest
from kmatrix.matrix import Cell, Matrix, load_matrix

collect_ignore = ["data"]  # tests/data/faultcases are run by tests/test_faults.py, via the plugin

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def qemu_pids(pattern: str = "") -> list[int]:
    """kmatrix QEMU processes whose command line contains pattern (e.g. a private TMPDIR)."""
    out = subprocess.run(
        ["pgrep", "-f", f"qemu-system-x86_64 -name kmatrix:.*{pattern}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [int(p) for p in out.split()]


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A short TMPDIR for a child pytest: its QEMUs' socket paths carry it, so pgrep can tell
    them from other QEMUs on the machine."""
    d = Path(tempfile.mkdtemp(prefix="kt-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def two() -> Matrix:
    return load_matrix(DATA / "matrices" / "two.yaml")


@pytest.fixture(scope="session")
def cloud61(two: Matrix) -> Cell:
    return two.cell("deb-6.1-cloud/Nehalem/virtio")


@pytest.fixture(scope="module")
def booted61(cloud61: Cell, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    """One real boot of the 6.1 cloud kernel under TCG, shared by a test module."""
    g = Guest(cloud61, tmp_path_factory.mktemp("boot61"), accel="tcg")
    g.start()
    try:
        yield g
    finally:
        g.stop()
