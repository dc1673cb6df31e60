"""Shared fixtures of the project's own tests (run with the plugin off: -p no:kmatrix)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kmatrix.guest import Guest
from kmatrix.matrix import Cell, Matrix, load_matrix

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def qemu_pids(pattern: str = "kmatrix:") -> list[int]:
    """QEMU processes whose -name carries pattern (every kmatrix QEMU has 'kmatrix:')."""
    out = subprocess.run(
        ["pgrep", "-f", f"qemu-system-x86_64 -name {pattern}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [int(p) for p in out.split()]


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
