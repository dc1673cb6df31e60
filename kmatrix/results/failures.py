"""Why a test failed, in one line: what every report and the attribution show of a failure."""

from __future__ import annotations

from kmatrix.results.schema import TestResult


def summarize_failure(message: str, longrepr: str) -> str:
    """One line saying why a test failed: pytest's first "E   " line when the long report has
    one (the assertion, even when the plugin rewrote the report as plain text), else the
    message, else the report's first line."""
    for ln in longrepr.splitlines():
        if ln.startswith("E   ") and ln[1:].strip():
            return ln[1:].strip()[:500]
    for text in (message, longrepr):
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        if first:
            return first[:500]
    return ""


def failure_message(rec: TestResult) -> str:
    """summarize_failure of a result."""
    return summarize_failure(rec.message, rec.longrepr)
