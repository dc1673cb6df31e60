"""JUnit XML with one testsuite per cell, regenerated from results.json.

pytest's own --junitxml puts every test in one suite; CI test reporters (GitLab, Jenkins,
GitHub actions that read JUnit) group by suite, so here each cell is a suite carrying the
cell's facts as properties (kernel release, CPU model, device profile, accelerator, boot
time, QEMU version). Test case names and classnames are pytest's own, so both files
describe the same tests the same way. Because the file is built from results.json, which is
rewritten after each cell, an interrupted run still yields a whole, well-formed document.
"""

from __future__ import annotations

import re
from pathlib import Path

from junit_xml import TestCase, TestSuite, to_xml_report_string

from kmatrix.reports.attribution import RunAttribution
from kmatrix.results.charges import charge_note
from kmatrix.results.known_issues import KnownIssues
from kmatrix.results.runs import Run, failure_message, outcome_note, read_artifact
from kmatrix.results.schema import CellResult, Outcome, TestResult

FILENAME = "junit-cells.xml"
_DISABLED = re.compile(r'(<testsuites?) disabled="\d+"')
_SYSTEM_OUT_LIMIT = 20000


def _classname(nodeid: str) -> str:
    """pytest's xunit classname: the module path dotted, plus any class."""
    parts = nodeid.split("[", 1)[0].split("::")
    module = parts[0].removesuffix(".py").replace("/", ".")
    return ".".join([module, *parts[1:-1]])


def _case(rec: TestResult, cell: CellResult, known: KnownIssues, note: str = "") -> TestCase:
    out = "\n".join(f"metric {k} = {v}" for k, v in rec.metrics.items())
    if note:  # the attribution against the cell's baseline
        out = f"attribution {note}" + (f"\n{out}" if out else "")
    tc = TestCase(
        name=rec.nodeid.split("::")[-1],
        classname=_classname(rec.nodeid),
        elapsed_sec=round(rec.duration, 3),
        stdout=out or None,
        timestamp=None,
    )
    outcome = rec.outcome
    message = failure_message(rec)
    longrepr = rec.longrepr[-_SYSTEM_OUT_LIMIT:]
    issue = known.for_failure(cell, rec)
    if issue is not None:
        message = f"[known issue {issue.id}] {message}"
    if note:
        message = f"{note} {message}"
    if outcome.junit == "failure":
        tc.add_failure_info(message=message, output=longrepr, failure_type="failure")
    elif outcome.junit == "error":
        tc.add_error_info(message=message, output=longrepr, error_type="error")
    elif outcome in (Outcome.KNOWN, Outcome.NOT_APPLICABLE):
        # Neither fails the run: a skip, saying which issue explains it, or why it cannot apply.
        tc.add_skipped_info(message=outcome_note(rec)[:2000])
    elif outcome is Outcome.FLAKY:
        tc.stdout = "\n".join(x for x in (outcome_note(rec), tc.stdout) if x)  # it passed
    elif outcome.junit == "skipped":
        reason = rec.message or longrepr or outcome
        tc.add_skipped_info(message=f"{outcome}: {reason}"[:2000])
    return tc


def cell_properties(cell: CellResult, run: Run) -> dict[str, str]:
    boot = cell.boot
    seconds = boot.boot_seconds
    props: dict[str, object] = {
        "kmatrix.cell": cell.id,
        "kmatrix.status": cell.status,
        "kmatrix.kernel": cell.kernel,
        "kmatrix.kernel_release": cell.kernel_release or boot.release,
        "kmatrix.cpu": cell.cpu,
        "kmatrix.cpu_model": cell.cpu_model,
        "kmatrix.device_profile": cell.device,
        "kmatrix.smp": cell.smp,
        "kmatrix.memory_mib": cell.memory_mib,
        "kmatrix.accelerator": boot.accel,
        "kmatrix.accelerator_reason": boot.accel_reason,
        "kmatrix.boot_seconds": f"{seconds:.3f}" if seconds is not None else None,
        "kmatrix.poweroff_clean": boot.poweroff_clean,
        "kmatrix.sandbox": boot.sandbox or None,
        "kmatrix.findings": len(cell.findings),
        "kmatrix.qemu_version": run.meta.qemu,
        "kmatrix.version": run.meta.kmatrix,
        "kmatrix.run_id": run.meta.id,
        "kmatrix.run_interrupted": run.meta.interrupted,
    }
    for name, rel in cell.artifacts.items():
        props[f"kmatrix.artifact.{name}"] = rel
    return {
        k: str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in props.items()
        if v not in (None, "")
    }


def suites(run: Run, known: KnownIssues | None = None) -> list[TestSuite]:
    known = known or KnownIssues()
    attrib = RunAttribution(run)
    out = []
    for cell in run.cells:
        recs = run.results_of(cell.id)
        stderr = "\n\n".join(
            f"{f.kind}: {f.title}"
            + (f" ({charge_note(f)})" if charge_note(f) else "")
            + f"\n{f.excerpt}"
            for f in cell.findings
        )
        out.append(
            TestSuite(
                name=cell.id,
                test_cases=[
                    _case(r, cell, known, attrib.junit_note(cell.id, r.nodeid)) for r in recs
                ],
                hostname=run.meta.host or None,
                timestamp=run.meta.started or None,
                properties={**cell_properties(cell, run), **attrib.junit_properties(cell.id)},
                package=cell.kernel,
                stdout=read_artifact(run, cell, "console", _SYSTEM_OUT_LIMIT),
                stderr=stderr[:_SYSTEM_OUT_LIMIT] or None,
            )
        )
    return out


def render(run: Run, known: KnownIssues | None = None) -> str:
    text = str(to_xml_report_string(suites(run, known), prettyprint=True, encoding="utf-8"))
    # junit-xml adds disabled="0", which the JUnit schema Jenkins validates against lacks.
    return _DISABLED.sub(r"\1", text)


def write(run: Run, out: Path, known: KnownIssues | None = None) -> Path:
    path = out / FILENAME
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(run, known), encoding="utf-8")
    tmp.replace(path)
    return path
