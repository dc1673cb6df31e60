"""A test failed because the kernel reported a crash: the failure carries the findings.

`assert_no_findings(findings, what)` is how a test fails on kernel reports (WARNING, BUG,
Oops, lockdep, stalls, ...). The failure keeps each finding's kind and normalised title as
data, so known issues are matched on exactly those (kind plus a pattern on the title), never
on the text of a message, and a rerun never turns a kernel report into a pass.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the parser's patterns compile on import: loaded when a test fails on one
    from kmatrix.results.logparse import Finding

PROPERTY = "kmatrix.findings"  # JSON list of {"kind", "title", "known"} on the test's report


class KernelReportsFound(AssertionError):
    """The kernel reported a crash (or several) during the test."""

    def __init__(self, what: str, findings: Sequence[Finding]) -> None:
        from kmatrix.results.logparse import findings_summary

        self.what = what
        self.findings = tuple(findings)
        excerpts = "\n".join(f.excerpt for f in self.findings[:3])
        super().__init__(f"{what}:\n{findings_summary(self.findings)}\n\n{excerpts}")


def assert_no_findings(findings: Sequence[Finding], what: str = "the kernel logged") -> None:
    """Fails the test (KernelReportsFound) if there is any finding; `what` says when."""
    if findings:
        raise KernelReportsFound(what, findings)


@dataclass(frozen=True)
class FindingRef:
    """A finding as a test's record keeps it: what known issues are matched on."""

    kind: str
    title: str
    known: str = ""  # the id of the known issue it matches, if any
    url: str = ""

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "title": self.title, "known": self.known, "url": self.url}


def encode(refs: Sequence[FindingRef]) -> str:
    return json.dumps([r.to_json() for r in refs])


def decode(text: str) -> list[FindingRef]:
    try:
        data: Any = json.loads(text)
    except ValueError:
        return []
    if not isinstance(data, list):
        return []
    return [
        FindingRef(str(d.get("kind", "")), str(d.get("title", "")), str(d.get("known", "")),
                   str(d.get("url", "")))
        for d in data
        if isinstance(d, dict)
    ]  # fmt: skip
