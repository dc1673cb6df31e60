"""Kernel reports provoked in the middle of a suite, run by tests/test_logguard.py through
`pytest -p kmatrix`: the kernel-log guard must fail exactly the test that provoked one.

kmx_crash (images/crash) is built for the cell's kernel and loaded by the first test that
needs it; `echo warn > /proc/kmx_crash` prints a WARNING from kmx_crash_warn.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kmatrix import Cell, GuestSession, KernelArtifact, crash_module, log_mark, new_log


@pytest.fixture
def crash(guest: GuestSession, kernel: KernelArtifact, cell: Cell) -> GuestSession:
    """The guest with kmx_crash loaded (once per boot)."""
    if guest.run("test -e /proc/kmx_crash").exit_status != 0:
        guest.write_file("/tmp/kmx_crash.ko", crash_module(kernel, cell.kernel).read_bytes())
        guest.run("insmod /tmp/kmx_crash.ko", check=True)
    return guest


def test_a_quiet_before(crash: GuestSession, record_property: object) -> None:
    # Loading the module taints the kernel, which says so: not a report.
    time_on = crash.read_file("/sys/module/printk/parameters/time").strip()
    if callable(record_property):
        record_property("printk_time", time_on)


def test_b_warns(crash: GuestSession) -> None:
    crash.run("echo warn > /proc/kmx_crash", check=True)


def test_c_quiet_after(guest: GuestSession) -> None:
    guest.run("true", check=True)


@pytest.mark.kmatrix_allow("warning", match=r"^WARNING in kmx_crash_warn$")
def test_d_allowed_warning(crash: GuestSession) -> None:
    # The test reads the log itself too: the guard still sees the report.
    mark = log_mark(crash)
    crash.run("echo warn > /proc/kmx_crash", check=True)
    assert "WARNING: CPU:" in new_log(crash, mark)


def test_d_kernel_test_runner_warns(crash: GuestSession, request: pytest.FixtureRequest) -> None:
    # As a kselftest/KUnit item that runs a whole target does: the report fails the case that
    # printed it (kerneltests), not this item, and is not recorded as allowed.
    request.node.kmatrix_attributes_reports = True
    crash.run("echo warn > /proc/kmx_crash", check=True)


@pytest.fixture
def warns_in_teardown(crash: GuestSession) -> Iterator[None]:
    yield
    crash.run("echo refcount > /proc/kmx_crash", check=True)


def test_e_teardown_warns(warns_in_teardown: None) -> None:
    pass


def test_f_quiet_last(guest: GuestSession) -> None:
    guest.run("true", check=True)


@pytest.fixture
def warns_at_the_end(crash: GuestSession) -> Iterator[None]:
    yield
    crash.run("echo warn > /proc/kmx_crash", check=True)


def test_g_fails_and_oopses(crash: GuestSession, warns_at_the_end: None) -> None:
    crash.run("echo div > /proc/kmx_crash")
    raise AssertionError("the test's own failure")
