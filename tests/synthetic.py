"""Synthetic results.json documents, built from the typed schema, for the report tests."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from kmatrix.results.runs import write_run
from kmatrix.results.schema import (
    BootRecord,
    CellResult,
    FindingRecord,
    Outcome,
    RunDocument,
    RunInfo,
    TestResult,
    cell_status,
)

TESTS = ("test_userspace_reached", "test_online_cpus", "test_kernel_log_clean")
CELLS = (
    ("deb-6.1-cloud", "Nehalem", "virtio"),
    ("deb-6.1-cloud", "Haswell", "virtio"),
    ("deb-6.12-cloud", "Haswell", "gpu-virtio"),
)
WARN_EXCERPT = (
    "[    1.000000] ------------[ cut here ]------------\n"
    "[    1.000001] WARNING: CPU: 0 PID: 1 at drivers/gpu/drm/drm_atomic.c:100 "
    "drm_atomic_commit+0x1a/0x40\n"
    "[    1.000002] Call Trace:\n[    1.000003]  drm_atomic_commit+0x1a/0x40\n"
    "[    1.000004] ---[ end trace 0000000000000000 ]---"
)


def cell_id(kernel: str, cpu: str, device: str) -> str:
    return f"{kernel}/{cpu}/{device}"


def nodeid(test: str, cid: str) -> str:
    return f"testcases/test_boot.py::{test}[{cid}]"


def make_run(
    root: Path,
    outcomes: dict[tuple[str, str], str] | None = None,
    boot: dict[str, float] | None = None,
    metrics: dict[tuple[str, str], dict[str, float]] | None = None,
    findings: dict[str, list[FindingRecord]] | None = None,
    cells: tuple[tuple[str, str, str], ...] = CELLS,
    tests: tuple[str, ...] = TESTS,
    console: dict[str, str] | None = None,
    interrupted: bool = False,
    messages: dict[tuple[str, str], str] | None = None,
    test_findings: dict[tuple[str, str], list[tuple[str, str]]] | None = None,
    **run_facts: Any,
) -> Path:
    """Writes root/results.json (+ console logs); outcomes default to passed.
    Keys of outcomes/metrics/messages/test_findings are (cell id, test name); test_findings
    are the (kind, title) of the kernel reports a test failed on; run_facts go into the "run"
    section (e.g. shard, planned_cells)."""
    outcomes = outcomes or {}
    root.mkdir(parents=True, exist_ok=True)
    cell_entries = []
    results = []
    for k, cpu, dev in cells:
        cid = cell_id(k, cpu, dev)
        slug = cid.replace("/", "__")
        d = root / "cells" / slug
        d.mkdir(parents=True, exist_ok=True)
        (d / "console.log").write_text((console or {}).get(cid, f"console of {cid}\n"))
        outs = []
        for t in tests:
            name = outcomes.get((cid, t), "passed")
            if name == "absent":
                continue
            o = Outcome.named(name)
            outs.append(o)
            msg = (messages or {}).get((cid, t), "")
            props = {"kmatrix.cell": cid}
            if (cid, t) in (test_findings or {}):
                found = (test_findings or {})[(cid, t)]
                props["kmatrix.findings"] = json.dumps([{"kind": k, "title": x} for k, x in found])
            if o.failing and not msg:
                msg = f"AssertionError: {t} broke in {cid}"
            results.append(
                TestResult(
                    cell=cid,
                    test=f"testcases/test_boot.py::{t}",
                    nodeid=nodeid(t, cid),
                    outcome=o,
                    duration=0.25,
                    message=msg,
                    longrepr=f"E   {msg}\n\ntestcases/test_boot.py:1: AssertionError"
                    if msg
                    else "",
                    metrics=(metrics or {}).get((cid, t), {}),
                    properties=props,
                )
            )
        cell_entries.append(
            CellResult(
                id=cid,
                kernel=k,
                kernel_release="6.1.0-57-cloud-amd64" if "6.1-" in k else "6.12.117+deb12",
                cpu=cpu,
                cpu_model=f"{cpu}-v1",
                device=dev,
                smp=2,
                memory_mib=512,
                boot=BootRecord(
                    accel="tcg",
                    accel_reason="requested",
                    boot_seconds=(boot or {}).get(cid, 3.0),
                    release="x",
                ),
                findings=(findings or {}).get(cid, []),
                artifacts={"console": f"cells/{slug}/console.log"},
                status=cell_status(outs),
                counts={o: outs.count(o) for o in sorted(set(outs))},
            )
        )
    info = RunInfo(
        id=f"run-{root.name}",
        started="2026-11-29T06:00:00+00:00",
        finished="2026-11-29T06:01:00+00:00",
        duration=60.0,
        interrupted=interrupted,
        exitstatus=2 if interrupted else 0,
        matrix=str(root / "matrix.yaml"),
        matrix_name="synthetic",
        kmatrix="0.1.0",
        qemu="7.2.22",
        accelerators=["tcg"],
        host="testhost",
    )
    doc = RunDocument(run=replace(info, **run_facts), cells=cell_entries, results=results)
    write_run(root / "results.json", doc)
    return root


def warn_finding() -> FindingRecord:
    return FindingRecord(
        kind="warning",
        title="WARNING in drm_atomic_commit",
        line=12,
        timestamp=1.0,
        excerpt=WARN_EXCERPT,
        source="dmesg.log",
    )


def write_results(path: Path, rows: list[tuple[str, str, float]]) -> Path:
    """A results.json with one passed test per (cell, node id, duration), for durations."""
    results = [TestResult(cell=c, nodeid=n, outcome=Outcome.PASSED, duration=d) for c, n, d in rows]
    write_run(path, RunDocument(run=RunInfo(), cells=[], results=results))
    return path
