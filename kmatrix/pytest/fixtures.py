"""The fixtures testcases take: cell (parametrized), booted, guest, kernel, qmp."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from typing import Any, cast

import pytest

from kmatrix import __version__
from kmatrix.config.specs import Cell
from kmatrix.guest.guest import Guest
from kmatrix.guest.session import GuestSession
from kmatrix.kernels.artifact import KernelArtifact
from kmatrix.pytest.stash import guest_of, pool_of
from kmatrix.vm.accel import qemu_version


@pytest.fixture
def booted(request: pytest.FixtureRequest, cell: Cell) -> Guest:
    """The cell's booted Guest: record (boot time, accelerator), kernel artefact, QMP."""
    return guest_of(request.config, cell)


@pytest.fixture
def guest(request: pytest.FixtureRequest, booted: Guest) -> GuestSession:
    """The guest session: run(cmd), read_file(path), write_file(path, data), dmesg()."""
    if pool_of(request.config).run_of(booted.cell).failed:
        # Never used: pytest_pyfunc_call fails the test (a kernel failure, not a set-up error).
        return cast(GuestSession, None)
    if booted.session is None or not booted.alive:
        pytest.fail(f"{booted.cell.id}: the guest is not running", pytrace=False)
    return booted.session


@pytest.fixture
def kernel(request: pytest.FixtureRequest, booted: Guest) -> KernelArtifact:
    if booted.kernel is None and pool_of(request.config).run_of(booted.cell).failed:
        # Never used: pytest_pyfunc_call fails the test (the kernel did not build).
        return cast(KernelArtifact, None)
    assert booted.kernel is not None
    return booted.kernel


@pytest.fixture
def qmp(booted: Guest) -> Callable[..., Any]:
    """qmp("query-status") runs a QMP command on the cell's VM, with a timeout."""
    return booted.qmp


@pytest.fixture(scope="session")
def kmatrix_run_info() -> dict[str, str]:
    return {
        "kmatrix": __version__,
        "qemu": qemu_version(),
        "host": platform.node(),
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
    }
