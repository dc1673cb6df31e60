"""Synthetic results.json documents (schema kmatrix-results/1) for the report tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    findings: dict[str, list[dict[str, Any]]] | None = None,
    cells: tuple[tuple[str, str, str], ...] = CELLS,
    tests: tuple[str, ...] = TESTS,
    console: dict[str, str] | None = None,
    interrupted: bool = False,
    messages: dict[tuple[str, str], str] | None = None,
) -> Path:
    """Writes root/results.json (+ console logs); outcomes default to passed.
    Keys of outcomes/metrics/messages are (cell id, test name)."""
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
            o = outcomes.get((cid, t), "passed")
            if o == "absent":
                continue
            outs.append(o)
            msg = (messages or {}).get((cid, t), "")
            if o in ("failed", "error") and not msg:
                msg = f"AssertionError: {t} broke in {cid}"
            results.append(
                {
                    "cell": cid,
                    "test": f"testcases/test_boot.py::{t}",
                    "nodeid": nodeid(t, cid),
                    "outcome": o,
                    "duration": 0.25,
                    "message": msg,
                    "longrepr": f"E   {msg}\n\ntestcases/test_boot.py:1: AssertionError"
                    if msg
                    else "",
                    "metrics": (metrics or {}).get((cid, t), {}),
                    "properties": {"kmatrix.cell": cid},
                }
            )
        status = "fail" if "failed" in outs else "error" if "error" in outs else "pass"
        cell_entries.append(
            {
                "id": cid,
                "kernel": k,
                "kernel_release": "6.1.0-57-cloud-amd64" if "6.1-" in k else "6.12.117+deb12",
                "cpu": cpu,
                "cpu_model": f"{cpu}-v1",
                "device": dev,
                "smp": 2,
                "memory_mib": 512,
                "boot": {
                    "accel": "tcg",
                    "accel_reason": "requested",
                    "boot_seconds": (boot or {}).get(cid, 3.0),
                    "release": "x",
                },
                "findings": (findings or {}).get(cid, []),
                "artifacts": {"console": f"cells/{slug}/console.log"},
                "status": status,
                "counts": {o: outs.count(o) for o in sorted(set(outs))},
            }
        )
    doc = {
        "schema": "kmatrix-results/1",
        "run": {
            "id": f"run-{root.name}",
            "started": "2026-11-29T06:00:00+00:00",
            "finished": "2026-11-29T06:01:00+00:00",
            "duration": 60.0,
            "interrupted": interrupted,
            "exitstatus": 2 if interrupted else 0,
            "matrix": str(root / "matrix.yaml"),
            "matrix_name": "synthetic",
            "kmatrix": "0.1.0",
            "qemu": "7.2.22",
            "accelerators": ["tcg"],
            "host": "testhost",
        },
        "cells": cell_entries,
        "results": results,
    }
    (root / "results.json").write_text(json.dumps(doc, indent=1))
    return root


def warn_finding() -> dict[str, Any]:
    return {
        "kind": "warning",
        "title": "WARNING in drm_atomic_commit",
        "line": 12,
        "timestamp": 1.0,
        "excerpt": WARN_EXCERPT,
        "source": "dmesg.log",
    }
