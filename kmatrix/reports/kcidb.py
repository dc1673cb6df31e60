"""A run as KCIDB JSON (schema v5.3), ready for `kcidb-submit` to KernelCI.

Mapping: each kernel is a checkout and a build (a prebuilt or packaged kernel has no git
commit here, so both carry the kernel name and release; their ids are stable across runs so
KernelCI merges them); each (cell, test) is a test of that build, its environment the CPU
model, device profile and accelerator; each cell also gets a ``boot`` test carrying the boot
time, and every recorded metric a ``DONE`` test with its number. Known issues that matched
become KCIDB issues, with one incident per test they explain.

Validation uses the kcidb-io package's schema when it is installed (the ``dev`` extra).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from kmatrix.errors import InputError
from kmatrix.results.known_issues import KnownIssues
from kmatrix.results.runs import Run, failure_text, metric_values
from kmatrix.results.schema import CellResult, Outcome

FILENAME = "kcidb.json"
VERSION = {"major": 5, "minor": 3}
ORIGIN_RE = re.compile(r"^[a-z0-9_]+$")
EXCERPT_MAX = 16384  # the schema's maxLength for log_excerpt


def _path_part(s: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]+", "_", s).strip("_") or "x"


def kcidb_path(nodeid: str, cell: str) -> str:
    """A KCIDB dot-path for a test: kmatrix.<module>.<function>[.<other parameters>]."""
    file, _, rest = nodeid.partition("::")
    module = Path(file).stem.removeprefix("test_")
    name, _, params = rest.partition("[")
    parts = [_path_part(module), *(_path_part(p.removeprefix("test_")) for p in name.split("::"))]
    params = params.removesuffix("]").replace(cell, "").strip("-")
    if params:
        parts.append(_path_part(params))
    return "kmatrix." + ".".join(parts)


def _digest(*parts: object) -> str:
    return hashlib.sha1("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def _url(base: str, rel: str) -> str:
    return f"{base.rstrip('/')}/{rel}"


def export(
    run: Run,
    origin: str = "kmatrix",
    known: KnownIssues | None = None,
    artifacts_url: str | None = None,
) -> dict[str, Any]:
    """The KCIDB document of a run. artifacts_url: where the reports directory will be
    published (log URLs are only given when it is known)."""
    if not ORIGIN_RE.match(origin):
        raise InputError(f"KCIDB origin {origin!r}: must match {ORIGIN_RE.pattern}")
    known = known or KnownIssues()
    meta = run.meta
    run_id = meta.id or _digest(run.path)
    started = meta.started
    checkouts: dict[str, dict[str, Any]] = {}
    builds: dict[str, dict[str, Any]] = {}
    build_of: dict[str, str] = {}
    for c in run.cells:
        kernel = c.kernel
        release = c.kernel_release or c.boot.release
        key = f"{kernel}:{release}"
        if key not in checkouts:
            checkouts[key] = {
                "id": f"{origin}:checkout:{key}",
                "origin": origin,
                "tree_name": kernel,
                "valid": True,
                "misc": {"kernel": kernel, "kernel_release": release},
            }
            builds[key] = {
                "id": f"{origin}:build:{key}",
                "checkout_id": checkouts[key]["id"],
                "origin": origin,
                "architecture": "x86_64",
                "config_name": kernel,
                "status": "PASS" if release else "MISS",
                "misc": {
                    "kernel_release": release,
                    "kernel_image": c.boot.kernel_image,
                },
            }
        build_of[c.id] = builds[key]["id"]

    tests: list[dict[str, Any]] = []
    issues: dict[str, dict[str, Any]] = {}
    incidents: list[dict[str, Any]] = []
    metrics = metric_values(run)

    def environment(c: CellResult) -> dict[str, Any]:
        accel = c.boot.accel or "?"
        return {
            "comment": f"QEMU -cpu {c.cpu_model}, device profile {c.device}, {accel}",
            "misc": {
                "cell": c.id,
                "cpu": c.cpu,
                "cpu_model": c.cpu_model,
                "device_profile": c.device,
                "smp": c.smp,
                "memory_mib": c.memory_mib,
                "accelerator": c.boot.accel,
                "qemu": meta.qemu,
                "host": meta.host,
            },
        }

    def base_test(c: CellResult, ident: str, path: str) -> dict[str, Any]:
        t: dict[str, Any] = {
            "id": f"{origin}:{run_id}:{_digest(c.id, ident)}",
            "build_id": build_of[c.id],
            "origin": origin,
            "path": path,
            "environment": environment(c),
        }
        if started:
            t["start_time"] = started
        return t

    for c in run.cells:
        cid = c.id
        seconds = c.boot.boot_seconds
        bt = base_test(c, "boot", "boot")
        bt["status"] = "PASS" if seconds is not None else "FAIL"
        if seconds is not None:
            bt["number"] = {"value": float(seconds), "unit": "s", "prefix": "metric"}
        findings = c.findings
        if findings:
            bt["log_excerpt"] = "\n\n".join(f.excerpt for f in findings)[:EXCERPT_MAX]
        bt["misc"] = {"findings": [f"{f.kind}: {f.title}" for f in findings]}
        if artifacts_url:
            arts = dict(c.artifacts)
            if "console" in arts:
                bt["log_url"] = _url(artifacts_url, arts.pop("console"))
            files = [
                {"name": Path(rel).name, "url": _url(artifacts_url, rel)} for rel in arts.values()
            ]
            if files:
                bt["output_files"] = files
        tests.append(bt)
        for r in run.results_of(cid):
            nodeid = r.nodeid
            path = kcidb_path(nodeid, cid)
            t = base_test(c, nodeid, path)
            t["status"] = r.outcome.kcidb
            t["duration"] = round(r.duration, 3)
            if r.outcome is not Outcome.PASSED:
                excerpt = failure_text(r).strip()
                if excerpt:
                    t["log_excerpt"] = excerpt[-EXCERPT_MAX:]
            t["misc"] = {"nodeid": nodeid, "outcome": str(r.outcome), "cell": cid}
            tests.append(t)
            issue = known.for_failure(c, r) or known.recorded(r)
            if issue is not None:
                kid = f"{origin}:{_path_part(issue.id)}"
                entry: dict[str, Any] = {
                    "id": kid,
                    "version": 1,
                    "origin": origin,
                    "comment": issue.comment or f"known issue {issue.id}",
                    "culprit": {"code": True},
                    "misc": {"title_regex": issue.title.pattern},
                }
                if issue.url.startswith(("http://", "https://")):
                    entry["report_url"] = issue.url
                issues[kid] = entry
                incidents.append(
                    {
                        "id": f"{origin}:{run_id}:{_digest(t['id'], kid)}",
                        "origin": origin,
                        "issue_id": kid,
                        "issue_version": 1,
                        "test_id": t["id"],
                        "present": True,
                    }
                )
            for (mc, mn, name), value in metrics.items():
                if mc == cid and mn == nodeid:
                    mt = base_test(c, f"{nodeid}:{name}", f"{path}.{_path_part(name)}")
                    mt["status"] = "DONE"
                    mt["number"] = {"value": value}
                    tests.append(mt)
    doc: dict[str, Any] = {
        "version": dict(VERSION),
        "checkouts": list(checkouts.values()),
        "builds": list(builds.values()),
        "tests": tests,
    }
    if issues:
        doc["issues"] = list(issues.values())
        doc["incidents"] = incidents
    return doc


def validate(doc: dict[str, Any]) -> bool:
    """Validates against kcidb-io's schema; False when kcidb-io is not installed.
    Raises jsonschema's ValidationError on invalid data."""
    try:
        import kcidb_io
    except ImportError:
        return False
    kcidb_io.schema.V5_3.validate(doc)
    return True


def write(
    run: Run,
    out: Path,
    origin: str = "kmatrix",
    known: KnownIssues | None = None,
    artifacts_url: str | None = None,
    validate_schema: bool = True,
) -> Path:
    doc = export(run, origin, known, artifacts_url)
    if validate_schema:
        validate(doc)
    path = out / FILENAME
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
