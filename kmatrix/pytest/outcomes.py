"""Outcomes of cell tests: kernel failures fail, host and harness faults are errors (never
blamed on the kernel), input errors show their message, failures carry the console tail."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from kmatrix.config.specs import Cell
from kmatrix.errors import (
    BuildFailure,
    GuestError,
    InfraError,
    InputError,
)
from kmatrix.guest.guest import console_tail
from kmatrix.pytest import applicability, known, rerun
from kmatrix.pytest.stash import cell_of, pool_of


class NoBootFailed(pytest.fail.Exception):  # type: ignore[misc,name-defined]
    """Raised for every test of a cell whose kernel never reached userspace."""


class BuildFailed(pytest.fail.Exception):  # type: ignore[misc,name-defined]
    """Raised for every test of a cell whose kernel did not build."""


_EXPECT_RAISES: dict[str, type[BaseException] | None] = {
    "no-boot": NoBootFailed,
    "build-fail": BuildFailed,
    "fail": None,  # any failure of the test
}


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> None:
    cell = cell_of(pyfuncitem)
    if cell is None:
        return
    run = pool_of(pyfuncitem.config).run_of(cell)
    failure = run.failure if run.failed else None
    if failure is not None:
        # The kernel never reached userspace: every test of the cell fails (not errors).
        exc = BuildFailed if isinstance(failure, BuildFailure) else NoBootFailed
        raise exc(str(failure), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    cell = cell_of(item)
    applicability.record(item, report, call)
    if cell is not None:
        g = pool_of(item.config).guest_of(cell)
        release = g.kernel.release if g is not None and g.kernel is not None else ""
        known.apply(item, cell, release, report, call)
    if cell is not None and report.when == "call" and report.failed and call.excinfo is not None:
        _classify(item, cell, call.excinfo, report)
    # Items that say so (a kselftest case that failed in a run that went to its end) are
    # about their own output, not the console's.
    if cell is not None and report.failed and getattr(item, "kmatrix_console_tail", True):
        g = pool_of(item.config).guest_of(cell)
        log = g.console_log if g is not None else pool_of(item.config).outdir(cell) / "console.log"
        tail = console_tail(log, 40)
        if tail.strip():
            report.sections.append((f"kmatrix console tail ({cell.id})", tail))
            report.longrepr = f"{report.longreprtext}\n\n--- console tail of {cell.id} ---\n{tail}"
    return report


def _classify(
    item: pytest.Item, cell: Cell, excinfo: pytest.ExceptionInfo[BaseException],
    report: pytest.TestReport,
) -> None:  # fmt: skip
    """Host and harness faults are errors, never failures blamed on the kernel (GUIDE §4)."""
    pool = pool_of(item.config)
    g = pool.guest_of(cell)
    verdict, why = "kernel", ""
    if excinfo.errisinstance((InfraError, OSError)):
        # OSError here is the host's: disk full, a socket torn down, a missing file.
        verdict, why = "infra", str(excinfo.value).splitlines()[0]
    elif excinfo.errisinstance(GuestError) and g is not None:
        verdict, why = g.diagnose()
        if verdict == "infra" and g.machine is not None:
            g.machine.kill()
    if verdict == "infra":
        pool.run_of(cell).to_dead(f"{why} (during {item.nodeid})")
        # A failed call phase reported as set-up makes pytest and JUnit count an error.
        report.when = "setup"
        report.longrepr = f"kmatrix infrastructure error, not the kernel: {why}\n\n" + (
            report.longreprtext
        )
    elif why:
        note = f"kmatrix diagnosis: {why}"
        if g is not None and g.console_log.is_file():
            from kmatrix.results.logparse import findings_summary, parse_kernel_log

            found = parse_kernel_log(g.console_log.read_text(errors="replace"))
            if found:
                note += "\nkernel log:\n" + findings_summary(found)
        report.longrepr = f"{report.longreprtext}\n\n{note}"


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(
    report: pytest.TestReport, config: pytest.Config
) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
    """The terminal's word for kmatrix's own outcomes, so they are counted apart."""
    if applicability.is_not_applicable(report):
        return "not applicable", "n", ("N/A", {"cyan": True})
    if rerun.is_flaky(report) and report.passed:
        return "flaky", "f", ("FLAKY", {"yellow": True})
    if known.is_known(report):
        return "known", "K", ("KNOWN", {"yellow": True})
    return None


def pytest_exception_interact(node: Any, call: Any, report: Any) -> None:
    # An input error is the user's to fix: show its message, not a traceback into kmatrix.
    if call.excinfo is not None and call.excinfo.errisinstance(InputError):
        report.longrepr = f"kmatrix input error: {call.excinfo.value}"
