"""Flake-aware verdicts: `--kmatrix-rerun N` reruns a failed cell test on a clean guest.

A test that failed is run again, up to N times, each time on a just-booted guest (the cell's
post-boot snapshot restored, else a reboot). If a rerun passes, the test is **flaky**: its
own outcome (results.json, JUnit properties, every report), kept apart from failures; it does
not fail the run unless `--kmatrix-strict`. If every attempt fails, it fails as before,
with the attempts recorded.

Never rerun, because a rerun could only hide what they say: a kernel that did not build or
boot, a declared expectation (xfail), a harness or host error, and a failure that reports a
kernel crash (a WARNING is a kernel bug, however rarely it shows).

Only the final attempt's reports reach pytest's reporting (terminal, JUnit, xdist, the
results collector); the failed attempts are kept as report sections and properties.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from _pytest.runner import runtestprotocol

from kmatrix.config.optionvalues import count
from kmatrix.config.specs import Cell
from kmatrix.errors import KmatrixError
from kmatrix.guest.lifecycle import CellState
from kmatrix.pytest.stash import cell_of, pool_of
from kmatrix.results import findings
from kmatrix.results.runs import summarize_failure
from kmatrix.results.schema import Outcome

FLAKY = "kmatrix.flaky"  # property: what the failed attempts said (JSON list)
ATTEMPTS = "kmatrix.attempts"  # property: how many times the test ran
FINDINGS = findings.PROPERTY  # a test that failed on kernel reports carries them
OUTCOME = Outcome.FLAKY


def add_options(group: Any) -> None:
    group.addoption(
        "--kmatrix-rerun",
        type=count,
        default=0,
        metavar="N",
        help="rerun a failed test up to N times on a clean guest (snapshot restore, else a "
        "reboot); one that then passes is reported as flaky",
    )
    group.addoption(
        "--kmatrix-strict",
        action="store_true",
        help="a flaky test fails the run (default: reported as flaky, the run passes)",
    )


def _failed_call(reports: list[pytest.TestReport]) -> pytest.TestReport | None:
    return next((r for r in reports if r.when == "call" and r.failed), None)


def _why_not(item: pytest.Item, cell: Cell, failed: pytest.TestReport) -> str:
    """Why this failure must not be rerun ('' if it may be)."""
    if item.get_closest_marker("xfail") is not None:
        return "the test has a declared expectation"
    if pool_of(item.config).run_of(cell).failed:
        return "the kernel did not build or boot"
    if any(k == FINDINGS for k, _ in failed.user_properties):
        return "the kernel reported a crash during the test"
    # The parser compiles its patterns on import: loaded here, after the first boot.
    from kmatrix.results.logparse import parse_kernel_log

    if parse_kernel_log(failed.longreprtext):
        return "the failure quotes a kernel crash report"
    return ""


def _one_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)[:300]
    # The plugin rewrites failures as text (with the console tail): its "E   " line says why.
    return summarize_failure("", report.longreprtext)[:300]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    n = int(item.config.getoption("kmatrix_rerun", 0) or 0)
    cell = cell_of(item)
    if n <= 0 or cell is None:
        return None
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    initial = list(item.user_properties)
    failures: list[dict[str, str]] = []
    while True:
        item.user_properties[:] = initial
        reports = runtestprotocol(item, log=False, nextitem=nextitem)
        failed = _failed_call(reports)
        if failed is None or len(failures) >= n or _why_not(item, cell, failed):
            break
        failures.append({"message": _one_line(failed), "longrepr": failed.longreprtext[-4000:]})
        try:
            how = _clean_guest(item, cell, len(failures))
        except KmatrixError as e:
            failures[-1]["clean"] = f"no clean guest: {e}".splitlines()[0]
            break
        failures[-1]["clean"] = how
    if failures:
        _annotate(item, reports, failures)
    for r in reports:
        ihook.pytest_runtest_logreport(report=r)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _clean_guest(item: pytest.Item, cell: Cell, attempt: int) -> str:
    """A just-booted guest for the next attempt: restored or rebooted now while the cell
    runs; a cell stopped after its last test boots afresh when the rerun sets up."""
    pool = pool_of(item.config)
    run = pool.run_of(cell)
    if run.guest is None or run.failed or run.state is CellState.STOPPED:
        return "fresh boot"
    return pool.clean(cell, f"rerun {attempt} of {item.nodeid}")


def _annotate(
    item: pytest.Item, reports: list[pytest.TestReport], failures: list[dict[str, str]]
) -> None:
    attempts = len(failures) + 1
    call = next((r for r in reports if r.when == "call"), None)
    if call is None:
        return  # the last attempt did not get past set-up: its error says why
    # Every phase's report carries the facts: pytest's JUnit takes properties from the
    # teardown report, the results collector from any.
    for r in reports:
        r.user_properties.append((ATTEMPTS, str(attempts)))
    for i, f in enumerate(failures, 1):
        call.sections.append((f"kmatrix: attempt {i} of {attempts} failed", f["longrepr"]))
    if call.failed:
        return  # failed every time: a failure, with its attempts recorded
    summary = json.dumps([{k: f[k] for k in ("message", "clean") if k in f} for f in failures])
    for r in reports:
        r.user_properties.append((FLAKY, summary))
    if item.config.getoption("kmatrix_strict", False):
        call.outcome = "failed"
        call.longrepr = (
            f"flaky, and --kmatrix-strict fails it: failed {len(failures)} of {attempts} "
            f"attempts, then passed on a clean guest; the first failure:\n\n"
            + failures[0]["longrepr"]
        )


def is_flaky(report: pytest.TestReport) -> bool:
    return report.when == "call" and any(k == FLAKY for k, _ in report.user_properties)
