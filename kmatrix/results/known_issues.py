"""Known issues: kernel-log signatures reported as known, not as new failures.

A known-issues file (YAML) lists signatures, each a regular expression searched in the
normalised titles of kernel-log findings (``WARNING in drm_atomic_helper_commit``), scoped by
globs on the kernel (name or release), the cell id and the test::

    issues:
      - id: drm-commit-warn            # unique; shown in every report
        title: '^WARNING in drm_'      # regex over normalised finding titles
        kernels: [deb-6.12-*]          # optional globs on kernel name or release
        cells: ['*/gpu-virtio']        # optional globs on cell id
        tests: ['*test_kernel_log_clean*']   # optional globs on the test node id
        url: https://bugs.example.org/123    # optional
        comment: fixed upstream by abcdef    # optional

A finding is known when an issue applies to its cell and the regex matches its title. A
failing test is known when an issue applies to its cell and test, and either the regex
matches the failure text or a finding of the cell that the issue matches is named in the
failure text (test_kernel_log_clean lists the titles it found).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmatrix.config.yamlnode import NodeReader, compose_file
from kmatrix.results.runs import failure_text
from kmatrix.results.schema import CellResult, FindingRecord, TestResult

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$")
# The keys of a known-issues file and of each issue (documented in docs/matrix.md).
FILE_KEYS = ("issues",)
ISSUE_KEYS = ("id", "title", "kernels", "cells", "tests", "url", "comment")
ISSUE_REQUIRED = ("id", "title")


@dataclass(frozen=True)
class KnownIssue:
    id: str
    title: re.Pattern[str]
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
        return not self.tests or any(fnmatch.fnmatchcase(rec.nodeid, g) for g in self.tests)

    def matches_title(self, title: str) -> bool:
        return self.title.search(title) is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
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

    def for_finding(self, cell: CellResult, finding: FindingRecord) -> KnownIssue | None:
        return next(
            (i for i in self.issues if i.applies(cell) and i.matches_title(finding.title)), None
        )

    def for_failure(self, cell: CellResult, rec: TestResult) -> KnownIssue | None:
        if not rec.outcome.failing:
            return None
        text = failure_text(rec)
        for issue in self.issues:
            if not (issue.applies(cell) and issue.applies_to_test(rec)):
                continue
            if issue.title.search(text):
                return issue
            for f in cell.findings:
                title = f.title
                if title and issue.matches_title(title) and title in text:
                    return issue
        return None


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
