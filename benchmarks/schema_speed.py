#!/usr/bin/env python3
"""What the typed results.json costs: reading (json.loads, then RunDocument.from_json, which
checks every field) and writing (to_json, then the JSON text) a synthetic run.

    .venv/bin/python benchmarks/schema_speed.py                # 1,000 cells x 42 tests
    .venv/bin/python benchmarks/schema_speed.py --cells 100 --tests 20 --reps 5

The run is built from the dataclasses with the sizes a real one has (a full boot record per
cell, metrics and a failure text on some tests); the report gives the median of each step and
from_json relative to json.loads, with the load average (other work on the machine slows
every step alike).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

from kmatrix.results.schema import (
    BootRecord,
    CellResult,
    Outcome,
    RunDocument,
    RunInfo,
    TestResult,
    cell_status,
    dumps,
)


def synthetic(cells: int, tests: int) -> RunDocument:
    cell_results, results = [], []
    for c in range(cells):
        cid = f"deb-6.{c % 13}-cloud/Cpu{c % 7}/device{c // 91}"
        outcomes = []
        for t in range(tests):
            o = Outcome.FAILED if (c + t) % 17 == 0 else Outcome.PASSED
            outcomes.append(o)
            results.append(
                TestResult(
                    cell=cid,
                    test=f"testcases/test_suite{t % 5}.py::test_{t}",
                    nodeid=f"testcases/test_suite{t % 5}.py::test_{t}[{cid}]",
                    outcome=o,
                    duration=1.0 + t / 10,
                    message="AssertionError: 1 != 2" if o.failing else "",
                    longrepr=("E   AssertionError: 1 != 2\n" * 20) if o.failing else "",
                    metrics={"seconds": 0.5 + t} if t % 4 == 0 else {},
                    properties={"kmatrix.cell": cid, "kmatrix.accelerator": "tcg"},
                )
            )
        cell_results.append(
            CellResult(
                id=cid,
                kernel=cid.split("/")[0],
                kernel_release="6.1.0-57-cloud-amd64",
                cpu=f"Cpu{c % 7}",
                cpu_model="Haswell",
                device=f"device{c // 91}",
                smp=2,
                memory_mib=1024,
                boot=BootRecord(
                    accel="tcg",
                    accel_reason="requested",
                    channel="virtio",
                    boot_seconds=2.5,
                    launches=1,
                    poweroff_clean=True,
                    shutdown_steps=["poweroff"],
                    release="6.1.0-57-cloud-amd64",
                    kernel_image="/cache/k/vmlinuz",
                ),
                artifacts={"console": f"cells/{cid.replace('/', '__')}/console.log"},
                status=cell_status(outcomes),
                counts={str(o): outcomes.count(o) for o in set(outcomes)},
            )
        )
    return RunDocument(run=RunInfo(id="bench"), cells=cell_results, results=results)


def median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--tests", type=int, default=42)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    doc = synthetic(args.cells, args.tests)
    text = dumps(doc)
    data = json.loads(text)
    load = os.getloadavg()[0]
    steps = {
        "json.loads": median_ms(lambda: json.loads(text), args.reps),
        "from_json": median_ms(lambda: RunDocument.from_json(data, "bench"), args.reps),
        "to_json": median_ms(doc.to_json, args.reps),
        "dumps (to_json + JSON text)": median_ms(lambda: dumps(doc), args.reps),
    }
    print(
        f"{args.cells} cells x {args.tests} tests = {len(doc.results)} results, "
        f"{len(text) / 2**20:.1f} MiB; median of {args.reps}; load average {load:.1f}"
    )
    for name, ms in steps.items():
        print(f"  {name:28} {ms:8.0f} ms")
    print(f"  from_json / json.loads     {steps['from_json'] / steps['json.loads']:8.2f}")


if __name__ == "__main__":
    main()
