"""Every report of a run, written from its results.json: JUnit per cell, index.html,
summary.md, kcidb.json, and compare.json when a baseline is given.

Each writer runs on its own: one that fails is reported and the others still write, and
results.json itself is never touched here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kmatrix import crash
from kmatrix.errors import KmatrixError
from kmatrix.reports import html as report_html
from kmatrix.reports import junit as junit_cells
from kmatrix.reports import kcidb, reproduce
from kmatrix.reports import markdown as report_md
from kmatrix.reports.options import ReportOptions, add_report_arguments
from kmatrix.results.compare import Comparison, compare_runs
from kmatrix.results.known_issues import KnownIssues, default_known_issues, load_known_issues
from kmatrix.results.runs import Run, check_artifacts, load_run, load_runs, write_json_atomic

COMPARE_FILENAME = "compare.json"
__all__ = ["COMPARE_FILENAME", "ReportOptions", "ReportResult", "add_report_arguments"]


@dataclass
class ReportResult:
    written: dict[str, Path] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    comparison: Comparison | None = None


def _atomic_json(path: Path, data: object) -> Path:
    write_json_atomic(path, data)
    return path


def write_reports(
    reports: Path | Run, options: ReportOptions | None = None, quiet: bool = False
) -> ReportResult:
    """Writes every report beside results.json. Never raises for a writer's failure: the
    error is recorded in the result (and printed unless quiet)."""
    options = options or ReportOptions()
    run = reports if isinstance(reports, Run) else load_run(Path(reports))
    # Before anything is written: an artefact path that leaves the run directory would
    # have a report embed or link a file from elsewhere on the host.
    check_artifacts(run)
    out = run.dir
    result = ReportResult()

    def attempt(name: str, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except Exception as e:  # one broken writer must not lose the others
            # A bug (or input no check caught) is one line too; the traceback goes to a file.
            detail = (
                str(e)
                if isinstance(e, KmatrixError)
                else crash.describe(e, crash.write_details(e, out if out.is_dir() else None))
            )
            result.errors[name] = f"{type(e).__name__}: {e}"
            if not quiet:
                print(f"kmatrix: {name} failed: {detail.strip()}", file=sys.stderr)
            return None

    known_path = options.known_issues or default_known_issues(run.meta.matrix)
    known = attempt("known-issues", lambda: load_known_issues(known_path))
    known = known if isinstance(known, KnownIssues) else KnownIssues()
    baseline: Run | None = None
    comparison: Comparison | None = None
    if options.baseline:
        base_runs = attempt("baseline", lambda: load_runs(options.baseline))
        if isinstance(base_runs, list) and base_runs:
            baseline = base_runs[-1]
            c = attempt("compare", lambda: compare_runs(base_runs, [run], known))
            comparison = c if isinstance(c, Comparison) else None
    result.comparison = comparison

    # Reproducers first: the HTML report links the ones written.
    attempt("reproduce", lambda: reproduce.write(run))
    writers: list[tuple[str, Callable[[], Path]]] = [
        ("junit", lambda: junit_cells.write(run, out, known)),
        ("html", lambda: report_html.write(run, out, known, comparison, baseline)),
        ("markdown", lambda: report_md.write(run, out, known, comparison)),
        (
            "kcidb",
            lambda: kcidb.write(
                run,
                out,
                options.kcidb_origin,
                known,
                options.artifacts_url,
                validate_schema=options.validate_kcidb,
            ),
        ),
    ]
    if comparison is not None:
        cmp = comparison
        writers.append(("compare", lambda: _atomic_json(out / COMPARE_FILENAME, cmp.to_dict())))
    for name, fn in writers:
        path = attempt(name, fn)
        if isinstance(path, Path):
            result.written[name] = path
    return result
