"""Known issues applied during the run: a test that failed only on known kernel reports is
*known*, not failed.

A test fails on kernel reports when the log guard finds reports it does not allow
(kmatrix.pytest.logguard.KernelLogFailed), or by raising KernelReportsFound
(kmatrix.results.findings.assert_no_findings). Each finding is matched against the known
issues (kind plus a pattern on its normalised title; scoped by kernel, cell and test). If
every finding matches, the test ends as known, naming the issues and their links, and does
not fail the run (pytest counts it like an expected failure); one unknown finding keeps it
failed, and the failure names that finding first. Every finding, known or not, is kept on
the test's record.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kmatrix.config.specs import Cell, Matrix
from kmatrix.errors import InputError
from kmatrix.pytest.logguard import KernelLogFailed
from kmatrix.results import findings
from kmatrix.results.findings import FindingRef, KernelReportsFound
from kmatrix.results.known_issues import KnownIssues, default_known_issues, load_known_issues
from kmatrix.results.schema import CellResult, FindingRecord, Outcome

PROPERTY = "kmatrix.known"  # JSON list of {"id", "url", "kind", "title"}
OUTCOME = Outcome.KNOWN
_KEY = pytest.StashKey[KnownIssues]()


def configure(config: pytest.Config, matrix: Matrix | None) -> None:
    """Loads the known issues once, before anything boots; a bad file is a usage error."""
    given = config.getoption("kmatrix_known_issues", None)
    path = Path(given) if given else default_known_issues(matrix.path if matrix else None)
    try:
        config.stash[_KEY] = load_known_issues(path)
    except InputError as e:
        raise pytest.UsageError(f"kmatrix: {e}") from None


def apply(
    item: pytest.Item,
    cell: Cell,
    release: str,
    report: pytest.TestReport,
    call: pytest.CallInfo[None],
) -> None:
    """Records the kernel reports a failed test raised, and makes it known if all are. The
    facts go on the report and on the item (its teardown report is what pytest's JUnit
    reads)."""
    if report.when != "call" or not report.failed or call.excinfo is None:
        return
    exc = call.excinfo.value
    # A test's own assert_no_findings, or the log guard's failure: both keep the findings.
    if not isinstance(exc, KernelReportsFound | KernelLogFailed) or not exc.findings:
        return
    config, nodeid = item.config, item.nodeid
    known = config.stash.get(_KEY, KnownIssues())
    where = CellResult(
        id=cell.id, kernel=cell.kernel.name, kernel_release=release, cpu=cell.cpu.name,
        device=cell.device.name,
    )  # fmt: skip
    refs = []
    for f in exc.findings:
        issue = known.for_finding(where, FindingRecord(kind=f.kind, title=f.title), nodeid)
        refs.append(
            FindingRef(f.kind, f.title, issue.id if issue else "", issue.url if issue else "")
        )
    props = [(findings.PROPERTY, findings.encode(refs))]
    unknown = [r for r in refs if not r.known]
    if not unknown:
        listed = [{"id": r.known, "url": r.url, "kind": r.kind, "title": r.title} for r in refs]
        props.append((PROPERTY, json.dumps(listed)))
    report.user_properties += props
    item.user_properties += props
    if unknown:
        names = "; ".join(f"{r.kind}: {r.title}" for r in unknown)
        explained = [f"{r.title} (known: {r.known})" for r in refs if r.known]
        report.longrepr = (
            f"kernel report(s) not in the known issues: {names}"
            + (f"\nknown: {'; '.join(explained)}" if explained else "")
            + f"\n\n{report.longreprtext}"
        )
        return
    ids = list(dict.fromkeys(r.known for r in refs))
    report.outcome = "skipped"
    report.wasxfail = "known issue " + ", ".join(ids)  # pytest: an expected failure


def is_known(report: pytest.TestReport) -> bool:
    return report.when == "call" and any(k == PROPERTY for k, _ in report.user_properties)
