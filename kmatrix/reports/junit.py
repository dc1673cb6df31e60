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
from typing import Any

from junit_xml import TestCase, TestSuite, to_xml_report_string

from kmatrix.results.known_issues import KnownIssues
from kmatrix.results.runs import Run, failure_message, read_artifact

FILENAME = "junit-cells.xml"
_DISABLED = re.compile(r'(<testsuites?) disabled="\d+"')
_SYSTEM_OUT_LIMIT = 20000


def _classname(nodeid: str) -> str:
    """pytest's xunit classname: the module path dotted, plus any class."""
    parts = nodeid.split("[", 1)[0].split("::")
    module = parts[0].removesuffix(".py").replace("/", ".")
    return ".".join([module, *parts[1:-1]])


def _case(rec: dict[str, Any], cell: dict[str, Any], known: KnownIssues) -> TestCase:
    nodeid = str(rec.get("nodeid") or "")
    metrics = rec.get("metrics") or {}
    out = "\n".join(f"metric {k} = {v}" for k, v in metrics.items())
    tc = TestCase(
        name=nodeid.split("::")[-1],
        classname=_classname(nodeid),
        elapsed_sec=round(float(rec.get("duration") or 0.0), 3),
        stdout=out or None,
        timestamp=None,
    )
    outcome = rec.get("outcome")
    message = failure_message(rec)
    longrepr = str(rec.get("longrepr") or "")[-_SYSTEM_OUT_LIMIT:]
    issue = known.for_failure(cell, rec)
    if issue is not None:
        message = f"[known issue {issue.id}] {message}"
    if outcome == "failed":
        tc.add_failure_info(message=message, output=longrepr, failure_type="failure")
    elif outcome == "error":
        tc.add_error_info(message=message, output=longrepr, error_type="error")
    elif outcome in ("skipped", "xfailed"):
        reason = str(rec.get("message") or longrepr or outcome)
        tc.add_skipped_info(message=f"{outcome}: {reason}"[:2000])
    return tc


def cell_properties(cell: dict[str, Any], run: Run) -> dict[str, str]:
    boot = cell.get("boot") or {}
    seconds = boot.get("boot_seconds")
    props = {
        "kmatrix.cell": cell.get("id"),
        "kmatrix.status": cell.get("status"),
        "kmatrix.kernel": cell.get("kernel"),
        "kmatrix.kernel_release": cell.get("kernel_release") or boot.get("release"),
        "kmatrix.cpu": cell.get("cpu"),
        "kmatrix.cpu_model": cell.get("cpu_model"),
        "kmatrix.device_profile": cell.get("device"),
        "kmatrix.smp": cell.get("smp"),
        "kmatrix.memory_mib": cell.get("memory_mib"),
        "kmatrix.accelerator": boot.get("accel"),
        "kmatrix.accelerator_reason": boot.get("accel_reason"),
        "kmatrix.boot_seconds": f"{seconds:.3f}" if isinstance(seconds, int | float) else None,
        "kmatrix.poweroff_clean": boot.get("poweroff_clean"),
        "kmatrix.findings": len(cell.get("findings") or []),
        "kmatrix.qemu_version": run.meta.get("qemu"),
        "kmatrix.version": run.meta.get("kmatrix"),
        "kmatrix.run_id": run.meta.get("id"),
        "kmatrix.run_interrupted": run.meta.get("interrupted"),
    }
    for name, rel in (cell.get("artifacts") or {}).items():
        props[f"kmatrix.artifact.{name}"] = rel
    return {
        k: str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in props.items()
        if v not in (None, "")
    }


def suites(run: Run, known: KnownIssues | None = None) -> list[TestSuite]:
    known = known or KnownIssues()
    out = []
    for cell in run.cells:
        cid = str(cell.get("id"))
        recs = run.results_of(cid)
        findings = cell.get("findings") or []
        stderr = "\n\n".join(
            f"{f.get('kind')}: {f.get('title')}\n{f.get('excerpt', '')}" for f in findings
        )
        out.append(
            TestSuite(
                name=cid,
                test_cases=[_case(r, cell, known) for r in recs],
                hostname=str(run.meta.get("host") or "") or None,
                timestamp=run.meta.get("started"),
                properties=cell_properties(cell, run),
                package=str(cell.get("kernel") or ""),
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
