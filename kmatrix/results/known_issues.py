"""Known issues: kernel-log signatures reported as known, not as new failures.

A known-issues file (YAML) lists signatures: a finding's kind (as kmatrix.results.logparse
names it: warning, bug, oops, lockdep, ...) and a regular expression searched in its
normalised title (``WARNING in drm_atomic_helper_commit``), scoped by globs on the kernel
(name or release), the cell id and the test::

    issues:
      - id: drm-commit-warn            # unique; shown in every report
        kind: warning                  # optional; one of logparse.KINDS
        title: '^WARNING in drm_'      # regex over normalised finding titles
        kernels: [deb-6.12-*]          # optional globs on kernel name or release
        cells: ['*/gpu-virtio']        # optional globs on cell id
        tests: ['*test_kernel_log_clean*']   # optional globs on the test node id
        url: https://bugs.example.org/123    # optional
        comment: fixed upstream by abcdef    # optional

A finding is known when an issue applies to its cell (and test) and matches its kind and
title. During a run, a test that failed on kernel reports (kmatrix.results.findings) whose
every finding is known ends as *known*, with the issues' ids and links; one unknown finding
keeps it failed. Matching is on the kind and the normalised title only, never on the text
of a failure message.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmatrix.config.yamlnode import NodeReader, compose_file
from kmatrix.results import findings
from kmatrix.results.schema import CellResult, FindingRecord, Outcome, TestResult

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$")
# The keys of a known-issues file and of each issue (documented in docs/matrix.md).
FILE_KEYS = ("issues",)
ISSUE_KEYS = ("id", "kind", "title", "kernels", "cells", "tests", "url", "comment")
ISSUE_REQUIRED = ("id", "title")


@dataclass(frozen=True)
class KnownIssue:
    id: str
    title: re.Pattern[str]
    kind: str = ""  # "" matches any kind
    kernels: tuple[str, ...] = ()
    cells: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()
    url: str = ""
    comment: str = ""
    origin: str = ""  # file:line

    def applies(self, cell: CellResult) -> bool:
        if self.cells and not any(fnmatch.fnmatchcase(cell.id, g) for g in self.cells):
            return False
        names = (cell.kernel, cell.kernel_release)
        return not self.kernels or any(
            fnmatch.fnmatchcase(n, g) for n in names if n for g in self.kernels
        )

    def applies_to_test(self, rec: TestResult) -> bool:
        return self.applies_to_nodeid(rec.nodeid)

    def applies_to_nodeid(self, nodeid: str) -> bool:
        return not self.tests or any(fnmatch.fnmatchcase(nodeid, g) for g in self.tests)

    def matches_title(self, title: str) -> bool:
        return self.title.search(title) is not None

    def matches(self, kind: str, title: str) -> bool:
        """The finding's kind (if the issue names one) and its normalised title."""
        return (not self.kind or self.kind == kind) and self.matches_title(title)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "title": self.title.pattern,
            "kernels": list(self.kernels),
            "cells": list(self.cells),
            "tests": list(self.tests),
            "url": self.url,
            "comment": self.comment,
        }


@dataclass(frozen=True)
class KnownIssues:
    issues: tuple[KnownIssue, ...] = ()
    path: Path | None = None

    def __bool__(self) -> bool:
        return bool(self.issues)

    def for_finding(
        self, cell: CellResult, finding: FindingRecord, nodeid: str | None = None
    ) -> KnownIssue | None:
        """The known issue a finding (kind, title) of this cell matches; with a test's node
        id, only issues that apply to that test."""
        return next(
            (
                i
                for i in self.issues
                if i.applies(cell)
                and (nodeid is None or i.applies_to_nodeid(nodeid))
                and i.matches(finding.kind, finding.title)
            ),
            None,
        )

    def recorded(self, rec: TestResult) -> KnownIssue | None:
        """For a test that ended as known during its run: the first issue it was matched to,
        if this file still has it."""
        if rec.outcome is not Outcome.KNOWN:
            return None
        refs = findings.decode(rec.properties.get(findings.PROPERTY, ""))
        ids = [r.known for r in refs if r.known]
        return next((i for i in self.issues if ids and i.id == ids[0]), None)

    def for_failure(self, cell: CellResult, rec: TestResult) -> KnownIssue | None:
        """The known issue that explains a failed test: it failed on kernel reports (its
        record carries them as findings) and every one of them matches a known issue; the
        first finding's issue is returned. One unknown finding, or a failure that is not a
        kernel report, gives None."""
        if not rec.outcome.failing:
            return None
        refs = findings.decode(rec.properties.get(findings.PROPERTY, ""))
        if not refs:
            return None
        matched = [
            self.for_finding(cell, FindingRecord(kind=r.kind, title=r.title), rec.nodeid)
            for r in refs
        ]
        return matched[0] if all(matched) else None


def _kinds() -> tuple[str, ...]:
    # The parser compiles its patterns on import: loaded only for a file that names a kind.
    from kmatrix.results.logparse import KINDS

    return tuple(KINDS)


def load_known_issues(path: Path | None) -> KnownIssues:
    """Reads a known-issues file; errors name file, line and key. None gives no issues."""
    if path is None:
        return KnownIssues()
    path = Path(path)
    ctx = NodeReader(path)
    root = compose_file(path)
    top = ctx.mapping(root, "", FILE_KEYS, FILE_KEYS)
    issues: list[KnownIssue] = []
    seen: dict[str, int] = {}
    for i, node in enumerate(ctx.seq(top["issues"][1], "issues")):
        key = f"issues[{i}]"
        m = ctx.mapping(node, key, ISSUE_KEYS, ISSUE_REQUIRED)
        ident = ctx.string(m["id"][1], f"{key}.id", ID_RE)
        if ident in seen:
            raise ctx.err(m["id"][1], f"{key}.id", f"duplicate id (first on line {seen[ident]})")
        seen[ident] = m["id"][1].start_mark.line + 1
        kind = ctx.string(m["kind"][1], f"{key}.kind") if "kind" in m else ""
        if kind and kind not in _kinds():
            raise ctx.err(
                m["kind"][1], f"{key}.kind", f"unknown kind {kind!r} (known: {', '.join(_kinds())})"
            )
        raw = ctx.string(m["title"][1], f"{key}.title")
        try:
            title = re.compile(raw)
        except re.error as e:
            raise ctx.err(m["title"][1], f"{key}.title", f"bad regular expression: {e}") from None

        def globs(name: str) -> tuple[str, ...]:
            return ctx.strings(m[name][1], f"{key}.{name}") if name in m else ()  # noqa: B023

        issues.append(
            KnownIssue(
                id=ident,
                title=title,
                kind=kind,
                kernels=globs("kernels"),
                cells=globs("cells"),
                tests=globs("tests"),
                url=ctx.string(m["url"][1], f"{key}.url") if "url" in m else "",
                comment=ctx.string(m["comment"][1], f"{key}.comment") if "comment" in m else "",
                origin=f"{path}:{node.start_mark.line + 1}",
            )
        )
    return KnownIssues(tuple(issues), path)


def default_known_issues(matrix_path: str | Path | None) -> Path | None:
    """known-issues.yaml beside the matrix file, if there is one."""
    if not matrix_path:
        return None
    p = Path(matrix_path).parent / "known-issues.yaml"
    return p if p.is_file() else None
