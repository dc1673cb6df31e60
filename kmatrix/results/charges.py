"""Which test each kernel report of a cell was charged to.

The log guard (kmatrix.pytest.logguard) reads the kernel log by record sequence number
around every test and charges each report it finds to the test that was running, or to the
cell when it came between tests or after the last one. The cell's findings are parsed from
its logs at the end (dmesg.log, console.log); `attribute` joins the two: each finding of a
log gets the charge of the same report (same kind and title, in order), and a charged report
no log has (a quiet console, a kernel log lost with its VM) is added as it was read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from kmatrix.results.schema import FindingRecord


def attribute(
    findings: Sequence[FindingRecord], charges: Sequence[FindingRecord]
) -> list[FindingRecord]:
    """The findings (each log's own, in order) with the charge (phase, test, after, allowed,
    seq) of the matching charged report, followed by the charges no log has."""
    out = list(findings)
    matched: set[int] = set()
    for source in dict.fromkeys(f.source for f in out):
        used: set[int] = set()
        for j, f in enumerate(out):
            if f.source != source:
                continue
            i = next(
                (
                    i
                    for i, c in enumerate(charges)
                    if i not in used and (c.kind, c.title) == (f.kind, f.title)
                ),
                None,
            )
            if i is None:
                continue
            used.add(i)
            matched.add(i)
            c = charges[i]
            out[j] = replace(
                f, phase=c.phase, test=c.test, after=c.after, allowed=c.allowed, seq=c.seq
            )
    out += [c for i, c in enumerate(charges) if i not in matched]
    return out


def charge_note(finding: FindingRecord) -> str:
    """Where a finding was charged, for reports: "during test_x (allowed)", "between tests,
    after test_x", "after the last test, test_x"; "" when the log guard did not see it."""
    short = (finding.test or finding.after).split("::")[-1]
    if finding.phase == "test":
        note = f"during {short}"
    elif finding.phase == "between":
        note = f"between tests, after {short}" if short else "between tests"
    elif finding.phase == "teardown":
        note = f"after the last test, {short}" if short else "after the last test"
    else:
        return ""
    return note + (" (allowed)" if finding.allowed else "")
